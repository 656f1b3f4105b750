"""Engine side of first-level outputs: whole-run maps from GLM blocks, then per-session fixed
effects. Every map is written twice: a Zarr array under ``work/`` (what later stages read) and
a BIDS-Derivatives NIfTI with a JSON sidecar under ``derivatives/boldcloud/`` (what people open).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import numpy as np

from infra.arrays import array_attrs, read_array, run_attrs, write_array
from infra.derivatives import derivative_key, read_nifti, write_nifti, write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import (
    _expected_blocks,
    _records_by_run,
    _slices,
    run_model,
)
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.firstlevel.between_run import RunAlignment, align_run, resample_to_reference
from processing.firstlevel.figures import save_stat_overlay_png
from processing.firstlevel.fixed_effects import fixed_effects
from processing.noise_correlation import lag1_correlation
from processing.stages import stage

STATS = ("effect", "variance", "t", "z")


def _software() -> dict[str, str]:
    return {"Name": "boldcloud", "Version": version("boldcloud")}


def _map_key(prefix: str, name: str) -> str:
    """Zarr key of one map: ``<prefix>/contrast-<c>_stat-<s>`` or ``<prefix>/stat-<s>``."""
    contrast, _, stat = name.rpartition(":")
    return f"{prefix}/contrast-{contrast}_stat-{stat}" if contrast else f"{prefix}/stat-{stat}"


# ---------------------------------------------------------------- glm_maps (per run)
def plan_glm_maps(ctx: PlanContext) -> StagePlan:
    """One assembly task per run whose GLM blocks are all done."""
    model, _ = run_model(ctx)
    blocks = _records_by_run(ctx, "glm")
    designs, ingested = ctx.done("design"), ctx.done("ingest")
    filtered, refs = ctx.done("filter"), ctx.done("motion_reference")
    units = []
    for run, rec in designs.items():
        done = blocks.get(run, [])
        if not done or len(done) != _expected_blocks(ctx, run):
            continue
        payload = {
            "blocks": [(b.outputs["maps"], b.outputs["block"]) for b in done],
            "noise_lag1_sums": [b.outputs.get("noise_lag1_sums") for b in done],
            "names": done[0].outputs["names"],
            "dof": done[0].outputs["dof"],
            "undefined": done[0].outputs["undefined"],
            "raw": ingested[run].outputs["zarr"],
            "bold": filtered[run].outputs["bold"],
            "mask": refs[run].outputs["mask"],
            "mean": filtered[run].outputs["mean"],
            "design": rec.outputs,
            "model": model,
        }
        upstream = {"glm": content_key(keys=[b.key for b in done])}
        units.append(Unit(run, rec.subject, rec.session, upstream, payload))
    return plan_units(stage("glm_maps"), units, ctx, run_glm_maps)


def _sidecar(model, contrast_name: str | None, stat: str, dof, **extra: Any) -> dict:
    out: dict[str, Any] = {"Statistic": stat, "DegreesOfFreedom": dof, "Software": _software()}
    out["NoiseModel"] = model.noise_model
    for contrast in model.contrasts:
        if contrast.name == contrast_name:
            out["Contrast"] = {
                "Name": contrast.name,
                "ConditionList": list(contrast.conditions),
                "Weights": [list(row) for row in contrast.weights],
                "Test": contrast.test,
            }
    return {**out, **extra}


def run_glm_maps(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Stitch the blocks into whole (z, y, x) maps; write Zarr arrays and NIfTI statmaps."""
    store, p = Store(spec.store_url), spec.payload
    mask = read_array(store, p["mask"]).astype(bool)
    affine = np.asarray(array_attrs(store, p["bold"])["affine"])
    entities = run_attrs(store, p["raw"])["entities"]
    maps = np.zeros((len(p["names"]), *mask.shape), dtype=np.float32)
    for key, sel_json in p["blocks"]:
        maps[(slice(None), *_slices(sel_json))] = read_array(store, key)
    lag1 = noise_lag1_xyz(p["noise_lag1_sums"])
    zarr_keys, nifti_keys = {}, {}
    for name, volume in zip(p["names"], maps, strict=True):
        contrast, _, stat = name.rpartition(":")
        zarr_keys[name] = write_array(
            store, _map_key(p["out"], name), volume, ("z", "y", "x"), attrs=_attrs(affine)
        )
        extra = {"contrast": contrast} if contrast else {}
        key = derivative_key(entities, "statmap", ".nii.gz", **extra, stat=stat)
        side = _sidecar(p["model"], contrast or None, stat, p["dof"], NoiseLag1Correlation=lag1)
        side["RegressorPeakHeights"] = p["design"]["peak_heights"]
        nifti_keys[name] = write_nifti(store, key, volume, affine, sidecar=side)
    for contrast, why in p["undefined"].items():
        record.warnings.append(f"contrast {contrast} undefined for this run: {why}")
    figures = _z_figures(store, p["mean"], dict(zip(p["names"], maps, strict=True)), entities)
    return {
        "maps": zarr_keys,
        "nifti": nifti_keys,
        "figures": figures,
        "dof": p["dof"],
        "noise_lag1": lag1,
        "undefined": p["undefined"],
        "mask": p["mask"],
        "mean": p["mean"],
        "peak_heights": p["design"]["peak_heights"],
    }


def noise_lag1_xyz(block_sums: list) -> list[float] | None:
    """A run's noise lag-1 correlation per voxel axis (x, y, z) from its blocks' sums (z, y, x),
    or None when an axis has no voxel pairs or a block has no sums (an older glm record)."""
    if not block_sums or any(sums is None for sums in block_sums):
        return None
    lag1 = lag1_correlation(np.sum(np.asarray(block_sums, dtype=np.float64), axis=0))[::-1]
    return [round(float(v), 6) for v in lag1] if np.all(np.isfinite(lag1)) else None


def _z_figures(store: Store, mean_key: str, maps: dict, entities: dict) -> dict[str, str]:
    """A PNG of each contrast's z map (|z| > 2.3) over the mean functional image."""
    background, affine = read_nifti(store, mean_key)
    figures = {}
    for name, volume in maps.items():
        contrast, _, stat = name.rpartition(":")
        if stat != "z":
            continue
        key = derivative_key(entities, "statmap", ".png", contrast=contrast, stat="z")
        figures[contrast] = write_png(
            store,
            key,
            lambda path, v=volume, c=contrast: save_stat_overlay_png(
                background, v, path, title=c, affine=affine
            ),
        )
    return figures


# ---------------------------------------------------------------- fixed_effects (per session)
def session_groups(ctx: PlanContext) -> dict[str, list[str]]:
    """Selected runs grouped by subject, session and task: ``sub-01_ses-pre_task-cuff``."""
    groups: dict[str, list[str]] = {}
    for run in ctx.run_keys():
        session = "_".join(part for part in run.split("_") if not part.startswith("run-"))
        groups.setdefault(session, []).append(run)
    return groups


def plan_fixed_effects(ctx: PlanContext) -> StagePlan:
    """One task per session once each of its runs has maps or was excluded."""
    maps = ctx.done("glm_maps")
    design = ctx.load("design")
    model, _ = run_model(ctx)
    units = []
    for session, runs in session_groups(ctx).items():
        usable = [r for r in runs if r in maps]
        excluded = [r for r in runs if r in design and design[r].state == "excluded"]
        if len(usable) + len(excluded) != len(runs):
            continue  # some run is still in progress or failed
        first = design[runs[0]]
        if not usable:
            reasons = "; ".join(f"{r}: {design[r].reason}" for r in excluded)
            why = f"no usable run in this session ({reasons})"
            units.append(Unit(session, first.subject, first.session, {}, {}, excluded=why))
            continue
        payload = {
            "runs": {r: maps[r].outputs for r in usable},
            "excluded": {r: design[r].reason for r in excluded},
            "model": model,
            "dof_cap": ctx.param("boldcloud.session_level.dof_cap"),
            "raw": ctx.done("ingest")[usable[0]].outputs["zarr"],
        }
        upstream = {"glm_maps": content_key(keys=[maps[r].key for r in usable])}
        units.append(Unit(session, first.subject, first.session, upstream, payload))
    return plan_units(stage("fixed_effects"), units, ctx, run_fixed_effects)


def run_fixed_effects(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Inverse-variance combination of the session's usable runs, per t contrast, after each
    later run is rigidly registered to the first (skipped when they already agree)."""
    store, p = Store(spec.store_url), spec.payload
    runs = sorted(p["runs"])
    affine = _run_affine(store, p, runs[0])
    shape = read_array(store, p["runs"][runs[0]]["mask"]).shape
    p = {**p, "alignment": _align_runs(store, p, runs, affine), "reference_shape": shape}
    masks = [_on_reference(store, p, r, p["runs"][r]["mask"], "mask") for r in runs]
    mask = np.logical_and.reduce([m.astype(bool) for m in masks])
    entities = {k: v for k, v in run_attrs(store, p["raw"])["entities"].items() if k != "run"}
    write_nifti(store, derivative_key(entities, "mask", ".nii.gz", desc="brain"), mask, affine)
    outputs: dict[str, Any] = {"maps": {}, "nifti": {}, "dof": {}, "runs": {}, "passed_through": []}
    for contrast in (c for c in p["model"].contrasts if c.test == "t"):
        used = [r for r in runs if contrast.name not in p["runs"][r]["undefined"]]
        if not used:
            record.warnings.append(f"contrast {contrast.name} is undefined in every run")
            continue
        stats, dof = _combine(store, p, used, contrast.name, mask)
        if len(used) == 1:
            outputs["passed_through"].append(contrast.name)
            record.warnings.append(
                f"contrast {contrast.name}: one usable run ({used[0]}), passed through unchanged"
            )
        outputs["dof"][contrast.name], outputs["runs"][contrast.name] = dof, used
        for stat, volume in stats.items():
            name = f"{contrast.name}:{stat}"
            outputs["maps"][name] = write_array(
                store, _map_key(p["out"], name), volume, ("z", "y", "x"), attrs=_attrs(affine)
            )
            key = derivative_key(entities, "statmap", ".nii.gz", contrast=contrast.name, stat=stat)
            side = _sidecar(
                p["model"], contrast.name, stat, dof, Runs=used, Method="fixed_effects",
                Weights="inverse_variance", PassedThrough=len(used) == 1,
                ExcludedRuns=p["excluded"], RunAlignment=_alignment_summary(p, used),
            )  # fmt: skip
            outputs["nifti"][name] = write_nifti(store, key, volume, affine, sidecar=side)
    outputs["mask"] = write_array(
        store, f"{p['out']}/mask", mask.astype(np.uint8), ("z", "y", "x"), attrs=_attrs(affine)
    )
    outputs["noise_lag1"] = _session_lag1(p, runs)
    outputs["mean"] = p["runs"][runs[0]]["mean"]
    outputs["reference_run"] = runs[0]
    outputs["alignment"] = {r: a.to_dict() for r, a in p["alignment"].items()}
    return outputs


def _session_lag1(p: dict, runs: list[str]) -> list[float] | None:
    """Mean of the runs' noise lag-1 correlations (x, y, z); None if a run has none."""
    values = [p["runs"][r].get("noise_lag1") for r in runs]
    if any(v is None for v in values):
        return None
    return [round(float(v), 6) for v in np.mean(np.asarray(values, dtype=np.float64), axis=0)]


def _run_affine(store: Store, p: dict, run: str) -> np.ndarray:
    return np.asarray(array_attrs(store, p["runs"][run]["maps"]["sigmasquared"])["affine"])


def _align_runs(
    store: Store, p: dict, runs: list[str], affine: np.ndarray
) -> dict[str, RunAlignment]:
    """Rigid transform of each later run's mean functional image onto the first run's."""
    reference, _ = read_nifti(store, p["runs"][runs[0]]["mean"])
    reference_mask = read_array(store, p["runs"][runs[0]]["mask"]).astype(bool)
    alignments = {}
    for run in runs[1:]:
        mean, mean_affine = read_nifti(store, p["runs"][run]["mean"])
        alignments[run] = align_run(reference, affine, reference_mask, mean, mean_affine)
    return alignments


def _alignment_summary(p: dict, used: list[str]) -> dict[str, dict]:
    """Sidecar entry: per used later run, whether it was registered and its parameters."""
    keep = ("registered", "offset_mm", "translation_mm", "rotation_deg", "centre_mm")
    return {
        run: {k: v for k, v in p["alignment"][run].to_dict().items() if k in keep}
        for run in used
        if run in p["alignment"]
    }


def _on_reference(store: Store, p: dict, run: str, key: str, kind: str) -> np.ndarray:
    """A run's map on the first run's grid: read as is, or resampled once if registered."""
    volume = read_array(store, key)
    alignment = p["alignment"].get(run)
    if alignment is None or not alignment.registered:
        return volume
    reference = sorted(p["runs"])[0]
    lag1 = p["runs"][run].get("noise_lag1") if kind == "variance" else None
    return resample_to_reference(
        volume, _run_affine(store, p, run), alignment, _run_affine(store, p, reference),
        p["reference_shape"], kind=kind, noise_lag1=lag1,
    )  # fmt: skip


def _attrs(affine: np.ndarray) -> dict:
    return {"affine": affine.tolist()}


def _combine(
    store: Store, p: dict, used: list[str], contrast: str, mask: np.ndarray
) -> tuple[dict[str, np.ndarray], float]:
    """Effect, variance, t, z volumes of one contrast over the runs in ``used``."""

    def load(run: str, stat: str) -> np.ndarray:
        kind = "variance" if stat == "variance" else "effect"  # t, z: trilinear as effects
        return _on_reference(store, p, run, p["runs"][run]["maps"][f"{contrast}:{stat}"], kind)

    if len(used) == 1:
        run = used[0]
        return {s: load(run, s) * mask for s in STATS}, float(p["runs"][run]["dof"])
    effects = np.stack([load(r, "effect")[mask] for r in used])
    variances = np.stack([load(r, "variance")[mask] for r in used])
    dofs = [float(p["runs"][r]["dof"]) for r in used]
    fe = fixed_effects(effects, variances, dofs, dof_cap=p["dof_cap"])
    volumes = {}
    for stat, values in zip(STATS, (fe.effect, fe.variance, fe.t, fe.z), strict=True):
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = values
        volumes[stat] = volume
    return volumes, fe.dof
