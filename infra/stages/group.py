"""Engine side of the group level: stack subjects, fit per spatial block, permute in batches.

Stages (``processing.stages``), one analysis = one Dataset node x first-level contrast [x
session] (:mod:`infra.stages.group_model`):

* ``group_stack`` (analysis): which subjects enter is decided here from the manifest (subjects
  whose ``normalise`` was excluded or failed QC, sessions excluded upstream and undefined
  contrasts stay out and are listed with the reason); their MNI effect and variance maps (for a
  paired analysis the subject-level post - pre difference and summed variance) are stacked into
  Zarr arrays ``(subject, z, y, x)`` chunked ``(N, 16, 32, 32)``, with the mask of voxels where
  every subject has data. Fewer than 3 usable subjects: the analysis is recorded ``excluded``.
* ``group_fit`` (analysis x spatial block): FLAME1 (default) or OLS of the block
  (``processing.group.flame``), plus the OLS t that permutation inference uses.
* ``group_permutation`` (analysis x batch of permutations): ``permutation_batch`` on the whole
  in-mask data (``(N, V)``, a few tens of MB) for each side; only per-permutation maxima are
  written back (a small JSON file).

``group_inference`` (:mod:`infra.stages.group_inference`) then joins blocks and batches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from infra.arrays import array_attrs, read_array, write_array
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import _slices, _slices_json, run_model, spatial_blocks
from infra.stages.group_model import GroupAnalysis, group_analyses
from infra.stages.statmaps import session_groups
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.group.designs import (
    MIN_SUBJECTS,
    GroupDesign,
    design_from_spec,
    paired_differences,
)
from processing.group.flame import data_mask, flame1, ols
from processing.group.permutation import make_permutations, permutation_batch
from processing.group.tfce import tfce_step
from processing.stages import stage

STACK_CHUNKS = (16, 32, 32)  # spatial chunk of the stacked arrays (all subjects per chunk)
FIT_BLOCK = (32, 64, 64)  # voxels per group_fit task: whole storage chunks, ~130k voxels
SIDES = ("positive", "negative")


# ---------------------------------------------------------------- analyses and subjects
def analyses(ctx: PlanContext) -> list[GroupAnalysis]:
    """The study's group analyses (cached per plan)."""
    if "group_analyses" not in ctx.memo:
        model, _ = run_model(ctx)
        sessions = sorted({_entities(k).get("ses") for k in session_groups(ctx)}, key=str)
        chosen = ctx.study.select("sessions") if ctx.study is not None else None
        if chosen:
            sessions = [s for s in chosen if s in sessions] or sessions
        first_level = [c.name for c in model.contrasts if c.test == "t"]
        ctx.memo["group_analyses"] = group_analyses(
            ctx.param("model"),
            _tasks(ctx),
            sessions or [None],
            first_level,
            ctx.param("boldcloud.group_level.contrasts"),
        )
    return ctx.memo["group_analyses"]


def _tasks(ctx: PlanContext) -> list[str]:
    if ctx.study is not None:
        return ctx.study.tasks
    return sorted({_entities(k)["task"] for k in session_groups(ctx)})


def _entities(session_key: str) -> dict[str, str]:
    return dict(part.split("-", 1) for part in session_key.split("_"))


def _session_key(subject: str, session: str | None, task: str) -> str:
    parts = [f"sub-{subject}", *([f"ses-{session}"] if session else []), f"task-{task}"]
    return "_".join(parts)


def subjects_of(ctx: PlanContext) -> list[str]:
    """Labels of every subject with selected runs, sorted."""
    return sorted({_entities(k)["sub"] for k in session_groups(ctx)})


def inclusion(
    ctx: PlanContext, analysis: GroupAnalysis
) -> tuple[dict[str, dict[str, Any]], dict[str, str]] | None:
    """``(included, excluded)`` for an analysis, or None while a subject's normalise is unfinished.

    ``included``: subject -> {session: {"effect", "variance", "mask", "mean", "session_key"}};
    ``excluded``: subject -> reason.
    """
    normalised = ctx.load("normalise")
    fixed = ctx.load("fixed_effects")
    groups = session_groups(ctx)
    included: dict[str, dict[str, Any]] = {}
    excluded: dict[str, str] = {}
    for subject in subjects_of(ctx):
        if not any(_entities(k).get("task") == analysis.task for k in groups if
                   _entities(k)["sub"] == subject):  # fmt: skip
            continue
        rec = normalised.get(f"sub-{subject}")
        if rec is None or rec.state not in ("done", "excluded"):
            return None
        if rec.state == "excluded":
            excluded[subject] = f"normalise excluded: {rec.reason}"
            continue
        if rec.outputs.get("failed"):
            excluded[subject] = rec.reason or "registration failed QC"
            continue
        maps, why = {}, None
        for session in analysis.sessions:
            key = _session_key(subject, session, analysis.task)
            out = rec.outputs.get("sessions", {}).get(key)
            where = f"ses-{session}" if session else key
            if out is None:
                fe = fixed.get(key)
                if key not in groups:
                    why = f"{where}: no such session in the dataset selection"
                elif fe is not None and fe.state == "excluded":
                    why = f"{where} excluded: {fe.reason}"
                else:
                    why = f"{where}: no normalised maps"
                break
            effect = out["maps"].get(f"{analysis.contrast}:effect")
            variance = out["maps"].get(f"{analysis.contrast}:variance")
            if effect is None or variance is None:
                why = f"{where}: contrast {analysis.contrast} is undefined in every usable run"
                break
            maps[session or ""] = {
                "effect": effect,
                "variance": variance,
                "mask": out["mask"],
                "mean": out["mean"],
                "session_key": key,
            }
        if why:
            excluded[subject] = why
        else:
            included[subject] = maps
    return included, excluded


def _participant_table(ctx: PlanContext, subjects: list[str], columns: list[str]) -> dict:
    """participants.tsv columns for ``subjects`` (NaN where missing), as plain lists."""
    if not columns:
        return {}
    table = ctx.dataset.participants
    if table is None:
        raise ValueError(
            f"the group model uses participants.tsv columns {columns}, but the dataset has no "
            "participants.tsv"
        )
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise ValueError(
            f"group model columns {unknown} are not in participants.tsv (columns: "
            f"{list(table.columns)})"
        )
    rows = table.set_index(table["participant_id"].astype(str))
    out = {}
    for col in columns:
        values = [rows[col].get(f"sub-{s}") if f"sub-{s}" in rows.index else None for s in subjects]
        out[col] = [None if v is None or v != v else v for v in values]
    return out


# ---------------------------------------------------------------- group_stack
def plan_group_stack(ctx: PlanContext) -> StagePlan:
    """One stacking task per analysis once every subject's normalise is final."""
    units = []
    vg_column = ctx.param("boldcloud.group_level.variance_groups")
    for analysis in analyses(ctx):
        found = inclusion(ctx, analysis)
        if found is None:
            continue  # some subject is still being normalised (or failed: rerun first)
        included, excluded = found
        subjects = sorted(included)
        if len(subjects) < MIN_SUBJECTS:
            listed = "; ".join(f"sub-{s}: {r}" for s, r in sorted(excluded.items()))
            why = (
                f"{len(subjects)} usable subject(s) {['sub-' + s for s in subjects]}, a group "
                f"model needs at least {MIN_SUBJECTS}"
                + (f" (left out: {listed})" if listed else "")
            )
            units.append(Unit(analysis.label, None, None, {}, {}, excluded=why))
            continue
        columns = list(analysis.covariates) + ([vg_column] if vg_column else [])
        table = _participant_table(ctx, subjects, columns)
        normalised = ctx.load("normalise")
        upstream = {
            "normalise": content_key(keys=[normalised[f"sub-{s}"].key for s in subjects]),
            "excluded": content_key(excluded=excluded),
            "analysis": content_key(a=analysis.to_json()),
            "participants": content_key(table=table),
        }
        payload = {
            "analysis": analysis.to_json(),
            "included": {s: included[s] for s in subjects},
            "excluded": excluded,
            "table": table,
            "variance_groups": vg_column,
        }
        units.append(Unit(analysis.label, None, None, upstream, payload))
    return plan_units(stage("group_stack"), units, ctx, run_group_stack)


def _read_pair(store: Store, maps: dict, analysis: GroupAnalysis) -> tuple[np.ndarray, ...]:
    """A subject's (effect, variance, mask) after combining its sessions."""
    parts = [maps[s or ""] for s in analysis.sessions]
    effects = [read_array(store, m["effect"]).astype(np.float64) for m in parts]
    variances = [read_array(store, m["variance"]).astype(np.float64) for m in parts]
    mask = np.logical_and.reduce([read_array(store, m["mask"]).astype(bool) for m in parts])
    if analysis.kind == "paired":
        (post, pre), (v_post, v_pre) = effects, variances
        if analysis.weights[0] < 0:
            post, pre, v_post, v_pre = pre, post, v_pre, v_post
        diff, var = paired_differences(pre[None], v_pre[None], post[None], v_post[None])
        return diff[0], var[0], mask
    effect = sum(w * e for w, e in zip(analysis.weights, effects, strict=True))
    variance = sum(w * w * v for w, v in zip(analysis.weights, variances, strict=True))
    return effect, variance, mask


def run_group_stack(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Stack the included subjects' maps as (subject, z, y, x) Zarr arrays; find the group mask."""
    store, p = Store(spec.store_url), spec.payload
    analysis = GroupAnalysis.from_json(p["analysis"])
    subjects = sorted(p["included"])
    spec_design = {
        "type": "one_sample" if analysis.kind == "one_sample" else "paired",
        "covariates": list(analysis.covariates),
        "variance_groups": p["variance_groups"],
    }
    design = design_from_spec(spec_design, subjects, _numeric(p["table"], analysis.covariates))
    excluded = dict(p["excluded"])
    for subject in design.dropped:
        excluded[subject] = f"missing value of a group covariate {list(analysis.covariates)}"
        record.warnings.append(f"sub-{subject} dropped: missing covariate value")
    subjects = list(design.subjects)
    first = p["included"][subjects[0]][analysis.sessions[0] or ""]["effect"]
    attrs = array_attrs(store, first)
    affine = np.asarray(attrs["affine"])
    shape = tuple(int(n) for n in read_array(store, first).shape)
    effect = np.zeros((len(subjects), *shape), dtype=np.float32)
    variance = np.zeros_like(effect)
    masks = np.ones(shape, dtype=bool)
    for i, subject in enumerate(subjects):
        e, v, m = _read_pair(store, p["included"][subject], analysis)
        if e.shape != shape:
            raise ValueError(
                f"sub-{subject}: maps on grid {e.shape}, others on {shape}; every subject must be "
                "normalised to the same template grid"
            )
        effect[i], variance[i] = e, v
        masks &= m
    flat_e = effect.reshape(len(subjects), -1)
    flat_v = variance.reshape(len(subjects), -1)
    mask = (data_mask(flat_e, flat_v).reshape(shape) & masks).astype(bool)
    chunks = (len(subjects), *STACK_CHUNKS)
    out_attrs = {"affine": affine.tolist(), "space": attrs.get("space"),
                 "subjects": [f"sub-{s}" for s in subjects]}  # fmt: skip
    dims = ("subject", "z", "y", "x")
    keys = {
        "effect": write_array(store, f"{p['out']}/effect", effect, dims, chunks, out_attrs),
        "variance": write_array(store, f"{p['out']}/variance", variance, dims, chunks, out_attrs),
        "mask": write_array(store, f"{p['out']}/mask", mask.astype(np.uint8), dims[1:],
                            STACK_CHUNKS, out_attrs),
    }  # fmt: skip
    blocks = [(label, _slices_json(sel)) for label, sel in spatial_blocks(mask, FIT_BLOCK)]
    if not mask.any():
        raise ValueError("no voxel where every included subject has data: check the masks")
    return {
        **keys,
        "analysis": analysis.to_json(),
        "subjects": subjects,
        "excluded": excluded,
        "n": len(subjects),
        "voxels": int(mask.sum()),
        "shape": list(shape),
        "affine": affine.tolist(),
        "space": attrs.get("space"),
        "blocks": blocks,
        "design": _design_json(design),
    }


def _numeric(table: dict, covariates: tuple[str, ...]) -> dict:
    out = dict(table)
    for name in covariates:
        out[name] = [np.nan if v is None else float(v) for v in table[name]]
    return out


def _design_json(design: GroupDesign) -> dict[str, Any]:
    return {
        "matrix": design.matrix.tolist(),
        "columns": list(design.columns),
        "contrast": design.contrast("mean").tolist(),
        "variance_groups": design.variance_groups.tolist(),
        "group_names": list(design.group_names),
        "kind": design.kind,
        "subjects": list(design.subjects),
    }


def design_of(obj: dict[str, Any]) -> tuple[GroupDesign, np.ndarray]:
    """The GroupDesign and contrast weights stored by ``group_stack``."""
    design = GroupDesign(
        np.asarray(obj["matrix"], dtype=np.float64),
        tuple(obj["columns"]),
        {"mean": np.asarray(obj["contrast"], dtype=np.float64)},
        np.asarray(obj["variance_groups"], dtype=np.int64),
        tuple(obj["group_names"]),
        obj["kind"],
        tuple(obj["subjects"]),
    )
    return design, np.asarray(obj["contrast"], dtype=np.float64)


# ---------------------------------------------------------------- group_fit
def plan_group_fit(ctx: PlanContext) -> StagePlan:
    """One FLAME1/OLS task per analysis and spatial block of its group mask."""
    stacks = ctx.load("group_stack")
    estimator = ctx.param("boldcloud.group_level.estimator")
    units = []
    for analysis in analyses(ctx):
        rec = stacks.get(analysis.label)
        if rec is None or rec.state not in ("done", "excluded"):
            continue
        for label, sel in rec.outputs.get("blocks", []) if rec.state == "done" else [("", [])]:
            unit = f"{analysis.label}_block-{label}" if label else analysis.label
            if rec.state == "excluded":
                units.append(Unit(unit, None, None, {}, {}, excluded=rec.reason))
                continue
            payload = {"stack": rec.outputs, "block": sel, "estimator": estimator}
            upstream = {"group_stack": rec.key, "block": label}
            units.append(Unit(unit, None, None, upstream, payload))
    return plan_units(stage("group_fit"), units, ctx, run_group_fit)


FIT_MAPS = ("effect", "variance", "t", "z", "ols_t", "mask")


def run_group_fit(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """FLAME1 or OLS of one block; writes one (map, z, y, x) float32 array of the block."""
    store, p = Store(spec.store_url), spec.payload
    st, sel = p["stack"], _slices(p["block"])
    design, contrast = design_of(st["design"])
    effect = read_array(store, st["effect"], (slice(None), *sel)).astype(np.float64)
    variance = read_array(store, st["variance"], (slice(None), *sel)).astype(np.float64)
    mask = read_array(store, st["mask"], sel).astype(bool)
    n, block_shape = effect.shape[0], mask.shape
    y, s, m = effect.reshape(n, -1), variance.reshape(n, -1), mask.ravel()
    if p["estimator"] == "ols":
        fit = ols(y, design, contrast, mask=m)
    else:
        fit = flame1(y, s, design, contrast, mask=m)
    simple = ols(y, design, contrast, mask=m)
    stats = [fit.effect, fit.variance, fit.t, fit.z, simple.t, m.astype(np.float64)]
    stats += list(fit.between_variance)
    names = [*FIT_MAPS, *(f"between_{g}" for g in design.group_names)]
    maps = np.stack([np.where(m, v, 0.0) for v in stats]).astype(np.float32)
    key = write_array(store, f"{p['out']}/maps", maps.reshape(len(names), *block_shape),
                      ("map", "z", "y", "x"))  # fmt: skip
    return {
        "maps": key,
        "names": names,
        "block": p["block"],
        "dof": fit.dof,
        "ols_dof": simple.dof,
        "iterations": fit.iterations,
        "voxels": int(m.sum()),
    }


# ---------------------------------------------------------------- group_permutation
def permutation_plan(n: int, n_perm: int, batch_size: int) -> tuple[int, int, bool]:
    """``(n_total, n_batches, exhaustive)`` of sign flipping ``n`` rows."""
    available = 2**n
    total = available if available <= n_perm else int(n_perm)
    return total, max(1, math.ceil(total / batch_size)), available <= n_perm


def plan_group_permutation(ctx: PlanContext) -> StagePlan:
    """Batches of permutations per analysis (only with ``inference.method: permutation``)."""
    stacks = ctx.load("group_stack")
    method = ctx.param("boldcloud.inference.method")
    params = {
        "n_permutations": int(ctx.param("boldcloud.inference.n_permutations")),
        "batch_size": int(ctx.param("boldcloud.inference.batch_size")),
        "seed": int(ctx.param("boldcloud.inference.seed")),
        "z": float(ctx.param("boldcloud.inference.cluster_forming_z")),
        "two_sided": bool(ctx.param("boldcloud.inference.two_sided")),
        "tfce": ctx.param("boldcloud.inference.statistic") == "tfce",
    }
    units = []
    for analysis in analyses(ctx):
        rec = stacks.get(analysis.label)
        if rec is None or rec.state not in ("done", "excluded"):
            continue
        if rec.state == "excluded" or method != "permutation":
            why = rec.reason if rec.state == "excluded" else f"inference.method is {method}"
            units.append(Unit(analysis.label, None, None, {}, {}, excluded=why))
            continue
        _, n_batches, _ = permutation_plan(
            rec.outputs["n"], params["n_permutations"], params["batch_size"]
        )
        for b in range(n_batches):
            payload = {"stack": rec.outputs, "batch": b, "n_batches": n_batches, **params}
            upstream = {"group_stack": rec.key, "batch": f"{b}/{n_batches}"}
            units.append(Unit(f"{analysis.label}_batch-{b:04d}", None, None, upstream, payload))
    return plan_units(stage("group_permutation"), units, ctx, run_group_permutation)


def in_mask_data(store: Store, stack: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(data (N, V), mask (i, j, k))``: the stacked effects of the in-mask voxels in NIfTI
    voxel order (``np.nonzero`` of the (i, j, k) mask), as the permutation kernels want."""
    mask_ijk = read_array(store, stack["mask"]).astype(bool).T
    effect = read_array(store, stack["effect"])
    data = np.stack([volume.T[mask_ijk] for volume in effect]).astype(np.float64)
    return data, mask_ijk


def run_group_permutation(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Maxima (t, cluster extent and mass, TFCE) of one batch of sign flips, per side."""
    store, p = Store(spec.store_url), spec.payload
    design, contrast = design_of(p["stack"]["design"])
    data, mask = in_mask_data(store, p["stack"])
    perms = make_permutations(
        design.n_subjects, p["n_permutations"], kind="sign", seed=p["seed"],
        batch=p["batch"], n_batches=p["n_batches"],
    )  # fmt: skip
    sides = SIDES if p["two_sided"] else SIDES[:1]
    observed = ols(data, design, contrast).t if p["tfce"] else None
    maxima = {}
    for side in sides:
        c = contrast if side == "positive" else -contrast
        dh = None
        if observed is not None:
            dh = tfce_step(observed if side == "positive" else -observed)
        result = permutation_batch(data, design, c, perms, mask, z_threshold=p["z"], tfce_dh=dh)
        maxima[side] = {k: np.asarray(v).tolist() for k, v in result.items()}
        if dh is not None:
            maxima[side]["tfce_dh"] = dh
    key = f"{p['out']}/maxima.json"
    store.write_json(key, maxima)
    return {"maxima": key, "batch": p["batch"], "n_batches": p["n_batches"],
            "n_total": perms.n_total, "exhaustive": perms.exhaustive,
            "permutations": int(perms.indices.size)}  # fmt: skip


__all__ = [
    "analyses",
    "design_of",
    "in_mask_data",
    "inclusion",
    "plan_group_fit",
    "plan_group_permutation",
    "plan_group_stack",
]
