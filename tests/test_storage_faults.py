"""S3 settings and faults: retries with backoff are configured, credentials are never part of the
options, and an unreachable endpoint gives a clear failure naming it while the manifest keeps
saying exactly what is done (a real rclone server, stopped and restarted by PID)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import S3_KEY, S3_SECRET, make_tiny_bids

from infra.cli import main
from infra.manifest import Manifest
from infra.storage import Store, s3_storage_options

pytestmark = pytest.mark.s3


def test_options_carry_retries_and_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example")
    monkeypatch.setenv("BOLDCLOUD_S3_ENDPOINT_URL", "http://10.0.0.1:9000")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    options = s3_storage_options()
    assert options["config_kwargs"]["retries"] == {"mode": "standard", "max_attempts": 10}
    assert options["config_kwargs"]["s3"] == {"addressing_style": "path"}
    assert options["client_kwargs"]["endpoint_url"] == "http://10.0.0.1:9000"
    assert "AKIDEXAMPLE" not in repr(options) and "wJalr" not in repr(options)
    monkeypatch.setenv("BOLDCLOUD_S3_RETRY_MODE", "adaptive")
    monkeypatch.setenv("BOLDCLOUD_S3_MAX_ATTEMPTS", "4")
    monkeypatch.setenv("BOLDCLOUD_S3_ADDRESSING_STYLE", "virtual")
    options = s3_storage_options()
    assert options["config_kwargs"]["retries"] == {"mode": "adaptive", "max_attempts": 4}
    assert options["config_kwargs"]["s3"] == {"addressing_style": "virtual"}
    import botocore.config

    botocore.config.Config(**options["config_kwargs"])  # botocore accepts every key


def _rclone(root: Path, port: int) -> subprocess.Popen:
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or "rclone"
    args = ["serve", "s3", str(root), "--addr", f"127.0.0.1:{port}"]
    args += ["--auth-key", f"{S3_KEY},{S3_SECRET}", "--config", "/dev/null"]
    proc = subprocess.Popen([rclone, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("rclone serve s3 did not start")


def test_unreachable_endpoint_fails_clearly_and_the_manifest_stays_true(
    s3_server, tmp_path, monkeypatch, capsys
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("BOLDCLOUD_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("BOLDCLOUD_S3_MAX_ATTEMPTS", "2")
    served = tmp_path / "served"
    (served / "faults").mkdir(parents=True)
    bids = make_tiny_bids(tmp_path / "bids", subjects=("01", "02"), runs=(1, 2))
    command = ["ingest", str(bids), "--store", "s3://faults/store", "--cluster", "inprocess"]
    server = _rclone(served, port)
    try:
        assert main([*command, "--subject", "01"]) == 0
    finally:
        server.terminate()
        server.wait(timeout=10)
    capsys.readouterr()
    started = time.time()
    assert main(command) == 3
    said = capsys.readouterr().out
    assert time.time() - started < 60
    assert f"cannot reach S3 endpoint {endpoint}" in said and "after 2 attempts" in said
    assert "Traceback" not in said and S3_SECRET not in said
    server = _rclone(served, port)
    try:
        records = Manifest(Store("s3://faults/store")).records("ingest")
        assert sorted(r.unit for r in records) == [
            "sub-01_ses-pre_task-demo_run-1",
            "sub-01_ses-pre_task-demo_run-2",
        ]
        assert all(r.state == "done" and r.attempts == 1 for r in records)
        assert all((served / "faults" / "store" / r.outputs["zarr"]).is_dir() for r in records)
        capsys.readouterr()
        assert main(command) == 0
        after = {r.unit: r for r in Manifest(Store("s3://faults/store")).records("ingest")}
        assert len(after) == 4
        assert all(after[r.unit].finished == r.finished for r in records), "redone"
    finally:
        server.terminate()
        server.wait(timeout=10)
