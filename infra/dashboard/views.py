"""Aggregations of manifest tasks: the overview grid, progress, ETA, throughput and workers.

Pure functions of a list of :class:`~infra.dashboard.cache.Task` (and the clock), shared by the
web dashboard and ``boldcloud status``. Nothing here reads the store.

Pending tasks: the runner writes a record when a task starts (``running``), so a stage that has
not been planned yet has no records at all. A (subject, stage) cell without records is therefore
shown as ``pending``; a subject appears once any of its tasks has a record.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.dashboard.cache import Task
from infra.manifest import STATES
from processing.stages import STAGES

STUDY_ROW = "(study)"  # row of tasks without a subject (group-level stages)
CODES = {"pending": "P", "running": "R", "done": "D", "failed": "F", "excluded": "X"}
NOT_APPLICABLE = "-"
WINDOW_S = 600.0  # throughput and ETA look at tasks finished in the last 10 minutes
ACTIVE_S = 120.0  # a study with a task finished this recently (or running) is "active"


def natural_key(label: str) -> tuple:
    """Sort ``2`` before ``10`` (and ``sub-2`` before ``sub-10``)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", label))


def stage_order(tasks: Sequence[Task], table: Sequence[str] | None = None) -> list[str]:
    """The stage table's names in order, then any other stage seen in the records."""
    names = list(table if table is not None else (s.name for s in STAGES))
    extra = sorted({t.stage for t in tasks} - set(names))
    return names + extra


def _group_stages() -> set[str]:
    return {s.name for s in STAGES if s.granularity == "group"}


def cell_state(counts: Sequence[int]) -> str:
    """State of a cell from its task counts per state (in :data:`STATES` order).

    Failed wins (it needs attention), then running, then pending; a cell is done when every
    task is done or excluded with at least one done, excluded when all are excluded, and
    pending when it has no task yet.
    """
    pending, running, done, failed, excluded = counts
    if failed:
        return "failed"
    if running:
        return "running"
    if pending or not (done or excluded):
        return "pending"
    return "done" if done else "excluded"


def overview(
    tasks: Sequence[Task],
    now: float | None = None,
    stages: Sequence[str] | None = None,
    failures: int = 10,
) -> dict[str, Any]:
    """Everything the overview page and ``boldcloud status`` show, as plain JSON-able data.

    Parameters
    ----------
    tasks : sequence of Task
        Every task of the store (:meth:`ManifestCache.tasks`).
    now : float, optional
        The clock (seconds since the epoch); injectable for tests.
    stages : sequence of str, optional
        Only these stages, in this order (default: the stage table's, then any other stage
        found in the records).
    failures : int
        How many of the most recent failures to include.

    Returns
    -------
    dict
        ``stages``; ``rows`` (per subject: ``subject``, ``cells`` a string of one state code per
        stage, P R D F X or ``-`` for not applicable, and ``counts`` [finished, total] per
        stage); ``counts`` (stage -> state -> tasks); ``totals`` (state -> tasks);
        ``progress`` (see :func:`progress_at`); ``failures`` (recent failed tasks) and
        ``failed_total``.
    """
    data, base = grid(tasks, stages, failures)
    now = time.time() if now is None else now
    return {**data, "progress": progress_at(base, now), "generated": now}


def grid(
    tasks: Sequence[Task], stages: Sequence[str] | None = None, failures: int = 10
) -> tuple[dict[str, Any], ProgressBase]:
    """The clock-independent part of :func:`overview` and what :func:`progress_at` needs.

    A server computes this once per change of the records and :func:`progress_at` per request.
    """
    names = stage_order(tasks) if stages is None else list(stages)
    column = {name: i for i, name in enumerate(names)}
    state_index = {s: i for i, s in enumerate(STATES)}
    cells: dict[str, list[list[int]]] = {}
    counts: dict[str, Counter] = {name: Counter() for name in names}
    if stages is not None:
        tasks = [t for t in tasks if t.stage in column]
    for task in tasks:
        row = cells.get(task.subject or STUDY_ROW)
        if row is None:
            row = cells[task.subject or STUDY_ROW] = [[0] * len(STATES) for _ in names]
        row[column[task.stage]][state_index.get(task.state, 0)] += 1
        counts[task.stage][task.state] += 1
    group = _group_stages()
    rows = []
    for subject in sorted(cells, key=lambda s: (s == STUDY_ROW, natural_key(s))):
        codes, finished = [], []
        for name, cell in zip(names, cells[subject], strict=True):
            applicable = (name in group) == (subject == STUDY_ROW) or sum(cell) > 0
            codes.append(CODES[cell_state(cell)] if applicable else NOT_APPLICABLE)
            finished.append([cell[2] + cell[4], sum(cell)])
        rows.append({"subject": subject, "cells": "".join(codes), "counts": finished})
    failed = sorted(
        (t for t in tasks if t.state == "failed"), key=lambda t: t.finished or 0, reverse=True
    )
    totals = Counter(t.state for t in tasks)
    data = {
        "stages": names,
        "states": list(STATES),
        "rows": rows,
        "subjects": sum(r["subject"] != STUDY_ROW for r in rows),
        "counts": {name: {s: counts[name].get(s, 0) for s in STATES} for name in names},
        "totals": {s: totals.get(s, 0) for s in STATES},
        "tasks": len(tasks),
        "failures": [
            {"task": t.task_id, "subject": t.subject, "error": t.error, "attempts": t.attempts}
            for t in failed[:failures]
        ],
        "failed_total": len(failed),
    }
    return data, progress_base(tasks, rows, names)


@dataclass
class ProgressBase:
    """Clock-independent inputs of :func:`progress_at` (see :func:`progress_base`)."""

    cells: int = 0
    complete: int = 0
    failed_cells: int = 0
    running: int = 0
    pending: int = 0
    remaining_s: float = 0.0
    remaining_tasks: float = 0.0
    finishes: list[float] = field(default_factory=list)  # sorted finish times
    durations: list[float] = field(default_factory=list)  # in the same order


def progress_base(
    tasks: Sequence[Task], rows: Sequence[dict[str, Any]], names: Sequence[str]
) -> ProgressBase:
    """Cells finished, and the remaining work in task-seconds.

    Remaining tasks are the running (counted half done) and pending ones plus, for each cell
    without records, the stage's mean tasks per planned cell; each costs its stage's mean
    duration (the overall mean for a stage that never ran). Failed cells are not remaining
    work (they need a rerun) and keep the progress below 100 %.
    """
    base = ProgressBase()
    empty: Counter = Counter()  # stage -> cells without records
    per_cell: dict[str, list[int]] = defaultdict(list)  # stage -> task counts of planned cells
    for row in rows:
        for name, code, (_, total) in zip(names, row["cells"], row["counts"], strict=True):
            if code == NOT_APPLICABLE:
                continue
            base.cells += 1
            base.complete += code in "DX"
            base.failed_cells += code == "F"
            if total:
                per_cell[name].append(total)
            else:
                empty[name] += 1
    durations: dict[str, list[float]] = defaultdict(list)
    timed = []
    for task in tasks:
        if task.state == "running":
            base.running += 1
        elif task.state == "pending":
            base.pending += 1
        if task.duration_s is not None and task.state == "done":
            durations[task.stage].append(task.duration_s)
        if task.finished is not None and task.duration_s is not None:
            timed.append((task.finished, task.duration_s))
    timed.sort()
    base.finishes = [f for f, _ in timed]
    base.durations = [d for _, d in timed]
    all_durations = [d for ds in durations.values() for d in ds]
    overall = sum(all_durations) / len(all_durations) if all_durations else None
    for task in tasks:
        if task.state in ("running", "pending"):
            mean = _mean(durations.get(task.stage)) or overall or 0.0
            share = 0.5 if task.state == "running" else 1.0  # a running task is half done
            base.remaining_s += share * mean
            base.remaining_tasks += 1
    for name, n_empty in empty.items():
        tasks_per_cell = _mean(per_cell.get(name)) or 1.0
        mean = _mean(durations.get(name)) or overall or 0.0
        base.remaining_s += n_empty * tasks_per_cell * mean
        base.remaining_tasks += n_empty * tasks_per_cell
    return base


def progress_at(base: ProgressBase, now: float) -> dict[str, Any]:
    """Overall progress and an ETA from the throughput of the last :data:`WINDOW_S` seconds.

    ETA = remaining task-seconds / recent parallelism, the parallelism being the task-seconds
    finished in the window over the elapsed part of the window (from the start of the first of
    those tasks, clipped to the window). Only the tasks finished in the window are visited.
    """
    lo = now - WINDOW_S
    recent_busy, first_start = 0.0, now
    first = bisect.bisect_left(base.finishes, lo)
    for finished, duration in zip(base.finishes[first:], base.durations[first:], strict=True):
        start = max(finished - duration, lo)
        recent_busy += finished - start
        first_start = min(first_start, start)
    recent_n = len(base.finishes) - first
    last_finish = base.finishes[-1] if base.finishes else None
    elapsed = now - first_start
    parallelism = recent_busy / elapsed if recent_n and elapsed > 0 else 0.0
    active = base.running > 0 or (last_finish is not None and now - last_finish < ACTIVE_S)
    remaining = base.remaining_s
    eta = remaining / parallelism if active and parallelism > 0 and remaining > 0 else None
    return {
        "cells": base.cells,
        "complete": base.complete,
        "failed_cells": base.failed_cells,
        "fraction": base.complete / base.cells if base.cells else 0.0,
        "running": base.running,
        "pending": base.pending,
        "active": active,
        "throughput_per_min": 60.0 * recent_n / elapsed if recent_n and elapsed > 0 else 0.0,
        "parallelism": parallelism,
        "remaining_tasks": round(base.remaining_tasks),
        "eta_s": eta,
        "last_finished": last_finish,
    }


def _mean(values: Sequence[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``12 min``, ``3 h 05 min`` or ``-``."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(seconds // 60), 60)
    return f"{hours} h {minutes:02d} min"


def cluster(tasks: Sequence[Task], now: float | None = None, bins: int = 40) -> dict[str, Any]:
    """Workers, per-stage timings and task throughput over time, from the records' timings.

    Returns
    -------
    dict
        ``workers`` (per worker host: tasks, running, failed, busy_s, last_seen), ``stages``
        (per stage: finished, mean_s, max_s, total_s), ``throughput`` (``bin_s`` and ``bins``
        of [bin start, tasks finished]) and ``span_s``.
    """
    now = time.time() if now is None else now
    workers: dict[str, dict[str, Any]] = {}
    stages: dict[str, dict[str, Any]] = {}
    finished = []
    for task in tasks:
        if task.worker:
            w = workers.setdefault(
                task.worker,
                {"worker": task.worker, "tasks": 0, "running": 0, "failed": 0, "busy_s": 0.0},
            )
            w["tasks"] += 1
            w["running"] += task.state == "running"
            w["failed"] += task.state == "failed"
            w["busy_s"] += task.duration_s or 0.0
            seen = task.finished or task.started
            if seen is not None:
                w["last_seen"] = max(w.get("last_seen") or 0.0, seen)
        if task.finished is not None and task.duration_s is not None:
            finished.append(task.finished)
            s = stages.setdefault(
                task.stage, {"stage": task.stage, "finished": 0, "total_s": 0.0, "max_s": 0.0}
            )
            s["finished"] += 1
            s["total_s"] += task.duration_s
            s["max_s"] = max(s["max_s"], task.duration_s)
    for s in stages.values():
        s["mean_s"] = s["total_s"] / s["finished"]
    order = {name: i for i, name in enumerate(stage_order(tasks))}
    throughput: list[list[float]] = []
    bin_s = 60.0
    span = 0.0
    if finished:
        lo, hi = min(finished), max(finished)
        span = hi - lo
        bin_s = max(60.0, span / bins)
        n_bins = int(span // bin_s) + 1
        hist = [0] * n_bins
        for f in finished:
            hist[min(int((f - lo) // bin_s), n_bins - 1)] += 1
        throughput = [[lo + i * bin_s, n] for i, n in enumerate(hist)]
    return {
        "workers": sorted(workers.values(), key=lambda w: natural_key(w["worker"])),
        "stages": sorted(stages.values(), key=lambda s: order.get(s["stage"], 1e9)),
        "throughput": {"bin_s": bin_s, "bins": throughput},
        "span_s": span,
        "generated": now,
    }
