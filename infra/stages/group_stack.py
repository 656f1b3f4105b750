"""Engine side of ``group_stack``: which subjects enter each group analysis, its design, and the
stacked ``(subject, z, y, x)`` effect and variance arrays.

Which subjects enter is decided at planning from the manifest (subjects whose ``normalise`` was
excluded or failed QC, sessions excluded upstream and undefined contrasts stay out and are
listed with the reason); fewer than 3 usable subjects: the analysis is recorded ``excluded``.
The task builds the design from the Dataset node's ``Model.X`` and the participants' variables
(:mod:`processing.group.model_design`; subjects missing a value are dropped, listed in
``excluded`` and in the record's ``warnings``), checks that every subject's maps share one grid,
and stacks their MNI maps (for a paired analysis the subject-level post - pre difference and
summed variance) chunked ``(N, 16, 32, 32)``, with the mask of voxels where every subject has
data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from infra.arrays import array_attrs, read_array, write_array
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import _slices_json, spatial_blocks
from infra.stages.group import (
    FIT_BLOCK,
    STACK_CHUNKS,
    _entities,
    _session_key,
    analyses,
    subjects_of,
)
from infra.stages.statmaps import session_groups
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.group.designs import MIN_SUBJECTS, GroupDesign, paired_differences
from processing.group.flame import data_mask
from processing.group.model import INTERCEPT, GroupAnalysis
from processing.group.model_design import model_design, variable_table
from processing.stages import stage


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


def _participant_table(ctx: PlanContext, subjects: list[str], analysis: GroupAnalysis) -> dict:
    """Dataset-level variables of the analysis (and the variance-group column) per subject."""
    columns = list(analysis.variables)
    vg_column = ctx.param("boldcloud.group_level.variance_groups")
    if vg_column and vg_column not in columns:
        columns.append(vg_column)
    if not columns:
        return {}
    ds = ctx.dataset
    try:
        return variable_table(ds.participants, ds.phenotype, subjects, columns, analysis.sessions)
    except ValueError as err:
        where = f"group analysis {analysis.label} (node {analysis.node!r})"
        raise ValueError(f"{where}: {err}") from err


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
        table = _participant_table(ctx, subjects, analysis)
        missing = [s for i, s in enumerate(subjects) if any(v[i] is None for v in table.values())]
        if len(subjects) - len(missing) < MIN_SUBJECTS:
            why = (
                f"{len(subjects) - len(missing)} subject(s) with every group model variable "
                f"{sorted(table)} (missing for {['sub-' + s for s in missing]}), a group model "
                f"needs at least {MIN_SUBJECTS}; fill in participants.tsv or drop the variable"
            )
            units.append(Unit(analysis.label, None, None, {}, {}, excluded=why))
            continue
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


def stack_design(
    analysis: GroupAnalysis, subjects: list[str], table: dict, variance_groups: str | None
) -> tuple[GroupDesign, dict[str, Any]]:
    """The analysis's design over ``subjects`` and its JSON form.

    Parameters
    ----------
    analysis : GroupAnalysis
    subjects : list of str
        Included subjects, sorted.
    table : dict
        The analysis's variables per subject (``plan_group_stack``'s payload ``table``).
    variance_groups : str or None
        ``boldcloud.group_level.variance_groups``.

    Returns
    -------
    design : GroupDesign
        Over the subjects with every variable (``design.dropped``: the others).
    as_json : dict
        What ``group_stack`` records: matrix, columns, contrast (weights and name), permutation
        kind, variance groups, subjects and ``dropped`` (subject -> reason).
    """
    plain = analysis.x == (INTERCEPT,)
    kind = ("paired" if analysis.kind == "paired" else "one_sample") if plain else "glm"
    built = model_design(
        analysis.x, analysis.conditions, analysis.group_weights, subjects, table,
        variance_groups=variance_groups, name=analysis.group_contrast or "mean", kind=kind,
        label=f"group analysis {analysis.label}",
    )  # fmt: skip
    d = built.design
    as_json = {
        "matrix": d.matrix.tolist(),
        "columns": list(d.columns),
        "contrast": built.contrast.tolist(),
        "contrast_name": built.name,
        "permutation": built.permutation,
        "variance_groups": d.variance_groups.tolist(),
        "group_names": list(d.group_names),
        "kind": d.kind,
        "subjects": list(d.subjects),
        "dropped": built.dropped,
    }
    return d, as_json


def _grid(store: Store, maps: dict, analysis: GroupAnalysis, subject: str) -> tuple:
    """Shape and affine of a subject's maps (every session of the analysis)."""
    grids = []
    for session in analysis.sessions:
        key = maps[session or ""]["effect"]
        array = zarr.open_array(store=store.zarr_store(key), mode="r", zarr_format=3)
        grids.append((tuple(int(n) for n in array.shape), np.asarray(array.attrs["affine"])))
    for shape, affine in grids[1:]:
        if shape != grids[0][0] or not np.allclose(affine, grids[0][1], atol=1e-4):
            raise ValueError(
                f"group analysis {analysis.label}: sub-{subject} sessions "
                f"{list(analysis.sessions)} are on different grids "
                f"{[(g[0], np.round(g[1], 4).tolist()) for g in grids]}; rerun its normalise"
            )
    return grids[0]


def check_grids(
    store: Store, included: dict, subjects: list[str], analysis: GroupAnalysis
) -> tuple[tuple[int, ...], np.ndarray, dict]:
    """The grid every subject's maps share.

    Parameters
    ----------
    store : Store
    included : dict
        subject -> session -> map keys (``inclusion``'s first output).
    subjects : list of str
        Subjects to check, the first is the reference.
    analysis : GroupAnalysis

    Returns
    -------
    shape : tuple of int
    affine : ndarray, shape (4, 4)
    attrs : dict
        Attributes of the first subject's effect map (``space``).

    Raises
    ------
    ValueError
        Naming the first subject and one on another grid, with both shapes and affines.
    """
    first = subjects[0]
    shape, affine = _grid(store, included[first], analysis, first)
    for subject in subjects[1:]:
        other_shape, other_affine = _grid(store, included[subject], analysis, subject)
        if other_shape != shape or not np.allclose(other_affine, affine, atol=1e-4):
            raise ValueError(
                f"group analysis {analysis.label}: sub-{first} maps are on grid {shape} with "
                f"affine {np.round(affine, 4).tolist()}, sub-{subject} on {other_shape} with "
                f"affine {np.round(other_affine, 4).tolist()}; every subject must be normalised "
                "to the same template grid (rerun normalise for the odd one out)"
            )
    key = included[first][analysis.sessions[0] or ""]["effect"]
    return shape, affine, array_attrs(store, key)


def run_group_stack(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Stack the included subjects' maps as (subject, z, y, x) Zarr arrays; find the group mask."""
    store, p = Store(spec.store_url), spec.payload
    analysis = GroupAnalysis.from_json(p["analysis"])
    design, design_json = stack_design(
        analysis, sorted(p["included"]), p["table"], p["variance_groups"]
    )
    excluded = {**p["excluded"], **design_json["dropped"]}
    dropped = design_json["dropped"]
    if dropped:
        listed = "; ".join(f"sub-{s}: {r}" for s, r in sorted(dropped.items()))
        record.warnings.append(
            f"{analysis.label}: dropped {len(dropped)} subject(s) with missing group model "
            f"values ({listed})"
        )
    subjects = list(design.subjects)
    shape, affine, attrs = check_grids(store, p["included"], subjects, analysis)
    effect = np.zeros((len(subjects), *shape), dtype=np.float32)
    variance = np.zeros_like(effect)
    masks = np.ones(shape, dtype=bool)
    for i, subject in enumerate(subjects):
        effect[i], variance[i], m = _read_pair(store, p["included"][subject], analysis)
        masks &= m
    flat_e = effect.reshape(len(subjects), -1)
    flat_v = variance.reshape(len(subjects), -1)
    mask = (data_mask(flat_e, flat_v).reshape(shape) & masks).astype(bool)
    if not mask.any():
        raise ValueError("no voxel where every included subject has data: check the masks")
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
        "design": design_json,
    }


__all__ = ["check_grids", "inclusion", "plan_group_stack", "run_group_stack", "stack_design"]
