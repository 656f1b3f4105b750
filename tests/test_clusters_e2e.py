"""The small simulated study, inputs and outputs in a real S3 server (rclone on 127.0.0.1), run on
each real backend that can run here, gives the same results as on a local Dask cluster:

- a local Dask cluster (the reference),
- dask-jobqueue on a real single-node SLURM (munged + slurmctld + slurmd started by the test),
- a real dask-gateway-server (local backend, password auth).

"Same" means: identical manifests (state, task key, outputs of every task) and every file of the
two stores byte for byte (Zarr chunks, TSV, JSON), except gzip NIfTI and PNG files (their
containers carry timestamps) whose voxel data and headers must be identical. No float
tolerance is needed: every backend runs the same code on single-threaded workers.

The runs cover the subject-level stages (ingest .. fixed_effects). ``normalise`` (template
registration, ~90 s of CPU per session even at the small size) and the group stages (a group of
one subject) are left out: they run through the same task wrapper as every other stage and have
their own tests; with ``normalise`` this module took ~8 minutes instead of ~3.

At the end, the unique secret access key of the session's S3 server must not appear in any
file the runs wrote: the stores, manifests, console output, Dask, SLURM job and gateway logs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import s3fs
import yaml
from conftest import S3_SECRET
from rich.console import Console

from infra.bids import discover
from infra.clusters import make_executor
from infra.demo import EXAMPLE
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import print_summary, run_pipeline
from infra.storage import Store, s3_storage_options
from infra.study import load_study
from processing.simulate import simulate_study
from processing.stages import STAGES

pytestmark = pytest.mark.s3
IN_BUCKET, OUT_BUCKET = "clusters-in", "clusters-out"
RUN_LOGS: list[Path] = []  # console output of every run, grepped for the secret at the end
RUN_STAGES = [  # see the module docstring
    s.name for s in STAGES if s.name != "normalise" and not s.name.startswith("group")
]


@pytest.fixture(scope="module")
def study_files(s3_server, tmp_path_factory):
    """One simulated subject, the first run of each session only (the sessions' fixed effects
    pass the single run through), uploaded to S3."""
    root = tmp_path_factory.mktemp("small-study")
    simulate_study(root / "bids", subjects=1, seed=0, size="small")
    for extra in (root / "bids").rglob("*_run-2_*"):
        extra.unlink()
    fs = s3fs.S3FileSystem(**s3_storage_options())
    fs.mkdir(IN_BUCKET)
    fs.mkdir(OUT_BUCKET)
    fs.put(str(root / "bids"), f"{IN_BUCKET}/bids", recursive=True)
    return root


def write_study(root: Path, name: str) -> Path:
    """The reference study on the S3 dataset, writing to ``s3://clusters-out/<name>``."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["dataset"] = f"s3://{IN_BUCKET}/bids"
    doc["store"] = f"s3://{OUT_BUCKET}/{name}"
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_on(root: Path, name: str, executor) -> Store:
    """Run the study into store ``name`` on ``executor``; keep the console output as a log."""
    study = load_study(str(write_study(root, name)))
    assert study.issues == []
    out = io.StringIO()
    console = Console(file=out, width=200)
    dataset = discover(study.dataset_url, study.tasks)
    store = Store(study.store_url)
    try:
        reports = run_pipeline(
            PlanContext(study, dataset, store, retries=1), executor, console, RUN_STAGES
        )
        code = print_summary(reports, store, console)
    finally:
        executor.close()
    log = root / f"{name}-console.log"
    log.write_text(out.getvalue())
    RUN_LOGS.append(log)
    assert code == 0, out.getvalue()[-3000:]
    return Store(study.store_url)


@pytest.fixture(scope="module")
def reference(study_files, s3_server) -> Store:
    """The local-cluster run: the reference every backend must match."""
    executor = make_executor("local", workers=2, options={"local_directory": str(study_files)})
    return run_on(study_files, "local", executor)


def _disk(s3_server, store: Store) -> Path:
    """The folder rclone serves the store from."""
    return Path(s3_server["root"]) / store.root


def assert_same_results(s3_server, got: Store, want: Store) -> None:
    """Identical manifests and store contents (see the module docstring)."""
    ours = {(r.stage, r.unit): r for r in Manifest(got).records()}
    theirs = {(r.stage, r.unit): r for r in Manifest(want).records()}
    assert ours.keys() == theirs.keys() and len(ours) > 30
    for task, rec in theirs.items():
        other = ours[task]
        assert (other.state, other.key, other.outputs) == (rec.state, rec.key, rec.outputs), task
        assert rec.state in ("done", "excluded"), (task, rec.error)
    a, b = _disk(s3_server, got), _disk(s3_server, want)
    skip = ("manifest/", "study.yaml")
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    compared = 0
    for rel in files_a:
        if rel.startswith(skip) or rel.endswith(".png"):
            continue
        if rel.endswith(".nii.gz"):
            x, y = nib.load(a / rel), nib.load(b / rel)
            np.testing.assert_array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj))
            assert x.header.binaryblock == y.header.binaryblock, rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        compared += 1
    assert compared > 100


def test_reference_run_finishes_every_stage(reference):
    stages = {r.stage for r in Manifest(reference).records() if r.state == "done"}
    assert {"ingest", "motion", "filter", "glm", "fixed_effects"} <= stages


def test_dry_run_plans_without_running_or_writing(reference, study_files, s3_server, capsys):
    from infra.cli import main

    fresh = write_study(study_files, "dry-run")
    assert main(["run", str(fresh), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "ingest" in table and "waiting" in table and "nothing was run or written" in table
    assert not (Path(s3_server["root"]) / OUT_BUCKET / "dry-run").exists()
    before = sorted(p for p in _disk(s3_server, reference).rglob("*"))
    assert main(["run", str(write_study(study_files, "local")), "--dry-run"]) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines() if "│" in line]
    to_run = {cells[1].strip(): cells[2].strip() for cells in rows if len(cells) > 3}
    assert all(to_run[stage] == "0" for stage in RUN_STAGES), to_run
    assert sorted(p for p in _disk(s3_server, reference).rglob("*")) == before


def test_slurm_jobqueue_run_matches_the_local_run(slurm, study_files, reference, s3_server):
    options = {
        "queue": slurm.partition,
        "memory": "2GB",
        "walltime": "00:20:00",
        "min_jobs": 0,
        "max_jobs": slurm.cpus,
        "log_directory": str(slurm.log_dir),
        "local_directory": str(study_files / "slurm-scratch"),
        "python": sys.executable,
    }
    executor = make_executor("slurm", options=options)
    store = run_on(study_files, "slurm", executor)
    assert_same_results(s3_server, store, reference)
    workers = {r.worker for r in Manifest(store).records()}
    jobs = list(slurm.log_dir.glob("dask-worker-*.err"))
    assert jobs, "no SLURM job ran a worker"
    queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
    assert queue.stdout.strip() == "", "closing the cluster must cancel its jobs"
    assert workers


def test_gateway_run_matches_the_local_run(
    gateway_server, study_files, reference, s3_server, monkeypatch
):
    monkeypatch.setenv("BOLDCLOUD_GATEWAY_PASSWORD", gateway_server.password)
    options = {
        "address": gateway_server.address,
        "proxy_address": gateway_server.proxy_address,
        "min_workers": 2,
        "max_workers": 2,
    }
    store = run_on(study_files, "gateway", make_executor("gateway", options=options))
    assert_same_results(s3_server, store, reference)


def test_gateway_refuses_a_wrong_password(gateway_server, monkeypatch):
    from aiohttp import ClientResponseError

    monkeypatch.setenv("BOLDCLOUD_GATEWAY_PASSWORD", "not-the-password")
    options = {"address": gateway_server.address, "proxy_address": gateway_server.proxy_address}
    with pytest.raises(ClientResponseError) as refused:
        make_executor("gateway", options=options)
    assert refused.value.status == 401


def test_the_s3_secret_never_reaches_a_written_file(reference, s3_server, tmp_path_factory):
    """Runs after the backends above (file order): every file the session wrote so far, the
    S3 server's objects included, is searched. SLURM's own state folder is left out: slurmctld
    keeps each batch job's environment there by design (use profiles or roles on shared
    clusters, see README)."""
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET
    secret = S3_SECRET.encode()
    base = tmp_path_factory.getbasetemp()
    searched, leaks = 0, []
    for path in base.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(base).parts
        if len(rel) > 1 and rel[0].startswith("slurm") and rel[1] == "state":
            continue
        searched += 1
        if secret in path.read_bytes():
            leaks.append(str(path))
    assert RUN_LOGS and all(log.is_relative_to(base) for log in RUN_LOGS)
    assert searched > 200
    assert leaks == []
