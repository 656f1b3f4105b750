"""Engine side of the group level: the study's analyses, fit per spatial block, permute in batches.

Stages (``processing.stages``), one analysis = one Dataset node contrast x first-level contrast
[x session] (:mod:`processing.group.model`):

* ``group_stack`` (analysis, :mod:`infra.stages.group_stack`): included subjects, the design,
  and the stacked ``(subject, z, y, x)`` effect and variance arrays.
* ``group_fit`` (analysis x spatial block): FLAME1 (default) or OLS of the block
  (``processing.group.flame``), plus the OLS t that permutation inference uses.
* ``group_permutation`` (analysis x batch of permutations): ``permutation_batch`` on the whole
  in-mask data (``(N, V)``, a few tens of MB) for each side, sign flips or row permutations
  (Freedman-Lane) as the design's ``permutation`` says; only per-permutation maxima are written
  back (a small JSON file).

``group_inference`` (:mod:`infra.stages.group_inference`) then joins blocks and batches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from infra.arrays import read_array, write_array
from infra.manifest import TaskRecord
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import _slices, run_model
from infra.stages.statmaps import session_groups
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.group.designs import GroupDesign
from processing.group.flame import flame1, ols
from processing.group.model import GroupAnalysis, group_analyses
from processing.group.permutation import make_permutations, permutation_batch
from processing.group.rearrangements import count_rearrangements
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


def design_of(obj: dict[str, Any]) -> tuple[GroupDesign, np.ndarray]:
    """The GroupDesign and contrast weights stored by ``group_stack``."""
    contrast = np.asarray(obj["contrast"], dtype=np.float64)
    design = GroupDesign(
        np.asarray(obj["matrix"], dtype=np.float64),
        tuple(obj["columns"]),
        {obj.get("contrast_name", "mean"): contrast},
        np.asarray(obj["variance_groups"], dtype=np.int64),
        tuple(obj["group_names"]),
        obj["kind"],
        tuple(obj["subjects"]),
    )
    return design, contrast


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
def permutation_plan(stack: dict, n_perm: int, batch_size: int) -> tuple[int, int, bool]:
    """``(n_total, n_batches, exhaustive)`` of the rearrangements of a ``group_stack`` record's
    outputs (sign flips or row permutations within its exchangeability blocks)."""
    design, _ = design_of(stack["design"])
    kind = stack["design"].get("permutation", "sign")
    blocks = exchangeability_blocks(design, kind)
    available = count_rearrangements(design.n_subjects, kind, blocks)
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
            rec.outputs, params["n_permutations"], params["batch_size"]
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
    """Maxima (t, cluster extent and mass, TFCE) of one batch of sign flips or row
    permutations (Freedman-Lane, see ``processing.group.permutation``), per side."""
    store, p = Store(spec.store_url), spec.payload
    design, contrast = design_of(p["stack"]["design"])
    data, mask = in_mask_data(store, p["stack"])
    kind = p["stack"]["design"].get("permutation", "sign")
    blocks = exchangeability_blocks(design, kind)
    perms = make_permutations(
        design.n_subjects, p["n_permutations"], seed=p["seed"], kind=kind,
        batch=p["batch"], n_batches=p["n_batches"], blocks=blocks,
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
    block_names = None if blocks is None else list(design.group_names)
    return {"maxima": key, "batch": p["batch"], "n_batches": p["n_batches"],
            "n_total": perms.n_total, "exhaustive": perms.exhaustive,
            "permutations": int(perms.indices.size),
            "exchangeability_blocks": block_names}  # fmt: skip


def exchangeability_blocks(design: GroupDesign, kind: str) -> np.ndarray | None:
    """Row permutations stay within the design's variance groups (randomise's ``-e`` blocks):
    rows with different error variances are not exchangeable. ``None`` for sign flips or a
    single group."""
    if kind != "rows" or len(design.group_names) < 2:
        return None
    return design.variance_groups


__all__ = [
    "analyses",
    "design_of",
    "exchangeability_blocks",
    "in_mask_data",
    "permutation_plan",
    "plan_group_fit",
    "plan_group_permutation",
    "subjects_of",
]
