"""The cluster adapter interface: a profile in, a connected Dask client (or executor) out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from infra.clusters.profiles import ProfileError, packaged_profile

if TYPE_CHECKING:
    from distributed import Client

    from infra.executors import Executor

COMMON_KEYS = frozenset({"backend", "profile", "workers", "driver"})  # driver: infra.launchers


class ClusterAdapter:
    """One backend: turns a resolved profile into a running Dask cluster and a client.

    Subclasses set ``backend`` and implement :meth:`start`; most also implement a pure
    :meth:`cluster_kwargs` (profile -> constructor arguments) so the translation is testable
    without the backend.

    Parameters
    ----------
    options : mapping
        A resolved profile (see :func:`infra.clusters.profiles.resolve_profile`). ``workers``
        (an explicit worker count) is mapped onto the backend's own size keys.
    """

    backend: ClassVar[str]
    #: whether closing the executor also shuts the cluster down
    owns_cluster: ClassVar[bool] = True
    #: whether keys beyond the packaged profile's are passed through (dask-jobqueue keywords)
    open_keys: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)
        self.profile = self.options.get("profile", self.backend)
        self._check_keys()

    def _check_keys(self) -> None:
        if self.open_keys:
            return
        known = set(packaged_profile(self.backend)) | COMMON_KEYS
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ProfileError(
                f"cluster profile {self.profile!r} ({self.backend}): unknown key(s) "
                f"{', '.join(unknown)}; known keys: {', '.join(sorted(known - COMMON_KEYS))}."
            )

    def option(self, key: str, default: Any = None) -> Any:
        """A profile value, ``default`` when absent or null."""
        value = self.options.get(key)
        return default if value is None else value

    def start(self) -> Client:
        """Start (or connect to) the cluster; return a connected client."""
        raise NotImplementedError

    def executor(self, retries: int = 1) -> Executor:
        """A :class:`~infra.executors.DaskExecutor` on a freshly started cluster."""
        from infra.executors import DaskExecutor

        return DaskExecutor(self.start(), retries=retries, owns_cluster=self.owns_cluster)
