"""Faults: a Dask worker killed by PID mid-stage, and the store's run lease (infra/lease.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from infra.bids import discover
from infra.cli import main
from infra.clusters import make_executor
from infra.demo import write_demo_study
from infra.lease import LEASE_BUSY, LEASE_KEY, Lease, LeaseHeld
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.storage import Store
from infra.study import load_study
from processing.simulate import simulate_study

QUIET = Console(quiet=True)
STAGES = ["ingest", "motion_reference"]


@pytest.fixture(scope="module")
def one_subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults")
    simulate_study(out / "bids", subjects=1, seed=3, size="small")
    path = write_demo_study(out)
    doc = yaml.safe_load(path.read_text())
    doc["select"] = {"sessions": ["pre"]}  # 2 runs: enough for 2 workers, cheap
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    assert study.issues == []
    return out, study


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _kill_first_busy_worker(client, stage: str, pids: dict[str, int], killed: list) -> None:
    """Poll the scheduler until a worker runs a task of ``stage``; SIGKILL that worker."""
    deadline = time.time() + 120
    while time.time() < deadline:
        for address, keys in client.processing().items():
            if any(str(k).startswith(f"{stage}/") for k in keys) and address in pids:
                os.kill(pids[address], signal.SIGKILL)
                killed.append((address, pids[address], list(keys)))
                return
        time.sleep(0.02)


def test_worker_killed_mid_stage_gives_the_undisturbed_results(one_subject):
    _, study = one_subject
    dataset = discover(study.dataset_url, study.tasks)
    executor = make_executor("local", workers=2)
    client = executor.client
    try:
        calm = Store(str(Path(study.store_url).parent / "calm"))
        run_pipeline(PlanContext(study, dataset, calm), executor, QUIET, stages=STAGES)
        pids = client.run(os.getpid)
        killed: list = []
        killer = threading.Thread(
            target=_kill_first_busy_worker, args=(client, "motion_reference", pids, killed)
        )
        killer.start()
        hit = Store(str(Path(study.store_url).parent / "hit"))
        reports = run_pipeline(PlanContext(study, dataset, hit), executor, QUIET, stages=STAGES)
        killer.join()
    finally:
        executor.close()
    assert killed, "no motion_reference task was seen running on a worker"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0][1], 0)
    assert all(not r.failed for r in reports), [r.error for rep in reports for r in rep.failed]
    calm_records = {r.task_id: r for r in Manifest(calm).records()}
    hit_records = {r.task_id: r for r in Manifest(hit).records()}
    assert calm_records.keys() == hit_records.keys()
    for task, rec in hit_records.items():
        assert (rec.state, rec.key, rec.outputs) == (
            "done",
            calm_records[task].key,
            calm_records[task].outputs,
        ), task
    assert _files(Path(hit.root) / "work") == _files(Path(calm.root) / "work")


def test_second_lease_is_refused_and_released_lease_is_free(tmp_path):
    store = Store(str(tmp_path / "store"))
    first = Lease(store, ttl_s=30, settle_s=0.05).acquire()
    try:
        with pytest.raises(LeaseHeld) as refused:
            Lease(store, ttl_s=30, settle_s=0.05).acquire()
        message = str(refused.value)
        assert first.owner in message and socket.gethostname() in message
        assert "expires at" in message and "--wait" in message
    finally:
        first.release()
    assert not store.exists(LEASE_KEY)
    Lease(store, ttl_s=30, settle_s=0.05).acquire().release()


def test_heartbeat_renews_the_lease(tmp_path):
    store = Store(str(tmp_path / "store"))
    lease = Lease(store, ttl_s=0.6, settle_s=0.0).acquire()
    try:
        first = store.read_json(LEASE_KEY)
        time.sleep(1.0)  # several heartbeats (every ttl/3)
        later = store.read_json(LEASE_KEY)
        assert later["owner"] == lease.owner
        assert later["renewed"] > first["renewed"] and later["expires"] > time.time()
        assert later["acquired"] == first["acquired"]
    finally:
        lease.release()


def test_expired_and_dead_leases_are_taken_over_with_a_warning(tmp_path):
    store = Store(str(tmp_path / "store"))
    crashed = {"owner": "elsewhere-1", "host": "other-host", "pid": 1, "expires": time.time() - 5}
    store.write_json(LEASE_KEY, crashed)
    warnings: list[str] = []
    lease = Lease(store, ttl_s=30, settle_s=0.05, warn=warnings.append).acquire()
    assert store.read_json(LEASE_KEY)["owner"] == lease.owner
    assert "expired at" in warnings[0] and "elsewhere-1" in warnings[0]
    lease.release()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = {"owner": "here-x", "host": socket.gethostname(), "pid": gone.pid}
    store.write_json(LEASE_KEY, {**dead, "expires": time.time() + 600})
    lease = Lease(store, ttl_s=30, settle_s=0.05, warn=warnings.append).acquire()
    assert f"process {gone.pid} on this host no longer exists" in warnings[1]
    lease.release()


def test_cli_run_is_refused_while_another_run_holds_the_lease(one_subject, capsys):
    out, study = one_subject
    store = Store(str(out / "lease-store"))
    holder = Lease(store, ttl_s=30, settle_s=0.05).acquire()
    try:
        started = time.time()
        code = main(["run", str(study.path), "--store", store.url, "--cluster", "inprocess"])
        text = capsys.readouterr().out
    finally:
        holder.release()
    assert code == LEASE_BUSY, text
    assert holder.owner in " ".join(text.split()) and "--wait" in text
    assert time.time() - started < 30
    assert not store.exists("manifest/tasks")  # nothing ran


def test_waiting_run_gets_the_lease_when_the_holder_releases_it(tmp_path):
    store = Store(str(tmp_path / "store"))
    holder = Lease(store, ttl_s=30, settle_s=0.05).acquire()
    threading.Timer(0.5, holder.release).start()
    started = time.time()
    waiter = Lease(store, ttl_s=30, settle_s=0.05).acquire(wait=True, poll_s=0.1)
    try:
        assert store.read_json(LEASE_KEY)["owner"] == waiter.owner
        assert 0.4 < time.time() - started < 10
    finally:
        waiter.release()
