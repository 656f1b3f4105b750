"""Where data lives: one URL (local path or ``s3://bucket/prefix``) behind an fsspec filesystem.

Every write of a small object (JSON record, TSV) is atomic: locally a temporary file renamed into
place, on S3 a single PUT (S3 has no partial objects). Credentials come from the usual AWS chain;
a custom endpoint (an S3-compatible server) from ``BOLDCLOUD_S3_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

import fsspec


def is_remote(url: str) -> bool:
    """True for ``scheme://`` URLs other than ``file://``."""
    return "://" in url and not url.startswith("file://")


def s3_storage_options() -> dict[str, Any]:
    """fsspec options for S3 from the environment (endpoint, region, path-style addressing)."""
    endpoint = os.environ.get("BOLDCLOUD_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
        options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        client_kwargs["region_name"] = region or "us-east-1"
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


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

    def exists(self, key: str) -> bool:
        """Whether an object or folder exists at ``key``."""
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str) -> bytes:
        """The bytes at ``key``."""
        return self.fs.cat_file(self.path(key))

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

    def list(self, prefix: str, suffix: str = "") -> list[str]:
        """Keys (relative to the root) of all files under ``prefix`` ending with ``suffix``."""
        base = self.path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        start = len(self.root) + 1
        return sorted(p[start:] for p in found if p.endswith(suffix))

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
