"""Scheduled reprocessing end to end, through the ``boldcloud`` command in subprocesses.

One small simulated study (2 subjects, session pre, small grid): a first ``run`` is killed with
SIGKILL mid-way and a second ``run`` resumes it (stale lease taken over, finished tasks not
redone); then a third subject appears in the BIDS source and ``run --new-only`` processes only
its tasks plus the group stages; a repeat finds nothing new; a deleted subject is reported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.demo import write_demo_study
from infra.incremental import GROUP_STAGES, SOURCES_KEY
from infra.lease import LEASE_KEY, Lease
from infra.manifest import Manifest
from infra.schedule import parse_interval
from infra.storage import Store
from processing.simulate import simulate_study

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """2 subjects in the source, a third (sub-03) held aside; session pre only; a group model
    (OLS, GRF inference, one contrast) needs 3 subjects, so it first fits when sub-03 arrives."""
    out = tmp_path_factory.mktemp("incremental")
    simulate_study(out / "bids", subjects=3, seed=0, size="small")
    (out / "held").mkdir()
    shutil.move(out / "bids" / "sub-03", out / "held" / "sub-03")
    path = write_demo_study(out)
    doc = yaml.safe_load(path.read_text())
    doc["select"] = {"sessions": ["pre"]}
    doc["preprocessing"]["motion_exclusion_mm"] = 100.0  # keep sub-02: 3 usable with sub-03
    doc["boldcloud"]["group_level"].update({"estimator": "ols", "contrasts": ["P40vsP0"]})
    doc["boldcloud"]["inference"]["method"] = "grf"  # the cheapest real group inference
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out, path, Store(str(out / "store"))


def boldcloud(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "infra.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


def records(store: Store) -> dict[str, dict]:
    return {r.task_id: r.to_json() for r in Manifest(store).records()}


def _done(store: Store) -> dict[str, dict]:
    return {t: r for t, r in records(store).items() if r["state"] == "done"}


@pytest.fixture(scope="module")
def resumed(study):
    """A driver SIGKILLed after some tasks finished, then a second run to the end."""
    _, path, store = study
    env = {**os.environ, "BOLDCLOUD_LEASE_TTL_S": "600"}  # only a dead-PID check frees it
    cmd = [sys.executable, "-m", "infra.cli", "run", str(path), "--cluster", "inprocess"]
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_done(store)) < 4 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = _done(store)
    stale = store.read_json(LEASE_KEY)
    started = time.time()
    second = boldcloud("run", str(path), "--workers", "2", timeout=1200)
    return before, stale, driver.pid, second, time.time() - started


def test_killed_driver_is_resumed_without_redoing_finished_tasks(study, resumed):
    _, _, store = study
    before, stale, pid, second, _ = resumed
    assert len(before) >= 4 and stale["pid"] == pid
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = " ".join(second.stdout.split())
    assert "taking over a stale run lease" in output and f"process {pid}" in output
    after = records(store)
    for task, rec in before.items():
        assert after[task]["attempts"] == 1, task
        assert after[task]["finished"] == rec["finished"], f"{task} was recomputed"
    assert {r["state"] for r in after.values()} <= {"done", "excluded"}
    assert not store.exists(LEASE_KEY)  # released at the end
    assert set(store.read_json(SOURCES_KEY)["units"]) == {"sub-01_ses-pre", "sub-02_ses-pre"}


@pytest.fixture(scope="module")
def added(study, resumed):
    """sub-03 appears in the source; ``run --new-only``."""
    out, path, store = study
    before = records(store)
    shutil.move(out / "held" / "sub-03", out / "bids" / "sub-03")
    started = time.time()
    result = boldcloud("run", str(path), "--new-only", "--workers", "2", timeout=1200)
    return before, result, started, time.time() - started


def test_new_only_runs_the_new_subject_and_the_group_stages(study, added):
    _, _, store = study
    before, result, started, _ = added
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "new: sub-03_ses-pre" in result.stdout
    after = records(store)
    for task, rec in before.items():
        if rec["stage"] not in GROUP_STAGES:
            assert after[task] == rec, f"{task} of a finished subject was touched"
    fresh = {t: r for t, r in after.items() if t not in before or after[t] != before[t]}
    subject_level = {t: r for t, r in fresh.items() if r["stage"] not in GROUP_STAGES}
    assert subject_level and {r["subject"] for r in subject_level.values()} == {"03"}
    assert all(r["attempts"] == 1 for r in subject_level.values())
    group = {t: r for t, r in fresh.items() if r["stage"] in GROUP_STAGES}
    fitted = {r["stage"] for r in group.values() if r["state"] == "done"}
    assert fitted >= {"group_stack", "group_fit", "group_inference"}, group
    assert all(before.get(t, {}).get("state") != "done" for t in group if "stack" in t)
    assert all(
        (r["finished"] or r["started"] or 0) >= started or r["state"] == "excluded"
        for r in group.values()
    )
    assert "sub-03_ses-pre" in store.read_json(SOURCES_KEY)["units"]


def test_new_only_with_nothing_new_runs_nothing(study, added):
    _, path, store = study
    before = records(store)
    result = boldcloud("run", str(path), "--new-only", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "nothing new or changed" in result.stdout
    assert "Results are in" not in result.stdout and records(store) == before


def test_watch_survives_refused_cycles_and_stops_on_sigterm(study, added):
    _, path, store = study
    holder = Lease(store, ttl_s=60, settle_s=0.05).acquire()  # every cycle is refused
    try:
        refused = boldcloud("watch", str(path), "--every", "1s", "--max-cycles", "2", timeout=300)
    finally:
        holder.release()
    text = " ".join(refused.stdout.split())
    assert refused.returncode == 0, text[-3000:]
    assert text.count("another run holds the lease") == 2 and "cycle 2: exit code 4" in text
    cmd = [sys.executable, "-m", "infra.cli", "watch", str(path), "--every", "1h"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in watcher.stdout:  # wait until the first cycle is over, then it sleeps 1 h
        lines.append(line)
        if "cycle 1: exit code" in line:
            break
    watcher.send_signal(signal.SIGTERM)
    rest, _ = watcher.communicate(timeout=60)
    assert watcher.returncode == 0 and "stopping" in rest, "".join(lines) + rest
    assert "nothing new or changed" in "".join(lines)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("2", 2)])
def test_intervals(text, seconds):
    assert parse_interval(text) == seconds


def test_bad_interval_names_the_value():
    with pytest.raises(ValueError, match=r"'1d'.*30s, 15m, 1h"):
        parse_interval("1d")


def test_deleted_subject_is_reported_and_nothing_is_deleted(study, added):
    out, path, store = study
    kept = {t for t, r in records(store).items() if r["subject"] == "03"}
    shutil.move(out / "bids" / "sub-03", out / "held" / "sub-03")
    try:
        result = boldcloud("run", str(path), "--new-only", "--cluster", "inprocess", timeout=900)
    finally:
        shutil.move(out / "held" / "sub-03", out / "bids" / "sub-03")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "deleted from the source: sub-03_ses-pre" in " ".join(result.stdout.split())
    assert kept <= set(records(store)) and any((Path(store.root) / "raw" / "sub-03").iterdir())
    assert json.loads((Path(store.root) / SOURCES_KEY).read_text())["units"].keys() == {
        "sub-01_ses-pre",
        "sub-02_ses-pre",
    }
