"""What the study report shows, gathered from the manifest's records (no statistics computed).

:func:`report_payload` reads the records of every stage and returns plain JSON data: the cohort
and every exclusion with its reason, the motion QC summary, one first-level design per task,
each group analysis (its inference record and group design), the ROI/clinical record, and the
parameters each stage recorded when it ran (for :func:`processing.methods.methods_paragraph`).
It serves both the ``group_report`` stage and ``boldcloud report``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from infra.manifest import TaskRecord
from infra.pipeline import PlanContext
from infra.stages.group import analyses, subjects_of
from infra.stages.roi import STUDY_UNIT
from processing.methods import DESCRIBED_STAGES

METHOD_STAGES = (*DESCRIBED_STAGES, "group_stack", "group_permutation")
MOTION_FIELDS = ("max_fd_mm", "max_rel_rms_mm", "n_fd_over_0p5", "excluded", "reason")


def _in_study(ctx: PlanContext) -> Callable[[str], bool]:
    """Whether a record's unit belongs to this study's selection (a store may hold others)."""
    runs = set(ctx.run_keys())
    labels = {a.label for a in analyses(ctx)}
    exact = runs | labels | {r.rsplit("_run-", 1)[0] for r in runs} | {STUDY_UNIT, "report"}
    exact |= {r.split("_", 1)[0] for r in runs}
    prefixes = tuple(f"{u}_" for u in runs | labels)
    return lambda unit: unit in exact or unit.startswith(prefixes)


def ran_parameters(ctx: PlanContext) -> dict[str, dict[str, list[Any]]]:
    """``{stage: {parameter: [distinct values]}}`` over the done records of each stage that ran
    for this study's runs, sessions, subjects and analyses.

    Parameters
    ----------
    ctx : PlanContext
        Planning context (its store's manifest).

    Returns
    -------
    dict
        Stages without a done record are absent; values keep their first-seen order.
    """
    out: dict[str, dict[str, list[Any]]] = {}
    relevant = _in_study(ctx)
    for name in METHOD_STAGES:
        done = [r for u, r in ctx.done(name).items() if relevant(u)]
        if not done:
            continue
        params: dict[str, dict[str, Any]] = {}
        for rec in done:
            for key, value in rec.params.items():
                params.setdefault(key, {}).setdefault(json.dumps(value, sort_keys=True), value)
        out[name] = {k: list(v.values()) for k, v in params.items()}
    return out


def _analysis(rec: TaskRecord | None, label: str, stack: TaskRecord | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"label": label, "state": "not run", "reason": None, "outputs": {}}
    if rec is not None:
        entry.update(state=rec.state, reason=rec.reason or rec.error, outputs=rec.outputs)
        entry["params"] = rec.params
    if stack is not None and stack.state == "done":
        entry["design"] = stack.outputs.get("design")
    return entry


def _cohort(ctx: PlanContext) -> dict[str, Any]:
    selected = set(subjects_of(ctx))
    return {
        u: {"state": r.state, "reason": r.reason, "failed": bool(r.outputs.get("failed")),
            "qc": r.outputs.get("qc"), "source": r.outputs.get("source")}
        for u, r in sorted(ctx.load("normalise").items())
        if u.removeprefix("sub-") in selected
    }  # fmt: skip


# stages whose records carry warnings a reader of the results should see
WARNING_STAGES = ("ingest", "design", "glm_maps", "fixed_effects", "normalise", "group_stack")
MAX_WARNINGS = 200


def _warnings(ctx: PlanContext) -> dict[str, Any]:
    """Warnings of this study's finished records, ``{"rows": [[stage, unit, text]], "more": n}``;
    identical texts of one stage and unit are shown once, and at most MAX_WARNINGS rows."""
    relevant = _in_study(ctx)
    rows = [
        [name, unit, text]
        for name in WARNING_STAGES
        for unit, rec in sorted(ctx.done(name).items())
        if relevant(unit)
        for text in dict.fromkeys(rec.warnings)
    ]
    return {"rows": rows[:MAX_WARNINGS], "more": max(0, len(rows) - MAX_WARNINGS)}


def _runs(ctx: PlanContext) -> dict[str, Any]:
    """Run and session exclusions (filter/preprocess and motion records) with reasons."""
    runs = set(ctx.run_keys())
    excluded = {u: r.reason for u, r in ctx.load("filter").items() if r.state == "excluded"}
    for u, r in ctx.load("motion").items():
        if r.state == "done" and r.outputs.get("excluded") and u not in excluded:
            excluded[u] = f"run excluded by motion: {r.outputs.get('reason')}"
    sessions = ctx.load("fixed_effects")
    chosen = {r.rsplit("_run-", 1)[0] for r in runs}
    return {
        "total": len(runs),
        "excluded": {u: why for u, why in sorted(excluded.items()) if u in runs},
        "sessions_excluded": {u: r.reason for u, r in sorted(sessions.items())
                              if r.state == "excluded" and u in chosen},
    }  # fmt: skip


def _motion(ctx: PlanContext) -> list[dict[str, Any]]:
    runs = set(ctx.run_keys())
    rows = []
    for unit, rec in sorted(ctx.done("motion").items()):
        if unit in runs:
            rows.append({"run": unit, **{k: rec.outputs.get(k) for k in MOTION_FIELDS}})
    return rows


def _designs(ctx: PlanContext) -> list[dict[str, Any]]:
    """The first run's first-level design plot per task (every run has one in derivatives/)."""
    by_task: dict[str, dict[str, Any]] = {}
    runs = set(ctx.run_keys())
    for unit, rec in sorted(ctx.done("design").items()):
        if unit not in runs:
            continue
        task = next((p[5:] for p in unit.split("_") if p.startswith("task-")), "")
        entry = by_task.setdefault(task, {"task": task, "run": unit, "plot": None, "n_runs": 0})
        entry["n_runs"] += 1
        if entry["plot"] is None and rec.outputs.get("plot"):
            entry.update(run=unit, plot=rec.outputs["plot"], columns=rec.outputs.get("columns"))
    return list(by_task.values())


def _facts(ctx: PlanContext, shown: list[dict[str, Any]], roi: dict[str, Any]) -> dict[str, Any]:
    done = [a for a in shown if a["state"] == "done"]
    spaces = {r.outputs.get("space") for r in ctx.done("normalise").values()} - {None}
    template = " / ".join(sorted(spaces))
    coarse: list[float] = []
    if done and template:
        step = np.linalg.norm(np.asarray(done[0]["outputs"]["affine"])[:3, 0])
        template += f" {step:g} mm"
        grids = {v for r in ctx.done("normalise").values() for k, v in r.outputs.items()
                 if k.startswith("registration_mm") and v is not None}  # fmt: skip
        coarse = sorted(float(v) for v in grids if float(v) > step + 1e-6)
    sessions = [s for r in ctx.done("normalise").values()
                for s in r.outputs.get("sessions", {}).values()]  # fmt: skip
    exhaustive = sorted({(a["outputs"]["n"], a["outputs"]["inference"]["n_permutations"])
                         for a in done if a["outputs"]["inference"].get("exhaustive")})  # fmt: skip
    inference = [a["outputs"]["inference"] for a in done]
    return {
        "template": template,
        "coarse_registration_mm": coarse,
        "variance_propagated": bool(sessions)
        and all(s.get("noise_lag1") is not None for s in sessions),
        "paired": any(a["outputs"]["analysis"].get("kind") == "paired" for a in done),
        "exhaustive": [list(pair) for pair in exhaustive],
        "row_permutations": sum(i.get("rearrangement") == "rows" for i in inference),
        "within_blocks": sum(bool(i.get("exchangeability_blocks")) for i in inference),
        "coordinates": sum(r.get("source") == "study file" for r in roi.get("rois", [])),
    }


def report_payload(ctx: PlanContext) -> dict[str, Any]:
    """Everything the report shows, from the records in ``ctx``'s store.

    Parameters
    ----------
    ctx : PlanContext
        Planning context: the study, its dataset listing and the store.

    Returns
    -------
    dict
        ``study``, ``subjects``, ``runs``, ``warnings``, ``motion``, ``designs``, ``analyses``,
        ``roi``,
        ``ran`` (:func:`ran_parameters`), ``facts`` and ``software`` (versions recorded by
        ``group_roi``, or None). Unfinished parts are marked, never computed.
    """
    inference, stacks = ctx.load("group_inference"), ctx.load("group_stack")
    shown = [_analysis(inference.get(a.label), a.label, stacks.get(a.label)) for a in analyses(ctx)]
    roi_rec = ctx.load("group_roi").get(STUDY_UNIT)
    if roi_rec is not None and roi_rec.state == "done":
        roi = roi_rec.outputs
    else:
        reason = roi_rec.reason or roi_rec.error if roi_rec is not None else None
        roi = {"reason": reason or "the group_roi stage has not finished"}
    return {
        "study": ctx.study.name if ctx.study is not None else "study",
        "subjects": _cohort(ctx),
        "runs": _runs(ctx),
        "warnings": _warnings(ctx),
        "motion": _motion(ctx),
        "designs": _designs(ctx),
        "analyses": shown,
        "roi": roi,
        "ran": ran_parameters(ctx),
        "facts": _facts(ctx, shown, roi),
        "software": roi.get("software"),
    }


__all__ = ["ran_parameters", "report_payload"]
