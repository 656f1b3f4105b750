"""Where data lives: one URL (local path or ``s3://bucket/prefix``) behind an fsspec filesystem.

Every write of a small object (JSON record, TSV) is atomic: locally a temporary file renamed into
place, on S3 a single PUT (S3 has no partial objects). Credentials come only from the standard AWS
chain (environment, profile, instance/IRSA role): boldcloud never reads, copies or writes them.
Settings (environment): ``BOLDCLOUD_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL`` (an S3-compatible
server), ``AWS_REGION``, ``BOLDCLOUD_S3_ADDRESSING_STYLE`` (``path``, the default with a custom
endpoint, ``virtual`` or ``auto``). Transient errors (throttling, 5xx, timeouts, refused
connections) are retried by botocore with exponential backoff: ``BOLDCLOUD_S3_RETRY_MODE``
(``standard``, or ``adaptive`` for client-side rate limiting; default ``AWS_RETRY_MODE``, then
``standard``), ``BOLDCLOUD_S3_MAX_ATTEMPTS`` (default ``AWS_MAX_ATTEMPTS``, then 10),
``BOLDCLOUD_S3_CONNECT_TIMEOUT`` (s, default 10). When they run out, :class:`StorageUnreachable`
names the endpoint. PUTs send their body at once, without ``Expect: 100-continue``
(:func:`send_bodies_without_expect_continue`).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import fsspec

F = TypeVar("F", bound=Callable[..., Any])


def send_bodies_without_expect_continue() -> None:
    """Stop botocore from asking S3 PUTs to wait for ``100 Continue`` before their body.

    botocore adds ``Expect: 100-continue`` to every PUT whose body is file-like, and the client
    then waits for the server's go-ahead with no timeout. A server that answers early without
    reading the body and then drains it (rclone serve s3 on some errors, seen twice in this
    project's tests: a worker blocked for 20 minutes on one chunk write) deadlocks with it. The
    header only saves bandwidth when a PUT is refused; boldcloud's objects are chunks of a few MB,
    so they go at once and a refused PUT is retried like any other error. Applies to botocore
    sessions created after this module is imported (every engine and worker process imports it
    before it opens a store).
    """
    try:
        from botocore import handlers
    except ImportError:  # no S3 support installed
        return
    handlers.BUILTIN_HANDLERS[:] = [
        spec for spec in handlers.BUILTIN_HANDLERS if spec[1] is not handlers.add_expect_header
    ]


send_bodies_without_expect_continue()


class StorageUnreachable(OSError):
    """The store's endpoint could not be reached, even after retries with backoff."""


def is_remote(url: str) -> bool:
    """True for ``scheme://`` URLs other than ``file://``."""
    return "://" in url and not url.startswith("file://")


def s3_endpoint() -> str | None:
    """The custom S3 endpoint from the environment (None: AWS itself)."""
    return os.environ.get("BOLDCLOUD_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


def s3_retry_config() -> dict[str, Any]:
    """botocore ``Config`` settings: retry mode, attempts (backoff) and timeouts."""
    env = os.environ.get
    mode = env("BOLDCLOUD_S3_RETRY_MODE") or env("AWS_RETRY_MODE") or "standard"
    attempts = int(env("BOLDCLOUD_S3_MAX_ATTEMPTS") or env("AWS_MAX_ATTEMPTS") or 10)
    return {
        "retries": {"mode": mode, "max_attempts": attempts},
        "connect_timeout": float(env("BOLDCLOUD_S3_CONNECT_TIMEOUT") or 10),
        "read_timeout": 60,
    }


def s3_storage_options() -> dict[str, Any]:
    """fsspec options for S3 from the environment (endpoint, region, addressing, retries).

    Never contains credentials: botocore finds them itself through the standard AWS chain.
    """
    endpoint = s3_endpoint()
    config: dict[str, Any] = s3_retry_config()
    client_kwargs: dict[str, Any] = {}
    style = os.environ.get("BOLDCLOUD_S3_ADDRESSING_STYLE") or ("path" if endpoint else None)
    if style:
        config["s3"] = {"addressing_style": style}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        client_kwargs["region_name"] = region or "us-east-1"
    options: dict[str, Any] = {"config_kwargs": config}
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def _unreachable(url: str, err: BaseException) -> StorageUnreachable:
    endpoint = s3_endpoint() or "the AWS S3 endpoint"
    attempts = s3_retry_config()["retries"]["max_attempts"]
    return StorageUnreachable(
        f"cannot reach S3 endpoint {endpoint} for {url} after {attempts} attempts with "
        f"backoff ({type(err).__name__}: {err}). Check the endpoint and network, then run the "
        "same command again: finished tasks are recorded and will not be redone."
    )


def _connection_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    return (BotoConnectionError, HTTPClientError)


def _reports_unreachable(method: F) -> F:
    """Turn a connection failure on an S3 store into :class:`StorageUnreachable`."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        if not self.url.startswith("s3://"):
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except _connection_errors() as err:
            raise _unreachable(self.url, err) from err

    return wrapper  # type: ignore[return-value]


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it (no scheme)."""
    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_storage_options())
        return fs, url[len("s3://") :].rstrip("/")
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path.rstrip("/")
    local = url[len("file://") :] if url.startswith("file://") else url
    return fsspec.filesystem("file"), str(Path(local).expanduser().resolve())


class Store:
    """A study's store: every output and the manifest live under one root URL.

    Parameters
    ----------
    url : str
        Local path or ``s3://bucket/prefix``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = filesystem(url)
        self.remote = is_remote(url)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, key: str) -> str:
        """Filesystem path (no scheme) of ``key`` under the root."""
        return posixpath.join(self.root, key) if key else self.root

    def full_url(self, key: str) -> str:
        """A URL for ``key`` usable by other tools (``s3://...`` or an absolute local path)."""
        path = self.path(key)
        return f"s3://{path}" if self.url.startswith("s3://") else path

    @_reports_unreachable
    def exists(self, key: str) -> bool:
        """Whether an object or folder exists at ``key``."""
        return self.fs.exists(self.path(key))

    @_reports_unreachable
    def read_bytes(self, key: str) -> bytes:
        """The bytes at ``key``."""
        return self.fs.cat_file(self.path(key))

    @_reports_unreachable
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically (readers see the old or the new object)."""
        path = self.path(key)
        if self.remote:
            self.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_json(self, key: str) -> Any:
        """Parse the JSON object at ``key``."""
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        """Write ``obj`` as JSON at ``key`` atomically."""
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    @_reports_unreachable
    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """Keys (relative to the root) of all files under ``prefix`` ending with ``suffix``."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        start = len(self.root) + 1
        return sorted(p[start:] for p in found if p.endswith(suffix))

    @_reports_unreachable
    def remove(self, key: str) -> None:
        """Delete ``key`` (file or folder) if present."""
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def zarr_store(self, key: str) -> Any:
        """A Zarr v3 store rooted at ``key`` (LocalStore or FsspecStore)."""
        import zarr.storage

        if not self.remote:
            return zarr.storage.LocalStore(self.path(key))
        async_fs = fsspec.filesystem("s3", asynchronous=True, **s3_storage_options())
        return zarr.storage.FsspecStore(async_fs, path=self.path(key))
