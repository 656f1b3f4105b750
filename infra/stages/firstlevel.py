"""Engine side of the first level: design per run, then the GLM in spatial blocks.

Stages (see ``processing.stages``): ``design`` (run) -> ``glm_autocorr`` (run x block, FILM
only) -> ``glm_autocorr_smooth`` (run, FILM only) -> ``glm`` (run x block) -> ``glm_maps``
(run). A block is one (z, y, x) chunk of the filtered run, so a task reads whole time series of
that block only: memory is bounded by the block, and blocks without brain voxels get no task.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import (
    array_attrs,
    array_chunks,
    read_array,
    read_tsv,
    run_attrs,
    write_array,
    write_tsv,
)
from infra.derivatives import derivative_key, write_json, write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.firstlevel.design import build_design
from processing.firstlevel.design_qc import check_design, plot_design
from processing.firstlevel.film import film_lags, residual_autocorrelation, smooth_autocorrelation
from processing.firstlevel.fit import contrast_maps, fit_noise_model, uses_autocorrelation
from processing.firstlevel.glm import fit_ols, residuals
from processing.firstlevel.model import RunModel, run_node
from processing.firstlevel.volume import AUTOCORR_FWHM_MM
from processing.noise_correlation import residual_lag1_sums
from processing.preprocess.highpass import highpass_sigma_volumes
from processing.stages import stage


# ---------------------------------------------------------------- run model & blocks
def run_model(ctx: PlanContext) -> tuple[RunModel, dict]:
    """The study's run-level model and the raw node (for task keys)."""
    node = run_node(ctx.param("model"))
    model = RunModel.from_node(
        node,
        noise_model=ctx.param("boldcloud.run_level.noise_model"),
        extra_confounds=ctx.param("boldcloud.run_level.confounds") or (),
    )
    return model, node


def spatial_blocks(mask: np.ndarray, chunks: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """``(label, (z, y, x) slices)`` of every chunk holding at least one mask voxel."""
    ranges = [range(0, n, c) for n, c in zip(mask.shape, chunks, strict=True)]
    blocks = []
    for start in itertools.product(*ranges):
        sel = tuple(
            slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, mask.shape, strict=True)
        )
        if mask[sel].any():
            index = "-".join(str(s // c) for s, c in zip(start, chunks, strict=True))
            blocks.append((index, sel))
    return blocks


def _slices_json(sel: tuple) -> list[list[int]]:
    return [[s.start, s.stop] for s in sel]


def _slices(sel_json: list[list[int]]) -> tuple:
    return tuple(slice(a, b) for a, b in sel_json)


# ---------------------------------------------------------------- design (per run)
def plan_design(ctx: PlanContext) -> StagePlan:
    """One design per run that passed the filter; runs excluded upstream stay excluded."""
    model, node = run_model(ctx)
    filtered, motion, ingested = ctx.done("filter"), ctx.done("motion"), ctx.done("ingest")
    excluded = {u: r for u, r in ctx.load("filter").items() if r.state == "excluded"}
    units = []
    for run in ctx.run_keys():
        if run in excluded:
            rec = excluded[run]
            units.append(Unit(run, rec.subject, rec.session, {}, {}, excluded=rec.reason))
        elif run in filtered and run in motion and run in ingested:
            rec = filtered[run]
            upstream = {"filter": rec.key, "motion": motion[run].key, "node": content_key(n=node)}
            payload = {
                "raw": ingested[run].outputs["zarr"],
                "confounds": motion[run].outputs["confounds"],
                "model": model,
                "cutoff_s": ctx.param("preprocessing.highpass_cutoff_s"),
                "drop_empty": ctx.param("boldcloud.run_level.drop_empty_conditions"),
            }
            units.append(Unit(run, rec.subject, rec.session, upstream, payload))
    return plan_units(stage("design"), units, ctx, run_design)


def run_design(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Build, check and save the run's design (TSV, PNG, JSON)."""
    store, p = Store(spec.store_url), spec.payload
    model: RunModel = p["model"]
    attrs = run_attrs(store, p["raw"])
    confounds = read_tsv(store, p["confounds"])
    n_scans, tr = len(confounds), float(attrs["tr_s"])  # one confounds row per volume
    missing = [c for c in model.confounds if c not in confounds.columns]
    if missing:
        raise ValueError(
            f"{spec.unit}: confounds {missing} are not in {p['confounds']}; available: "
            f"{list(confounds.columns)}"
        )
    design = build_design(
        pd.DataFrame(attrs["events"]),
        n_scans,
        tr,
        model.conditions,
        hrf_model=model.hrf_model,
        derivative_conditions=model.conditions if model.derivatives else (),
        fir_delays=model.fir_delays,
        confounds=confounds[list(model.confounds)] if model.confounds else None,
        highpass_cutoff_s=p["cutoff_s"],
    )
    if design.dropped and not p["drop_empty"]:
        raise ValueError(
            f"{spec.unit}: {design.dropped}; set boldcloud.run_level.drop_empty_conditions: true "
            "to drop such conditions from this run (contrasts needing them become undefined)"
        )
    task_columns = [c for c in design.matrix.columns if c not in model.confounds]
    report = check_design(design.matrix, n_scans, of_interest=task_columns)
    record.warnings.extend(report.warnings)
    record.warnings.extend(f"{c} dropped: {why}" for c, why in design.dropped.items())
    entities = attrs["entities"]
    tsv = write_tsv(store, derivative_key(entities, "design", ".tsv"), design.matrix)
    png = write_png(
        store,
        derivative_key(entities, "design", ".png"),
        lambda path: plot_design(design.matrix, path, title=spec.unit),
    )
    summary = {**design.to_dict(), **report.to_dict()}
    sidecar = write_json(store, derivative_key(entities, "design", ".json"), summary)
    return {
        "design": tsv,
        "plot": png,
        "sidecar": sidecar,
        "columns": list(design.matrix.columns),
        "dropped": dict(design.dropped),
        "peak_heights": dict(design.peak_heights),
        "n_scans": n_scans,
        "tr_s": tr,
        "warnings": list(report.warnings),
    }


# ---------------------------------------------------------------- blocks of a run
def _block_units(ctx: PlanContext, run: str, upstream: dict, payload: dict) -> list[Unit]:
    """One unit per brain-containing block of the run's filtered data."""
    filt = ctx.done("filter")[run]
    mask_key = ctx.done("motion_reference")[run].outputs["mask"]
    units = []
    for label, sel in _run_blocks(ctx, run):
        block_payload = {
            **payload,
            "bold": filt.outputs["bold"],
            "mask": mask_key,
            "block": _slices_json(sel),
        }
        units.append(
            Unit(
                f"{run}_block-{label}",
                filt.subject,
                filt.session,
                {**upstream, "block": label},
                block_payload,
            )
        )
    return units


def _read_block(store: Store, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y (n_scans, V) float32, in-block mask, design X (n_scans, p)) for one block."""
    sel = _slices(p["block"])
    mask = read_array(store, p["mask"], sel).astype(bool)
    bold = read_array(store, p["bold"], (slice(None), *sel))
    design = read_tsv(store, p["design"]).to_numpy(np.float64)
    return bold[:, mask], mask, design


def _to_block(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scatter (..., V) in-mask values into a (..., bz, by, bx) float32 block (0 outside)."""
    out = np.zeros((*values.shape[:-1], *mask.shape), dtype=np.float32)
    out[..., mask] = values
    return out


# ---------------------------------------------------------------- glm_autocorr (FILM pass 1)
def needs_autocorrelation(ctx: PlanContext) -> bool:
    """FILM, or ar1 with the bias correction: the fit needs the smoothed autocorrelation."""
    model, _ = run_model(ctx)
    return uses_autocorrelation(
        model.noise_model, ctx.param("boldcloud.run_level.autocorr_bias_correction")
    )


def plan_glm_autocorr(ctx: PlanContext) -> StagePlan:
    """Raw residual autocorrelation of every block of every designed run (FILM, or ar1 with the
    bias correction)."""
    units = []
    if needs_autocorrelation(ctx):
        for run, rec in ctx.done("design").items():
            upstream = {"design": rec.key}
            payload = {"design": rec.outputs["design"], "n_lags": film_lags(rec.outputs["n_scans"])}
            units += _block_units(ctx, run, upstream, payload)
    return plan_units(stage("glm_autocorr"), units, ctx, run_glm_autocorr)


def run_glm_autocorr(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """OLS fit of the block, then lags 1..M of each voxel's residual autocorrelation."""
    store, p = Store(spec.store_url), spec.payload
    y, mask, x = _read_block(store, p)
    resid = residuals(fit_ols(y, x, demean=True), y, x)
    acf = residual_autocorrelation(resid, p["n_lags"])
    key = write_array(store, f"{p['out']}/acf", _to_block(acf, mask), ("lag", "z", "y", "x"))
    return {"acf": key, "block": p["block"], "n_voxels": int(mask.sum())}


# ---------------------------------------------------------------- glm_autocorr_smooth (run)
def plan_glm_autocorr_smooth(ctx: PlanContext) -> StagePlan:
    """Per run, once all its blocks are in: assemble and smooth the autocorrelation maps."""
    units = []
    if not needs_autocorrelation(ctx):
        return plan_units(stage("glm_autocorr_smooth"), [], ctx, run_glm_autocorr_smooth)
    blocks = _records_by_run(ctx, "glm_autocorr")
    for run, rec in ctx.done("design").items():
        done = blocks.get(run, [])
        if not done or len(done) != _expected_blocks(ctx, run):
            continue
        upstream = {"glm_autocorr": content_key(keys=[b.key for b in done])}
        payload = {
            "blocks": [(b.outputs["acf"], b.outputs["block"]) for b in done],
            "mask": ctx.done("motion_reference")[run].outputs["mask"],
            "bold": ctx.done("filter")[run].outputs["bold"],
        }
        units.append(Unit(run, rec.subject, rec.session, upstream, payload))
    return plan_units(stage("glm_autocorr_smooth"), units, ctx, run_glm_autocorr_smooth)


def run_glm_autocorr_smooth(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Smooth each lag's autocorrelation map within the brain mask (FILM step 3)."""
    store, p = Store(spec.store_url), spec.payload
    mask = read_array(store, p["mask"]).astype(bool)
    acf = None
    for key, sel_json in p["blocks"]:
        block = read_array(store, key)
        if acf is None:
            acf = np.zeros((block.shape[0], *mask.shape), dtype=np.float32)
        acf[(slice(None), *_slices(sel_json))] = block
    affine = np.asarray(array_attrs(store, p["bold"])["affine"])
    smoothed = smooth_autocorrelation(acf, mask, affine, AUTOCORR_FWHM_MM)
    chunks = (smoothed.shape[0], *array_chunks(store, p["bold"])[1:])
    key = write_array(store, f"{p['out']}/acf", smoothed, ("lag", "z", "y", "x"), chunks=chunks)
    return {"acf": key, "fwhm_mm": AUTOCORR_FWHM_MM}


def _records_by_run(ctx: PlanContext, stage_name: str) -> dict[str, list[TaskRecord]]:
    """Done block records of a stage grouped by run, in block order."""
    grouped: dict[str, list[TaskRecord]] = {}
    for unit, rec in sorted(ctx.load(stage_name).items()):
        if rec.state == "done":
            grouped.setdefault(unit.split("_block-")[0], []).append(rec)
    return grouped


def _run_blocks(ctx: PlanContext, run: str) -> list[tuple[str, tuple]]:
    """The run's brain-containing blocks, on the chunk grid of its filtered data (read once per
    plan: several stages' planners ask)."""
    mask_key = ctx.done("motion_reference")[run].outputs["mask"]
    bold_key = ctx.done("filter")[run].outputs["bold"]
    if ("blocks", mask_key, bold_key) not in ctx.memo:
        mask = read_array(ctx.store, mask_key).astype(bool)
        chunks = array_chunks(ctx.store, bold_key)[1:]
        ctx.memo["blocks", mask_key, bold_key] = spatial_blocks(mask, chunks)
    return ctx.memo["blocks", mask_key, bold_key]


def _expected_blocks(ctx: PlanContext, run: str) -> int:
    return len(_run_blocks(ctx, run))


# ---------------------------------------------------------------- glm (run x block)
def plan_glm(ctx: PlanContext) -> StagePlan:
    """Fit every block of every designed run (after the smoothed autocorrelation if needed)."""
    model, _ = run_model(ctx)
    smooth = ctx.done("glm_autocorr_smooth")
    units = []
    for run, rec in ctx.done("design").items():
        upstream = {"design": rec.key}
        payload = {
            "design": rec.outputs["design"],
            "columns": rec.outputs["columns"],
            "dropped": rec.outputs["dropped"],
            "model": model,
            "bias_correction": ctx.param("boldcloud.run_level.autocorr_bias_correction"),
            "highpass_sigma": _highpass_sigma(rec.outputs["tr_s"], ctx),
        }
        if needs_autocorrelation(ctx):
            if run not in smooth:
                continue
            upstream["glm_autocorr_smooth"] = smooth[run].key
            payload["acf"] = smooth[run].outputs["acf"]
        units += _block_units(ctx, run, upstream, payload)
    return plan_units(stage("glm"), units, ctx, run_glm)


def _highpass_sigma(tr_s: float, ctx: PlanContext) -> float | None:
    cutoff = ctx.param("preprocessing.highpass_cutoff_s")
    return None if cutoff is None else highpass_sigma_volumes(tr_s, cutoff)


def run_glm(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Fit one block and write every contrast's effect, variance, t/F and z for it."""
    store, p = Store(spec.store_url), spec.payload
    y, mask, x = _read_block(store, p)
    acf = None
    if "acf" in p:
        acf = read_array(store, p["acf"], (slice(None), *_slices(p["block"])))[:, mask]
    model: RunModel = p["model"]
    fit = fit_noise_model(
        model.noise_model,
        y.astype(np.float64),
        x,
        acf,
        highpass_sigma=p["highpass_sigma"],
        bias_correction=p["bias_correction"],
    )
    names, maps, undefined = contrast_maps(fit, model.contrasts, p["columns"], p["dropped"])
    stack = _to_block(np.stack(maps), mask)
    key = write_array(
        store, f"{p['out']}/maps", stack, ("map", "z", "y", "x"), attrs={"names": names}
    )
    return {
        "maps": key,
        "names": names,
        "block": p["block"],
        # sums for the noise's spatial lag-1 correlation (z, y, x), combined per run in glm_maps
        "noise_lag1_sums": residual_lag1_sums(y, x, mask).tolist(),
        "dof": float(fit.dof),
        "undefined": undefined,
        "n_voxels": int(mask.sum()),
    }
