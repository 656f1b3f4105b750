"""Normalisation benchmark: the per-subject ``normalise`` Dask task at full size.

One simulated full-size subject (T1w 1 mm, BOLD 98 x 98 x 75 at 2 mm; the first-level
benchmark's cached study, ``--keep``) is processed up to ``fixed_effects`` once; then the
``normalise`` stage (T1w -> MNI152NLin2009aSym 2 mm affine + SyN, mean EPI -> T1w rigid,
warping the session's maps) runs ``--repeats`` times as one task on a fresh 1-worker Dask
LocalCluster. Reported: wall time of the stage and the worker's peak RSS (sampled every 50 ms).
Target (issue 5): under 5 minutes and 3 GB per subject.

    .venv/bin/python benchmarks/bench_normalise.py [--keep /tmp/bench-firstlevel] [--repeats 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rss import ChildPeakRSS


def measure(folder: Path) -> tuple[float, float, dict]:
    """(seconds, worker peak MiB, QC of the record) of one forced normalise stage."""
    from bench_firstlevel import context
    from rich.console import Console

    from infra.clusters import make_executor
    from infra.manifest import Manifest
    from infra.runner import run_pipeline

    ctx = context(folder, "film")
    ctx.force = True
    executor = make_executor("local", workers=1)
    with ChildPeakRSS() as rss:
        try:
            t0 = time.perf_counter()
            reports = run_pipeline(ctx, executor, Console(quiet=True), stages=["normalise"])
            seconds = time.perf_counter() - t0
        finally:
            executor.close()
    failed = [r.error for rep in reports for r in rep.failed]
    assert not failed, failed
    record = Manifest(ctx.store).get("normalise", "sub-01")
    return seconds, rss.peak_mib, record.outputs.get("qc", {})


def main() -> None:
    from bench_firstlevel import prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=Path("/tmp/bench-firstlevel"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    prepare(args.keep)
    print(f"{'repeat':>6} {'seconds':>8} {'worker peak MiB':>16}  QC")
    for i in range(args.repeats):
        seconds, peak, qc = measure(args.keep)
        print(f"{i + 1:>6} {seconds:8.1f} {peak:16.0f}  Dice {qc.get('Dice')} NMI {qc.get('NMI')}")


if __name__ == "__main__":
    main()
