"""A real dask-gateway-server on 127.0.0.1 (local backend, one shared password) for the session.

The server runs as a subprocess started and stopped by PID; clusters it starts are processes on
this machine (``UnsafeLocalBackend``: same Unix user). Its scheduler and workers inherit the
S3 settings and AWS credentials from the server's environment (``inherited_environment``), as a
real gateway deployment gets them from its own environment or IAM role: the client never sends
credentials.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INHERITED = [
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "LANG",
    "LC_ALL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "BOLDCLOUD_S3_ENDPOINT_URL",
]


@dataclass
class GatewayServer:
    """Where the gateway listens and the password it accepts."""

    address: str
    proxy_address: str
    password: str
    log: Path
    work_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gateway_config(root: Path, port: int, proxy_port: int, password: str) -> str:
    """A dask-gateway-server config (traitlets Python) for the local backend."""
    python = sys.executable
    return f"""\
c.DaskGateway.address = "127.0.0.1:{port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = {str(root / "clusters")!r}
c.LocalBackend.inherited_environment = {INHERITED!r}
c.ClusterConfig.scheduler_cmd = [{python!r}, "-m", "distributed.cli.dask_scheduler"]
c.ClusterConfig.worker_cmd = [{python!r}, "-m", "distributed.cli.dask_worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "2 G"
c.ClusterConfig.cluster_max_workers = 4
c.ClusterConfig.idle_timeout = 600
"""


def start_gateway(root: Path) -> Iterator[GatewayServer]:
    """Start ``dask-gateway-server`` with a fresh password; yield; stop it by PID."""
    executable = shutil.which("dask-gateway-server", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("dask-gateway-server is not installed (dev extra: pip install -e .[dev])")
    root.mkdir(parents=True, exist_ok=True)
    (root / "clusters").mkdir(exist_ok=True)
    port, proxy_port = _free_port(), _free_port()
    password = f"gw-{uuid.uuid4().hex}"
    config = root / "dask_gateway_config.py"
    config.write_text(gateway_config(root, port, proxy_port, password))
    config.chmod(0o600)
    log = root / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [executable, "-f", str(config)], cwd=root, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", proxy_port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    message = f"dask-gateway-server did not start:\n{log.read_text()}"
                    raise RuntimeError(message) from None
                time.sleep(0.2)
        yield GatewayServer(
            f"http://127.0.0.1:{port}", f"gateway://127.0.0.1:{proxy_port}", password, log, root
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def gateway_server(s3_server, tmp_path_factory) -> Iterator[GatewayServer]:
    """One gateway server for the session; its clusters reach the S3 test server."""
    assert os.environ["BOLDCLOUD_S3_ENDPOINT_URL"] == s3_server["endpoint"]
    yield from start_gateway(tmp_path_factory.mktemp("gateway"))
