"""Time the dashboard's overview endpoint on a generated manifest (default 1,000 subjects x 10
stages = 10,000 records) in a temporary local store.

Serves the real app with uvicorn on 127.0.0.1 and fetches ``/api/overview`` over HTTP:

- cold: first request after start (lists and reads every record);
- warm, unchanged: the store is re-listed (stage folders unchanged since the last walk are
  skipped), nothing re-read;
- warm, full re-stat: every record file stat'ed again (a local store does this every 30 s);
- warm, N changed: N records rewritten between requests (a run in progress), only they are re-read;
- reference: reading every record on each refresh (``Manifest.records()`` + aggregation), what a
  dashboard without the cache would do.

    .venv/bin/python benchmarks/bench_dashboard.py [--subjects 1000] [--stages 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from infra.dashboard.app import BackgroundServer, create_app
from infra.dashboard.cache import Task
from infra.dashboard.views import overview
from infra.manifest import Manifest, TaskRecord
from infra.storage import Store
from processing.stages import STAGES


def make_record(stage: str, subject: int, state: str, now: float) -> TaskRecord:
    """A record shaped like the pipeline's (hashes, params, outputs), about 1 KB of JSON."""
    unit = f"sub-{subject:04d}_ses-pre_task-cuff_run-1"
    rec = TaskRecord(
        stage=stage,
        unit=unit,
        key=f"{subject:064x}",
        state=state,
        attempts=1,
        subject=f"{subject:04d}",
        session="pre",
        worker=f"node{subject % 16:02d}",
        started=now - 60 - subject % 50,
        inputs={"raw": f"{subject:064x}", "reference": f"{subject + 1:064x}"},
        params={"preprocessing.smoothing_fwhm_mm": 5.0, "preprocessing.highpass_cutoff_s": 90},
        code_version="1",
        outputs={
            "bold": f"work/{stage}/{subject:016x}/bold",
            "plot": f"derivatives/boldcloud/sub-{subject:04d}/ses-pre/func/{unit}_desc-qc.png",
            "tsnr_median": 61.2,
        },
    )
    if state in ("done", "failed"):
        rec.finished = rec.started + 5.0 + subject % 7
        rec.duration_s = rec.finished - rec.started
    if state == "failed":
        rec.error = "ValueError: truncated gzip stream"
        rec.traceback = "Traceback (most recent call last):\n  ...\nValueError: truncated\n"
    return rec


def write_manifest(root: Path, subjects: int, stages: list[str]) -> Store:
    """One record per subject and stage: done for all stages but the last, which is running;
    about 1 % of the fourth stage failed."""
    store = Store(str(root))
    now = time.time()
    for s in range(subjects):
        for i, stage in enumerate(stages):
            state = "done" if i < len(stages) - 1 else "running"
            if s % 97 == 0 and i == 3:
                state = "failed"
            rec = make_record(stage, s, state, now)
            path = root / "manifest" / "tasks" / stage / f"{rec.unit}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec.to_json(), indent=1, sort_keys=True))
    return store


def fetch(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return time.perf_counter() - t0, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--stages", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--changed", type=int, default=100)
    args = parser.parse_args()
    stages = [s.name for s in STAGES][: args.stages]
    with tempfile.TemporaryDirectory(prefix="boldcloud-bench-dashboard-") as tmp:
        t0 = time.perf_counter()
        store = write_manifest(Path(tmp), args.subjects, stages)
        n = len(store.list("manifest/tasks", ".json"))
        print(
            f"generated {n} records ({args.subjects} subjects x {len(stages)} stages) in "
            f"{time.perf_counter() - t0:.1f} s; cpus={os.cpu_count()}"
        )
        app = create_app(tmp, min_interval_s=0.0)  # re-list on every request
        board = app.state.dashboard
        with BackgroundServer(app) as server:
            url = f"{server.url}/api/overview"
            cold, size = fetch(url)
            stats = board.cache.stats
            print(
                f"cold   : {cold:.3f} s  ({size / 1024:.0f} KiB JSON; listing "
                f"{stats.list_s:.3f} s, read+parse {stats.read} records {stats.read_s:.3f} s)"
            )
            warm = []
            for _ in range(args.repeats):
                time.sleep(1.05)  # next second: the overview memo expires, as for a live page
                warm.append(fetch(url)[0])
            print(
                f"warm, unchanged     : median {statistics.median(warm):.3f} s, "
                f"max {max(warm):.3f} s (listing {board.cache.stats.list_s:.3f} s)"
            )
            full = []
            for _ in range(args.repeats):
                time.sleep(1.05)
                board.cache._full_scan_ns = 0  # as every 30 s: stat every record file again
                full.append(fetch(url)[0])
            print(
                f"warm, full re-stat  : median {statistics.median(full):.3f} s, "
                f"max {max(full):.3f} s (listing {board.cache.stats.list_s:.3f} s)"
            )
            changed, now = [], time.time()
            manifest = Manifest(store)
            for r in range(args.repeats):
                for s in range(r * args.changed, (r + 1) * args.changed):
                    stage = stages[-1]
                    manifest.put(make_record(stage, s % args.subjects, "done", now))
                changed.append(fetch(url)[0])
            print(
                f"warm, {args.changed} changed   : median {statistics.median(changed):.3f} s, "
                f"max {max(changed):.3f} s (re-read {board.cache.stats.read} records)"
            )
            since = f"{url}?since={board.cache.generation}"
            small = [fetch(since) for _ in range(args.repeats)]
            median = statistics.median(t for t, _ in small)
            print(f"poll, no change (?since=): median {median:.3f} s, {small[0][1]} bytes")
        ref = []
        for _ in range(min(args.repeats, 3)):
            t0 = time.perf_counter()
            records = Manifest(store).records()
            tasks = [Task.from_json("", r.to_json()) for r in records]
            overview(tasks)
            ref.append(time.perf_counter() - t0)
        print(f"reference, read every record each refresh: median {statistics.median(ref):.3f} s")


if __name__ == "__main__":
    main()
