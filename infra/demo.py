"""`boldcloud demo` / `make demo`: simulate a small reference study and run it end to end on the
embedded default (a local Dask cluster and a local Zarr store)."""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from infra.clusters import make_executor
from infra.runner import run_study
from infra.study import load_study

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "reference-study.yaml"


def write_demo_study(out: Path) -> Path:
    """The reference study file pointed at ``out/bids`` and ``out/store``."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["dataset"], doc["store"] = "bids", "store"
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_demo(
    out: Path,
    subjects: int = 4,
    workers: int | None = None,
    console: Console | None = None,
    cluster: str = "local",
) -> int:
    """Simulate (once) and run on ``cluster`` (a profile, see infra.clusters); prints where the
    results are. Returns the exit code."""
    from processing.simulate import simulate_study

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    bids = out / "bids"
    if not (bids / "dataset_description.json").exists():
        console.print(f"Simulating {subjects} subjects (small grid) into {bids} ...")
        simulate_study(bids, subjects=subjects, sites=1, seed=0, size="small")
    study = load_study(str(write_demo_study(out)))
    if study.issues:
        for issue in study.issues:
            console.print(f"[red]error[/] {issue}")
        return 2
    executor = make_executor(cluster, workers=workers)
    console.print(f"Running on {executor.description}")
    try:
        code = run_study(study, executor, console)
    finally:
        executor.close()
    console.print(
        f"Demo study file: {out / 'study.yaml'}; simulated truth: {bids / 'derivatives' / 'truth'}"
    )
    return code
