"""Submitting from a laptop: ``boldcloud submit`` records a job in the store and starts a driver
(a detached process, a real SLURM batch job), which runs the pipeline; ``status``, ``logs`` and
``cancel`` work from the store alone; a new submit resumes a cancelled job.

The study is the smallest useful one: one simulated subject, one session, one run (small grid),
and only the first stages (ingest .. motion, 9 tasks); the cancel test runs up to ``filter`` so
the cancel lands with work left. Batch-script and Kubernetes-manifest rendering are checked offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import S3_SECRET

from infra.cli import main
from infra.demo import EXAMPLE
from infra.jobs import FINAL_STATES, Job
from infra.launchers import BATCH_LAUNCHERS, kubernetes_job
from infra.manifest import Manifest
from infra.storage import Store
from processing.simulate import simulate_study

REPO = Path(__file__).resolve().parent.parent
FIRST = ["ingest", "motion_reference", "motion_estimate", "motion"]  # 9 tasks
WITH_FILTER = [*FIRST, "preprocess", "filter"]  # 16 tasks: the cancel lands with work left


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    """One simulated subject, session ``pre``, run 1 only, no anatomy (no normalisation)."""
    root = tmp_path_factory.mktemp("jobs-bids") / "bids"
    simulate_study(root, subjects=1, seed=0, size="small")
    for extra in [*root.rglob("*_run-2_*"), *root.rglob("ses-post"), *root.rglob("anat")]:
        shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
    return root


def write_study(folder: Path, bids: Path, store: str, execution: dict | None = None) -> Path:
    """The reference study on ``bids`` with only its run-level node, writing to ``store``."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.update(dataset=str(bids), store=store, select={"sessions": ["pre"]})
    doc["model"]["Nodes"] = [n for n in doc["model"]["Nodes"] if n["Level"] == "Run"]
    doc["model"]["Edges"] = []
    for block in ("roi", "clinical"):
        doc["boldcloud"].pop(block, None)
    if execution:
        doc["execution"] = execution
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    """The S3 bucket the SLURM tests' stores live in."""
    Store("s3://jobs-out").fs.mkdir("jobs-out")
    return "s3://jobs-out"


@pytest.fixture(autouse=True)
def driver_cache(tmp_path, monkeypatch) -> Path:
    """Detached drivers write their output under the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def wait_for(job: Job, timeout: float, states=FINAL_STATES) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = job.read()
        if record["state"] in states:
            return record
        time.sleep(1)
    raise AssertionError(f"job {job.id} still {record['state']}:\n{job.read_log()[-3000:]}")


def gone(pid: int, timeout: float = 30) -> bool:
    """Whether process ``pid`` exits within ``timeout`` s (a zombie counts as exited: an orphan's
    new parent may never reap it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        except ChildProcessError:
            pass
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        if "\nState:\tZ" in status:
            return True
        time.sleep(0.2)
    return False


def submitted(capsys, args: list[str]) -> tuple[str, float]:
    """Run ``boldcloud submit`` in this process; the job id (its last line) and the seconds."""
    started = time.perf_counter()
    assert main(["submit", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1], time.perf_counter() - started


def squeue() -> str:
    return subprocess.run(
        ["squeue", "-h"], capture_output=True, text=True, check=True
    ).stdout.strip()


def done_records(store: Store) -> dict:
    return {r.task_id: r for r in Manifest(store).records() if r.state == "done"}


def test_local_submit_returns_at_once_and_the_detached_driver_finishes(bids, tmp_path, capsys):
    study = write_study(tmp_path, bids, str(tmp_path / "store"))
    command = [sys.executable, "-m", "infra.cli", "submit", str(study), "--cluster", "local"]
    started = time.perf_counter()
    out = subprocess.run(
        [*command, "--workers", "1", "--stage", ",".join(FIRST)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    seconds = time.perf_counter() - started  # a fresh interpreter, imports included
    print(f"submit took {seconds:.1f} s")  # no bound on time: a loaded CI machine is slow
    job = Job(Store(str(tmp_path / "store")), out.stdout.strip().splitlines()[-1])
    # "at once": the submitting process has exited while the job has not ended
    assert job.read()["state"] in ("submitted", "running"), out.stdout
    follow = [sys.executable, "-m", "infra.cli", "logs", job.id, "--store", job.store.url, "-f"]
    followed = subprocess.run(follow, capture_output=True, text=True, timeout=240, cwd=REPO)
    record = job.read()  # --follow returned: the job has ended, its whole log was printed
    assert (record["state"], record["exit_code"]) == ("done", 0), job.read_log()[-3000:]
    assert followed.stdout.rstrip().endswith(f"Job {job.id}: done (exit code 0)")
    assert record["driver"]["pid"] == job.launch_info()["pid"] and gone(record["driver"]["pid"])
    assert record["cluster"] == "local" and record["stages"] == FIRST
    assert len(done_records(job.store)) == 9
    assert {r.stage for r in done_records(job.store).values()} == set(FIRST)
    assert main(["status", job.id, "--store", job.store.url]) == 0
    status = capsys.readouterr().out
    assert "done" in status and "motion_estimate" in status and "exit code" in status
    assert main(["logs", job.id, "--study", str(study)]) == 0
    log = capsys.readouterr().out
    assert "motion_estimate (6 tasks)" in log and f"Job {job.id}: done" in log
    assert main(["status", "--store", job.store.url]) == 0  # the overview lists the job
    assert job.id in capsys.readouterr().out


def test_cancel_stops_the_driver_and_a_new_submit_resumes(bids, tmp_path, capsys):
    study = write_study(tmp_path, bids, str(tmp_path / "store"))
    args = [str(study), "--cluster", "local", "--workers", "1", "--stage", ",".join(WITH_FILTER)]
    job_id, _ = submitted(capsys, args)
    job = Job(Store(str(tmp_path / "store")), job_id)
    assert job.read()["state"] in ("submitted", "running")  # submit did not wait for the run
    deadline = time.time() + 180
    while not done_records(job.store) and time.time() < deadline:
        time.sleep(0.5)
    assert main(["cancel", job_id, "--store", job.store.url]) == 0
    assert "cancel requested" in capsys.readouterr().out
    record = wait_for(job, 90)
    assert (record["state"], record["exit_code"]) == ("cancelled", 130), job.read_log()[-3000:]
    assert gone(record["driver"]["pid"])
    assert "cancel requested" in job.read_log()
    before = done_records(job.store)
    assert before and {r.stage for r in before.values()} != set(WITH_FILTER), "cancelled too late"
    assert main(["cancel", job_id, "--store", job.store.url]) == 0
    assert "already cancelled" in capsys.readouterr().out

    again, _ = submitted(capsys, args)
    assert wait_for(Job(job.store, again), 240)["state"] == "done"
    after = done_records(job.store)
    assert {r.stage for r in after.values()} == set(WITH_FILTER)
    for task, rec in before.items():  # finished before the cancel: not redone
        assert (after[task].attempts, after[task].finished) == (1, rec.finished), task


@pytest.mark.s3
def test_slurm_submit_runs_the_driver_as_a_batch_job(
    slurm, bids, tmp_path, bucket, s3_server, capsys
):
    options = {
        "queue": slurm.partition,
        "memory": "2GB",
        "walltime": "00:20:00",
        "max_jobs": 1,
        "log_directory": str(slurm.log_dir),
        "local_directory": str(tmp_path / "scratch"),
        "python": sys.executable,
        "driver": {"memory": "2G", "walltime": "00:20:00", "log_directory": str(slurm.log_dir)},
    }
    store_url = f"{bucket}/slurm"
    study = write_study(tmp_path, bids, store_url, {"cluster": "slurm", "cluster_options": options})
    job_id, seconds = submitted(capsys, [str(study), "--stage", ",".join(FIRST)])
    print(f"submit took {seconds:.1f} s")
    job = Job(Store(store_url), job_id)
    batch = job.launch_info()["batch_id"]
    record = wait_for(job, 300)
    assert (record["state"], record["driver"]["batch_id"]) == ("done", batch), job.read_log()
    assert len(done_records(job.store)) == 9
    assert main(["status", job_id, "--store", store_url]) == 0
    assert f"slurm job {batch}" in capsys.readouterr().out
    assert "Job " + job_id + ": done" in job.read_log()
    assert (slurm.log_dir / f"boldcloud-driver-{batch}.log").exists()
    deadline = time.time() + 30  # the batch job ends just after the driver's last write
    while squeue() and time.time() < deadline:
        time.sleep(0.5)
    assert squeue() == "", "the driver and its worker jobs must be gone"
    written = [*(Path(s3_server["root"]) / "jobs-out").rglob("*"), *slurm.log_dir.rglob("*")]
    files = [p for p in written if p.is_file()]
    assert len(files) > 20 and not [p for p in files if S3_SECRET.encode() in p.read_bytes()]


@pytest.mark.s3
def test_cancel_of_a_queued_slurm_driver_scancels_it(slurm, bids, tmp_path, bucket, capsys):
    driver = {"log_directory": str(slurm.log_dir), "extra_directives": ["--begin=now+3600"]}
    options = {"queue": slurm.partition, "python": sys.executable, "driver": driver}
    store_url = f"{bucket}/queued"
    study = write_study(tmp_path, bids, store_url, {"cluster": "slurm", "cluster_options": options})
    job_id, _ = submitted(capsys, [str(study)])
    job = Job(Store(store_url), job_id)
    batch = job.launch_info()["batch_id"]
    assert (
        batch in squeue()
        and "--begin=now+3600" in job.store.read_bytes(job.key("driver.sbatch")).decode()
    )
    assert main(["cancel", job_id, "--store", store_url]) == 0
    assert f"scancel {batch}: exit code 0" in capsys.readouterr().out
    record = job.read()
    assert (record["state"], record["error"]) == (
        "cancelled",
        "cancelled before the driver started",
    )
    assert batch not in squeue().split()


def test_submit_refuses_an_invalid_study_and_writes_nothing(bids, tmp_path, capsys):
    study = write_study(tmp_path, bids, str(tmp_path / "store"))
    doc = yaml.safe_load(study.read_text())
    doc["model"]["Nodes"][0]["Contrasts"][0]["Weights"] = [1, 1]
    study.write_text(yaml.safe_dump(doc))
    assert main(["submit", str(study), "--cluster", "local"]) == 2
    assert "model.Nodes.0.Contrasts.0" in capsys.readouterr().out
    assert not (tmp_path / "store" / "jobs").exists()
    assert main(["status", "nojob-1", "--store", str(tmp_path / "store")]) == 2
    assert "no job 'nojob-1'" in capsys.readouterr().out


def test_batch_scripts_render_for_each_scheduler(tmp_path):
    job = Job(Store(str(tmp_path / "store")), "study-20260101-000000-abcdef")
    profile = {"backend": "pbs", "profile": "pbs", "queue": "workq", "python": "/opt/py"}
    for backend, expected in [
        ("slurm", "#SBATCH --partition=workq"),
        ("pbs", "#PBS -l select=1:ncpus=1:mem=2048mb"),
        ("sge", "#$ -l h_rt=24:00:00"),
    ]:
        script = BATCH_LAUNCHERS[backend].script(job, {**profile, "backend": backend})
        assert expected in script and "#!/usr/bin/env bash" in script
        assert f"exec /opt/py -m infra.cli driver {job.id} --store {job.store.url}" in script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "#SBATCH --mem=2048M" in BATCH_LAUNCHERS["slurm"].script(job, profile)
    assert BATCH_LAUNCHERS["sge"].parse_id('Your job 42 ("x") has been submitted') == "42"
    assert BATCH_LAUNCHERS["slurm"].parse_id("17;cluster\n") == "17"


def test_kubernetes_driver_job_is_valid_and_shaped_like_the_deploy_file(tmp_path):
    from infra.clusters import resolve_profile

    job = Job(Store("s3://lab-results/cuff-study"), "berry2020-cuff-20260101-000000-abcdef")
    manifest = kubernetes_job(job, resolve_profile("kubernetes", user_config={}))
    deploy = yaml.safe_load((REPO / "deploy" / "kubernetes" / "driver-job.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == (deploy["apiVersion"], deploy["kind"])
    pod, want = manifest["spec"]["template"]["spec"], deploy["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "restartPolicy"):
        assert pod[key] == want[key]
    [container], [reference] = pod["containers"], want["containers"]
    assert container["name"] == reference["name"]
    assert container["command"] == ["boldcloud", "driver", job.id, "--store", job.store.url]
    refs = [next(iter(s.values()))["name"] for s in container["envFrom"]]
    assert refs == [next(iter(s.values()))["name"] for s in reference["envFrom"]]
    assert "env" not in container and len(manifest["metadata"]["name"]) <= 63
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifest, "1.31", strict=True)


def test_driver_log_uploads_redact_credentials():
    from infra.joblog import redact

    env = {"AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1"}
    text = f"region us-east-1, key {S3_SECRET}.".encode()
    assert redact(text, env) == b"region us-east-1, key ***."
