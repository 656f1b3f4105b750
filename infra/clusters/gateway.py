"""Dask Gateway: the gateway server starts the scheduler and workers; we ask it for a cluster.

Authentication: ``auth: basic`` sends a user name and a password read from the environment
variable named by ``password_env`` (never from the profile, never logged); ``kerberos`` and
``jupyterhub`` use dask-gateway's own authenticators; null leaves the choice to dask's gateway
config. Workers get their S3 credentials from the gateway side (its environment or roles).
"""

from __future__ import annotations

import getpass
import os
from typing import TYPE_CHECKING, Any

from infra.clusters.base import ClusterAdapter
from infra.clusters.profiles import ProfileError

if TYPE_CHECKING:
    from distributed import Client


class GatewayAdapter(ClusterAdapter):
    """``gateway``: a cluster from a Dask Gateway server, adaptive between min and max workers."""

    backend = "gateway"

    def auth(self) -> Any:
        """The dask-gateway auth object the profile asks for (None: dask's gateway config)."""
        kind = self.options.get("auth")
        if kind is None:
            return None
        from dask_gateway import auth

        if kind == "basic":
            username = (
                self.options.get("username")
                or os.environ.get("BOLDCLOUD_GATEWAY_USER")
                or getpass.getuser()
            )
            variable = self.option("password_env", "BOLDCLOUD_GATEWAY_PASSWORD")
            password = os.environ.get(variable)
            if password is None:
                raise ProfileError(
                    f"cluster profile {self.profile!r}: basic auth needs the password in the "
                    f"environment variable {variable} (export it; it is never read from a file)."
                )
            return auth.BasicAuth(username, password)
        try:
            return auth.get_auth(kind)
        except Exception as err:
            raise ProfileError(f"cluster profile {self.profile!r}: auth {kind!r}: {err}") from err

    def gateway_kwargs(self) -> dict[str, Any]:
        """Arguments of ``dask_gateway.Gateway`` (the auth object is added by :meth:`start`)."""
        keys = ("address", "proxy_address", "public_address")
        return {k: self.options[k] for k in keys if self.options.get(k) is not None}

    def worker_range(self) -> tuple[int, int]:
        """(min_workers, max_workers); an explicit ``workers`` sets the maximum."""
        low = int(self.option("min_workers", 0))
        high = int(self.option("max_workers", 1))
        if self.options.get("workers") not in (None, "auto"):
            high = int(self.options["workers"])
        return min(low, high), high

    def start(self) -> Client:
        from dask_gateway import Gateway

        gateway = Gateway(auth=self.auth(), **self.gateway_kwargs())
        cluster = gateway.new_cluster(**(self.options.get("cluster_options") or {}))
        try:
            low, high = self.worker_range()
            cluster.adapt(minimum=low, maximum=high)
            return cluster.get_client()
        except BaseException:
            cluster.shutdown()
            raise
