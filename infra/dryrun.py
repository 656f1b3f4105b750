"""``boldcloud run --dry-run``: plan every stage against the manifest, run nothing, write nothing.

A stage plans from its upstream records, so a dry run on a fresh store lists the first stage's
tasks exactly and later stages only as far as their upstream is already done (a stage whose
upstream has pending tasks shows them as ``waiting``). ``benchmarks/bench_scaling.py`` uses
:func:`plan_stages` on a 1,000-subject study to time planning at scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from infra.bids import discover
from infra.pipeline import PlanContext
from infra.stages import ADAPTERS
from infra.storage import Store
from infra.study import Study
from processing.stages import STAGES


@dataclass
class StageCount:
    """What a stage would do now."""

    stage: str
    todo: int
    current: int
    excluded: int
    seconds: float  # planning time


def plan_stages(ctx: PlanContext, names: list[str] | None = None) -> list[StageCount]:
    """Plan each stage of the table (or only ``names``) in order; nothing runs or is written."""
    counts = []
    for entry in STAGES:
        if names is not None and entry.name not in names:
            continue
        started = time.perf_counter()
        plan = ADAPTERS[entry.name](ctx)
        elapsed = time.perf_counter() - started
        counts.append(
            StageCount(entry.name, len(plan.todo), len(plan.current), len(plan.excluded), elapsed)
        )
    return counts


def print_plan(counts: list[StageCount], console: Console) -> None:
    """A table of tasks per stage; notes stages that wait for upstream work."""
    table = Table(title="dry run: tasks per stage (nothing was run or written)")
    for column in ("stage", "to run", "up to date", "excluded", "plan s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    pending = False
    for count in counts:
        todo = str(count.todo)
        if pending and count.todo == 0:
            todo = "waiting"
        table.add_row(
            count.stage, todo, str(count.current), str(count.excluded), f"{count.seconds:.2f}"
        )
        pending = pending or count.todo > 0
    console.print(table)
    total = sum(c.todo for c in counts)
    console.print(
        f"{total} task(s) to run now; stages marked 'waiting' are planned once their upstream "
        "tasks finish."
    )


def dry_run_study(study: Study, console: Console) -> int:
    """``run --dry-run``: list the dataset, plan every stage, print task counts (no writes)."""
    dataset = discover(
        study.dataset_url, study.tasks, study.select("subjects"), study.select("sessions")
    )
    print_plan(plan_stages(PlanContext(study, dataset, Store(study.store_url))), console)
    return 0
