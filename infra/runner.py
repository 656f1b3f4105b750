"""Run the stage table: plan each stage, execute its tasks, record everything, summarise.

Stages run in table order with a barrier between them (a stage plans from its upstream
records, so it starts once they are final).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from infra.bids import Dataset, discover
from infra.incremental import Changes, snapshot_sources
from infra.lease import Lease, take_lease
from infra.manifest import Manifest, TaskRecord
from infra.pipeline import PlanContext
from infra.stages import ADAPTERS
from infra.storage import Store
from infra.study import Study
from infra.tasks import TaskSpec, execute
from processing.stages import STAGES


@dataclass
class StageReport:
    """What one stage did in this invocation."""

    stage: str
    ran: list[TaskRecord] = field(default_factory=list)
    up_to_date: list[TaskRecord] = field(default_factory=list)
    excluded: list[TaskRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskRecord]:
        return [r for r in self.ran if r.state == "failed"]

    @property
    def done(self) -> list[TaskRecord]:
        return [r for r in self.ran if r.state == "done"]


def execute_specs(
    specs: list[TaskSpec], executor, console: Console, label: str
) -> list[TaskRecord]:
    """Run specs on ``executor`` with a progress bar; a lost worker becomes a failed record."""
    if not specs:
        return []
    keys = [f"{s.task_id}-{uuid.uuid4().hex[:8]}" for s in specs]
    records = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(label, total=len(specs))
        for spec, result in executor.map_unordered(execute, specs, keys):
            if isinstance(result, BaseException):
                result = _lost(spec, result)
            records.append(result)
            progress.advance(bar)
    return records


def _lost(spec: TaskSpec, err: BaseException) -> TaskRecord:
    record = spec.record
    record.attempts = max(record.attempts, 1)
    record.mark_finished("failed", f"{type(err).__name__}: {err} (worker lost or cancelled)")
    Manifest(Store(spec.store_url)).put(record)
    return record


def run_pipeline(
    ctx: PlanContext,
    executor,
    console: Console,
    stages: list[str] | None = None,
    keep: Callable[[TaskRecord], bool] | None = None,
) -> list[StageReport]:
    """Plan and run each stage of the table (or only ``stages``), in order; with ``keep``, only
    planned tasks it accepts run (``run --new-only``: new subjects and the group stages)."""
    manifest = Manifest(ctx.store)
    reports = []
    for entry in STAGES:
        if stages is not None and entry.name not in stages:
            continue
        if entry.name not in ADAPTERS:
            raise RuntimeError(f"stage {entry.name!r} has no engine adapter in infra/stages")
        plan = ADAPTERS[entry.name](ctx)
        if keep is not None:
            plan.todo = [s for s in plan.todo if keep(s.record)]
            plan.excluded = [r for r in plan.excluded if keep(r)]
        for record in plan.excluded:
            manifest.put(record)
        label = f"{entry.name} ({len(plan.todo)} tasks)"
        ran = execute_specs(plan.todo, executor, console, label)
        ctx.update(ran + plan.excluded)
        reports.append(StageReport(entry.name, ran, plan.current, plan.excluded))
    manifest.write_index()
    return reports


def run_ingest(
    dataset: Dataset,
    store: Store,
    executor,
    console: Console,
    retries: int = 2,
    force: bool = False,
) -> StageReport:
    """Only the ingest stage, for every run of ``dataset`` (``boldcloud ingest``)."""
    ctx = PlanContext(None, dataset, store, retries=retries, force=force)
    return run_pipeline(ctx, executor, console, stages=["ingest"])[0]


def print_summary(reports: list[StageReport], store: Store, console: Console) -> int:
    """A table per stage and the failures; returns the process exit code."""
    table = Table(title=f"boldcloud: {store.url}")
    for column in ("stage", "ran ok", "up to date", "excluded", "failed"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    for rep in reports:
        failed = f"[red]{len(rep.failed)}[/]" if rep.failed else "0"
        excluded = len(rep.excluded) + sum(r.state == "excluded" for r in rep.up_to_date)
        table.add_row(
            rep.stage, str(len(rep.done)), str(len(rep.up_to_date)), str(excluded), failed
        )
    console.print(table)
    failed = [r for rep in reports for r in rep.failed]
    for rec in failed:
        console.print(f"[red]FAILED[/] {rec.task_id} after {rec.attempts} attempt(s): {rec.error}")
    for rep in reports:
        for unit, reason in sorted({(_run_unit(r.unit), r.reason) for r in rep.excluded}):
            console.print(f"[yellow]excluded[/] {rep.stage}/{unit}: {reason}")
        for rec in rep.done:
            for warning in rec.warnings:
                console.print(f"[yellow]warning[/] {rec.task_id}: {warning}")
    if failed:
        console.print(
            f"{len(failed)} task(s) failed; fix the inputs named above and run again "
            "(finished tasks are not redone)."
        )
    return 1 if failed else 0


def _run_unit(unit: str) -> str:
    """The run a chunk or block unit belongs to."""
    return unit.split("_chunk-")[0].split("_block-")[0]


def run_study(
    study: Study,
    executor,
    console: Console,
    retries: int = 2,
    stages: list[str] | None = None,
    lease: Lease | None = None,
    changes: Changes | None = None,
) -> int:
    """Run every stage of the table (or only ``stages``) for ``study``; returns the exit code.

    Holds the study's run lease (:mod:`infra.lease`; raises ``LeaseHeld`` when another run has
    it) unless the caller passes the ``lease`` it holds. With ``changes`` (``run --new-only``),
    only new or changed subjects' tasks and the group stages run. Afterwards the source snapshot
    (``manifest/sources.json``) is rewritten for the next ``--new-only``.
    """
    store = Store(study.store_url)
    with nullcontext(lease) if lease else take_lease(store, console):
        dataset = changes.dataset if changes else None
        dataset = dataset or discover(
            study.dataset_url, study.tasks, study.select("subjects"), study.select("sessions")
        )
        for problem in dataset.problems:
            console.print(f"[yellow]skipped[/] {problem.file}: {problem.message}", highlight=False)
        store.write_bytes("study.yaml", Path(study.path).read_bytes())
        ctx = PlanContext(study, dataset, store, retries=retries)
        _record_cluster(store, executor)
        keep = changes.keep if changes else None
        reports = run_pipeline(ctx, executor, console, stages, keep)
        code = print_summary(reports, store, console)
        if stages is None:
            ran = [r for rep in reports for r in rep.ran]
            snapshot_sources(store, dataset, changes, ran, console)
    console.print(f"Results are in {store.full_url('')} (manifest: {store.full_url('manifest')})")
    return code


def _record_cluster(store: Store, executor) -> None:
    """Tell the dashboard's cluster page where this run's Dask dashboard is."""
    from infra.dashboard.pages import record_cluster

    client = getattr(executor, "client", None)
    link = getattr(client, "dashboard_link", None) if client is not None else None
    record_cluster(store, link, getattr(executor, "description", type(executor).__name__))
