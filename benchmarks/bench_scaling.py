"""Scaling benchmark: the small simulated study on 1 and 2 local Dask workers, scheduler
overhead per task, and planning a 1,000-subject study.

1. ``simulate --size small`` (``--subjects``, default 1: 2 sessions x 2 runs), then the whole
   stage table on a fresh local store with a LocalCluster of 1 worker, then of 2 workers (one
   thread each). Per stage: wall time. Parallel efficiency of the subject-level stages
   (everything before the group level) = T1 / (2 x T2).
2. Scheduler overhead per task: 2,000 no-op tasks through ``DaskExecutor.map_unordered`` on
   the 2-worker cluster (wall / tasks), and the pipeline's own overhead: (workers x stage wall
   - sum of task durations) / tasks, which adds the manifest writes and the stage barriers.
3. Dry-run plan of 1,000 subjects x 2 sessions x 2 runs: the 1-worker store's records of
   ``sub-01`` are cloned to 1,000 subjects (units renamed, content keys kept), then each stage
   is planned with its own records removed and its upstream present, i.e. as on a fresh run
   where everything upstream has finished. Reported: planning time per stage and task count.
   Store reads that planners make per run (volume counts, brain masks) hit the template's
   objects; planners memoise mask blocks by key, so per-run mask reads are under-counted.

    .venv/bin/python benchmarks/bench_scaling.py [--subjects 1] [--keep /tmp/bench-scaling]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

QUIET = Console(quiet=True)


def subject_level(stage: str) -> bool:
    """Stages that fan out per subject (everything before the group stages)."""
    return not stage.startswith("group")


def run_table(out: Path, workers: int) -> dict:
    """Every stage on a fresh store with ``workers`` local workers; wall time per stage."""
    from infra.bids import discover
    from infra.clusters import make_executor
    from infra.manifest import Manifest
    from infra.pipeline import PlanContext
    from infra.runner import run_pipeline
    from infra.storage import Store
    from infra.study import load_study
    from processing.stages import STAGES

    store_dir = out / f"store-{workers}w"
    shutil.rmtree(store_dir, ignore_errors=True)
    study = load_study(str(out / "study.yaml"), store_override=str(store_dir))
    ctx = PlanContext(study, discover(study.dataset_url, study.tasks), Store(str(store_dir)))
    executor = make_executor("local", workers=workers)
    stages = {}
    try:
        executor.client.run(lambda: None)  # workers up before timing
        for entry in STAGES:
            started = time.perf_counter()
            (report,) = run_pipeline(ctx, executor, QUIET, stages=[entry.name])
            wall = time.perf_counter() - started
            assert not report.failed, [r.error for r in report.failed]
            busy = sum(r.duration_s or 0 for r in report.ran)
            stages[entry.name] = {"wall_s": wall, "tasks": len(report.ran), "task_s": busy}
        overhead = noop_overhead(executor) if workers == 2 else None
    finally:
        executor.close()
    records = Manifest(Store(str(store_dir))).records()
    return {"workers": workers, "stages": stages, "noop_overhead_s": overhead, "n": len(records)}


def noop_overhead(executor, n: int = 2000) -> float:
    """Seconds per no-op task through the executor (submit, schedule, run, gather)."""
    started = time.perf_counter()
    done = sum(1 for _ in executor.map_unordered(abs, range(n), [f"noop-{i}" for i in range(n)]))
    assert done == n
    return (time.perf_counter() - started) / n


def clone_unit(unit: str, subject: str) -> str:
    return unit.replace("sub-01", f"sub-{subject}", 1)


def plan_at_scale(out: Path, subjects: int) -> dict:
    """Plan every stage for ``subjects`` clones of sub-01 (see the module docstring)."""
    from infra.bids import discover
    from infra.dryrun import plan_stages
    from infra.manifest import Manifest
    from infra.pipeline import PlanContext
    from infra.storage import Store
    from infra.study import load_study
    from processing.stages import STAGES

    store = Store(str(out / "store-1w"))
    study = load_study(str(out / "study.yaml"), store_override=store.url)
    template = discover(study.dataset_url, study.tasks, ["01"])
    labels = [f"{i:04d}" for i in range(1, subjects + 1)]
    runs = []
    for label in labels:
        for run in template.runs:
            clone = dataclasses.replace(run, key=clone_unit(run.key, label))
            clone.entities = {**run.entities, "sub": label}
            runs.append(clone)
    dataset = dataclasses.replace(template, runs=runs)
    records: dict[str, dict] = {}
    for rec in Manifest(store).records():
        if rec.subject != "01":
            continue
        for label in labels:
            twin = copy.copy(rec)
            twin.unit, twin.subject = clone_unit(rec.unit, label), label
            records.setdefault(rec.stage, {})[twin.unit] = twin
    per_stage = {}
    started = time.perf_counter()
    for entry in STAGES:  # each stage planned as if it had never run, its upstream done
        upstream = {**records, entry.name: {}}
        ctx = PlanContext(study, dataset, store, records=upstream)
        (count,) = plan_stages(ctx, [entry.name])
        per_stage[entry.name] = {"tasks": count.todo + count.excluded, "plan_s": count.seconds}
    total = time.perf_counter() - started
    return {
        "subjects": subjects,
        "runs": len(runs),
        "tasks": sum(s["tasks"] for s in per_stage.values()),
        "plan_s": total,
        "stages": per_stage,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--plan-subjects", type=int, default=1000)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    out.mkdir(parents=True, exist_ok=True)
    from infra.demo import write_demo_study
    from processing.simulate import simulate_study

    if not (out / "bids" / "dataset_description.json").exists():
        simulate_study(out / "bids", subjects=args.subjects, seed=0, size="small")
    write_demo_study(out)
    one, two = run_table(out, 1), run_table(out, 2)
    chosen = [s for s in one["stages"] if subject_level(s)]
    t1 = sum(one["stages"][s]["wall_s"] for s in chosen)
    t2 = sum(two["stages"][s]["wall_s"] for s in chosen)
    tasks = sum(two["stages"][s]["tasks"] for s in chosen)
    busy = sum(two["stages"][s]["task_s"] for s in chosen)
    result = {
        "one_worker": one,
        "two_workers": two,
        "subject_level_wall_s": {"1": t1, "2": t2},
        "parallel_efficiency": t1 / (2 * t2),
        "pipeline_overhead_per_task_s": (2 * t2 - busy) / tasks,
        "plan": plan_at_scale(out, args.plan_subjects),
    }
    print(json.dumps(result, indent=1))
    print(
        f"subject-level stages: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s, "
        f"efficiency {result['parallel_efficiency']:.0%}; no-op task "
        f"{two['noop_overhead_s'] * 1e3:.1f} ms; pipeline overhead per task "
        f"{result['pipeline_overhead_per_task_s'] * 1e3:.0f} ms; plan of "
        f"{result['plan']['runs']} runs: {result['plan']['tasks']} tasks in "
        f"{result['plan']['plan_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
