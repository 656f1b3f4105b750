"""Generic planning: a stage's units -> tasks, keyed by content, skipping what is done.

A stage adapter (``infra/stages_*.py``) lists its *units* (run, run x chunk, session...) with the
keys of the upstream records each depends on; :func:`plan_units` turns them into task specs.
A unit's task key hashes the stage name, stage version, the stage's parameters and its upstream
keys, so a changed parameter or a re-ingested run invalidates exactly the downstream tasks.
Outputs go under ``work/<stage>/<key16>/`` (:func:`work_prefix`): keyed by content, never
overwritten in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infra.bids import Dataset
from infra.manifest import Manifest, TaskRecord, content_key
from infra.storage import Store
from infra.study import Study
from infra.tasks import Handler, TaskSpec
from processing.stages import Stage


@dataclass
class PlanContext:
    """What planning needs: the study, the dataset listing, the store and current records."""

    study: Study | None
    dataset: Dataset
    store: Store
    retries: int = 2
    force: bool = False
    records: dict[str, dict[str, TaskRecord]] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)  # per-plan cache (e.g. a run's blocks)
    _done: dict[str, dict[str, TaskRecord]] = field(default_factory=dict, repr=False)

    def load(self, stage: str) -> dict[str, TaskRecord]:
        """Records of ``stage`` by unit (read once, then cached)."""
        if stage not in self.records:
            manifest = Manifest(self.store)
            self.records[stage] = {r.unit: r for r in manifest.records(stage)}
        return self.records[stage]

    def done(self, stage: str) -> dict[str, TaskRecord]:
        """Records of ``stage`` in state ``done``, by unit (cached until :meth:`update`, so
        planners may call it per run; do not modify the returned mapping)."""
        if stage not in self._done:
            self._done[stage] = {u: r for u, r in self.load(stage).items() if r.state == "done"}
        return self._done[stage]

    def run_keys(self) -> list[str]:
        """Keys of the dataset's selected runs."""
        return [run.key for run in self.dataset.runs]

    def update(self, records: list[TaskRecord]) -> None:
        """Fold freshly finished records into the cache."""
        for rec in records:
            self.records.setdefault(rec.stage, {})[rec.unit] = rec
            self._done.pop(rec.stage, None)

    def param(self, dotted: str) -> Any:
        """A study parameter (schema default when absent)."""
        if self.study is None:
            from infra.study import _schema_default

            return _schema_default(dotted, None)
        return self.study.get(dotted)


@dataclass
class Unit:
    """One would-be task of a stage."""

    unit: str
    subject: str | None
    session: str | None
    upstream: dict[str, str]  # logical input -> key of the record that produced it
    payload: dict[str, Any] = field(default_factory=dict)
    excluded: str | None = None  # reason: recorded as excluded, not run


@dataclass
class StagePlan:
    """Tasks to run, records already current, and units excluded upstream."""

    stage: str
    todo: list[TaskSpec] = field(default_factory=list)
    current: list[TaskRecord] = field(default_factory=list)
    excluded: list[TaskRecord] = field(default_factory=list)


def work_prefix(stage: str, key: str) -> str:
    """Store prefix of a task's outputs: content-keyed, so old results stay valid for old keys."""
    return f"work/{stage}/{key[:16]}"


def stage_params(stage: Stage, ctx: PlanContext) -> dict[str, Any]:
    """The study parameters a stage declares, with defaults applied."""
    return {name: ctx.param(name) for name in stage.params}


def plan_units(stage: Stage, units: list[Unit], ctx: PlanContext, run: Handler) -> StagePlan:
    """Turn units into task specs, skipping those whose last record is done with the same key."""
    params = stage_params(stage, ctx)
    previous = ctx.load(stage.name)
    plan = StagePlan(stage.name)
    for unit in units:
        key = content_key(
            stage=stage.name, version=stage.version, params=params, upstream=unit.upstream
        )
        old = previous.get(unit.unit)
        record = TaskRecord(
            stage=stage.name,
            unit=unit.unit,
            key=key,
            subject=unit.subject,
            session=unit.session,
            inputs=dict(unit.upstream),
            params=params,
            code_version=stage.version,
            attempts=old.attempts if old else 0,
        )
        if unit.excluded:
            if not (old and old.state == "excluded" and old.reason == unit.excluded):
                record.state, record.reason = "excluded", unit.excluded
                plan.excluded.append(record)
            else:
                plan.current.append(old)
            continue
        if old and old.state == "done" and old.key == key and not ctx.force:
            plan.current.append(old)
            continue
        payload = {**unit.payload, "out": work_prefix(stage.name, key)}
        plan.todo.append(
            TaskSpec(stage.name, unit.unit, ctx.store.url, record, run, payload, ctx.retries)
        )
    return plan


Planner = Callable[[PlanContext], StagePlan]
