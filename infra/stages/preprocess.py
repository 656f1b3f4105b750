"""Engine side of preprocessing: reference + mask, chunked motion estimation, motion summary and
exclusion, chunked resampling + smoothing, and per-run scaling + high-pass + rechunk.

Reads and writes only; every number comes from ``processing.preprocess`` kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import read_array, read_tsv, read_volumes, run_attrs, write_array, write_tsv
from infra.derivatives import derivative_key, write_nifti, write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.geometry import rigid_matrix, volume_center_mm
from processing.preprocess.highpass import highpass_fsl
from processing.preprocess.masks import epi_brain_mask
from processing.preprocess.motion import (
    apply_motion,
    confounds_table,
    estimate_motion,
    motion_exclusion,
    plot_motion,
    reference_index,
    rms_displacement_series,
    select_reference,
)
from processing.preprocess.qc import mask_volume_ml, save_mask_overlay_png, tsnr
from processing.preprocess.scaling import grand_mean_scale
from processing.preprocess.smoothing import smooth_mm
from processing.stages import stage

VOLUMES_PER_TASK = 32  # motion estimation / resampling fan-out along time
SPATIAL_CHUNK = (16, 32, 32)  # (z, y, x) block of the filtered run, whole time series per chunk


def _chunks(n: int, size: int = VOLUMES_PER_TASK) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _run_of(unit: str) -> str:
    return unit.split("_chunk-")[0]


# ---------------------------------------------------------------- motion_reference (per run)
def plan_motion_reference(ctx: PlanContext) -> StagePlan:
    """One task per ingested run."""
    ingested = ctx.done("ingest")
    units = [
        Unit(
            run,
            rec.subject,
            rec.session,
            {"ingest": rec.key},
            {"raw": rec.outputs["zarr"], "how": ctx.param("preprocessing.reference_volume")},
        )
        for run in ctx.run_keys()
        if (rec := ingested.get(run))
    ]
    return plan_units(stage("motion_reference"), units, ctx, run_motion_reference)


def run_motion_reference(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Reference image (one volume, or the mean) and the brain mask drawn on it."""
    store, raw, out = Store(spec.store_url), spec.payload["raw"], spec.payload["out"]
    attrs = run_attrs(store, raw)
    n_volumes = _n_volumes(store, raw)
    how = spec.payload["how"]
    index = reference_index(n_volumes, how)
    if index is None:
        reference = select_reference(read_volumes(store, raw), "mean")
    else:
        reference = read_volumes(store, raw, index, index + 1)[0]
    affine = np.asarray(attrs["affine"])
    mask = epi_brain_mask(reference, affine)
    write_array(store, f"{out}/reference", reference, ("z", "y", "x"))
    write_array(store, f"{out}/mask", mask.astype(np.uint8), ("z", "y", "x"))
    return {
        "reference": f"{out}/reference",
        "mask": f"{out}/mask",
        "n_volumes": n_volumes,
        "reference_index": index,
        "mask_ml": mask_volume_ml(mask, affine),
    }


def _n_volumes(store: Store, raw: str) -> int:
    from infra.ingest import open_run_group

    return int(open_run_group(store, raw)["0"].shape[0])


# ---------------------------------------------------------------- motion_estimate (run x chunk)
def plan_motion_estimate(ctx: PlanContext) -> StagePlan:
    """Chunks of ``VOLUMES_PER_TASK`` volumes of every run with a reference."""
    ingested, refs = ctx.done("ingest"), ctx.done("motion_reference")
    units = []
    for run in ctx.run_keys():
        if run not in refs or run not in ingested:
            continue
        ref = refs[run]
        upstream = {"ingest": ingested[run].key, "motion_reference": ref.key}
        for i, (start, stop) in enumerate(_chunks(ref.outputs["n_volumes"])):
            payload = {
                "raw": ingested[run].outputs["zarr"],
                "reference": ref.outputs["reference"],
                "mask": ref.outputs["mask"],
                "start": start,
                "stop": stop,
            }
            units.append(
                Unit(
                    f"{run}_chunk-{i:03d}",
                    ref.subject,
                    ref.session,
                    {**upstream, "start": str(start)},
                    payload,
                )
            )
    return plan_units(stage("motion_estimate"), units, ctx, run_motion_estimate)


def run_motion_estimate(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Rigid parameters of one chunk of volumes relative to the reference."""
    store, p = Store(spec.store_url), spec.payload
    affine = np.asarray(run_attrs(store, p["raw"])["affine"])
    volumes = read_volumes(store, p["raw"], p["start"], p["stop"])
    reference = read_array(store, p["reference"])
    mask = read_array(store, p["mask"]).astype(bool)
    params = estimate_motion(volumes, reference, affine, mask=mask)
    key = f"{p['out']}/params.tsv"
    write_tsv(store, key, confounds_table(params).iloc[:, :6])
    return {"params": key, "start": p["start"], "stop": p["stop"]}


# ---------------------------------------------------------------- motion (per run)
def _chunk_index(ctx: PlanContext, stage_name: str) -> dict[str, list[TaskRecord]]:
    """Records of a chunked stage grouped by run, each run's in time order (one pass, so
    planning stays linear in the number of runs)."""
    by_run: dict[str, list[TaskRecord]] = {}
    for unit, rec in sorted(ctx.load(stage_name).items()):
        by_run.setdefault(_run_of(unit), []).append(rec)
    return by_run


def _run_chunks(
    ctx: PlanContext, stage_name: str, run: str, index: dict | None = None
) -> list[TaskRecord]:
    """Records of a chunked stage for one run, in time order."""
    index = _chunk_index(ctx, stage_name) if index is None else index
    return list(index.get(run, []))


def _chunk_records(
    ctx: PlanContext,
    stage_name: str,
    run: str,
    index: dict | None = None,
    refs: dict | None = None,
) -> list[TaskRecord] | None:
    """The run's chunk records when every expected chunk is done, else None."""
    records = _run_chunks(ctx, stage_name, run, index)
    refs = ctx.done("motion_reference") if refs is None else refs
    expected = len(_chunks(refs[run].outputs["n_volumes"])) if run in refs else -1
    complete = len(records) == expected and all(r.state == "done" for r in records)
    return records if complete else None


def plan_motion(ctx: PlanContext) -> StagePlan:
    """One summary task per run whose chunks are all estimated."""
    ingested, refs = ctx.done("ingest"), ctx.done("motion_reference")
    index = _chunk_index(ctx, "motion_estimate")
    units = []
    for run in ctx.run_keys():
        chunks = _chunk_records(ctx, "motion_estimate", run, index, refs)
        if chunks is None or run not in ingested:
            continue
        upstream = {"motion_estimate": content_key(keys=[c.key for c in chunks])}
        payload = {
            "params": [c.outputs["params"] for c in chunks],
            "raw": ingested[run].outputs["zarr"],
            "threshold_mm": ctx.param("preprocessing.motion_exclusion_mm"),
        }
        units.append(Unit(run, chunks[0].subject, chunks[0].session, upstream, payload))
    return plan_units(stage("motion"), units, ctx, run_motion)


def run_motion(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Confounds (BIDS), displacement series, the exclusion verdict and the motion plot."""
    store, p = Store(spec.store_url), spec.payload
    attrs = run_attrs(store, p["raw"])
    params = np.concatenate([read_tsv(store, k).to_numpy(float) for k in p["params"]])
    table = confounds_table(params)
    table["rmsd_abs"] = rms_displacement_series(params)[0]  # MCFLIRT's absolute RMS, mm
    verdict = motion_exclusion(table["rmsd"].to_numpy(), p["threshold_mm"])
    entities = attrs["entities"]
    confounds = derivative_key(entities, "timeseries", ".tsv", desc="confounds")
    write_tsv(store, confounds, table)
    transforms = _write_transforms(store, entities, params, attrs, p["raw"])
    figure = derivative_key(entities, "motion", ".png", desc="qc")
    write_png(
        store,
        figure,
        lambda path: plot_motion(
            params, table["framewise_displacement"], table["rmsd"], p["threshold_mm"], path
        ),
    )
    fd = table["framewise_displacement"].to_numpy()
    record.reason = verdict.reason if verdict.excluded else None
    return {
        "confounds": confounds,
        "plot": figure,
        "excluded": verdict.excluded,
        "reason": verdict.reason,
        "offending_volume": verdict.volume,
        "max_fd_mm": float(np.nanmax(fd)),
        "max_rel_rms_mm": float(table["rmsd"].max()),
        "n_fd_over_0p5": int(np.sum(fd > 0.5)),
        "params": confounds,
        "transforms": transforms,
    }


def _write_transforms(store: Store, entities, params: np.ndarray, attrs, raw: str) -> str:
    """Per-volume 4x4 world(mm) matrices, reference -> volume t, one row of 16 values each."""
    affine = np.asarray(attrs["affine"])
    shape_xyz = tuple(reversed(_grid(store, raw)))
    matrices = rigid_matrix(params, volume_center_mm(affine, shape_xyz)).reshape(len(params), 16)
    columns = [f"m{i}{j}" for i in range(4) for j in range(4)]
    key = derivative_key(entities, "xfm", ".tsv", desc="motion")
    write_tsv(store, key, pd.DataFrame(matrices, columns=columns))
    return key


def _grid(store: Store, raw: str) -> tuple[int, int, int]:
    from infra.ingest import open_run_group

    return tuple(int(n) for n in open_run_group(store, raw)["0"].shape[1:])


# ---------------------------------------------------------------- preprocess (run x chunk)
def plan_preprocess(ctx: PlanContext) -> StagePlan:
    """Resample + smooth chunks of every usable run; excluded runs are recorded as excluded."""
    ingested, refs, motion = (
        ctx.done("ingest"),
        ctx.done("motion_reference"),
        ctx.done("motion"),
    )
    units = []
    for run in ctx.run_keys():
        if run not in motion or run not in refs or run not in ingested:
            continue
        mot, ref = motion[run], refs[run]
        upstream = {"ingest": ingested[run].key, "motion_reference": ref.key, "motion": mot.key}
        for i, (start, stop) in enumerate(_chunks(ref.outputs["n_volumes"])):
            payload = {
                "raw": ingested[run].outputs["zarr"],
                "params": mot.outputs["confounds"],
                "mask": ref.outputs["mask"],
                "start": start,
                "stop": stop,
                "fwhm_mm": ctx.param("preprocessing.smoothing_fwhm_mm"),
                "order": 3 if ctx.param("preprocessing.interpolation") == "cubic" else 1,
            }
            excluded = (
                f"run excluded by motion: {mot.outputs['reason']}"
                if mot.outputs["excluded"]
                else None
            )
            units.append(
                Unit(
                    f"{run}_chunk-{i:03d}",
                    mot.subject,
                    mot.session,
                    {**upstream, "start": str(start)},
                    payload,
                    excluded,
                )
            )
    return plan_units(stage("preprocess"), units, ctx, run_preprocess)


def run_preprocess(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Undo motion (one resampling) and smooth within the brain mask, for one chunk."""
    store, p = Store(spec.store_url), spec.payload
    affine = np.asarray(run_attrs(store, p["raw"])["affine"])
    volumes = read_volumes(store, p["raw"], p["start"], p["stop"])
    params = read_tsv(store, p["params"])[MOTION_COLUMNS].to_numpy(float)[p["start"] : p["stop"]]
    mask = read_array(store, p["mask"]).astype(bool)
    corrected = apply_motion(volumes, params, affine, order=p["order"])
    del volumes
    smoothed = smooth_mm(corrected, affine, p["fwhm_mm"], mask=mask)
    key = write_array(
        store, f"{p['out']}/bold", smoothed, ("t", "z", "y", "x"), chunks=(1, *smoothed.shape[1:])
    )
    return {"bold": key, "start": p["start"], "stop": p["stop"]}


MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


# ---------------------------------------------------------------- filter (per run)
def plan_filter(ctx: PlanContext) -> StagePlan:
    """Per run: grand-mean scaling, FSL high-pass, rechunk to spatial blocks, QC."""
    refs, ingested = ctx.done("motion_reference"), ctx.done("ingest")
    index = _chunk_index(ctx, "preprocess")
    units = []
    for run in ctx.run_keys():
        chunks = _run_chunks(ctx, "preprocess", run, index)
        if chunks and all(r.state == "excluded" for r in chunks):
            units.append(
                Unit(run, chunks[0].subject, chunks[0].session, {}, {}, excluded=chunks[0].reason)
            )
            continue
        chunks = _chunk_records(ctx, "preprocess", run, index, refs)
        if chunks is None or run not in ingested:
            continue
        payload = {
            "chunks": [c.outputs["bold"] for c in chunks],
            "mask": refs[run].outputs["mask"],
            "raw": ingested[run].outputs["zarr"],
            "cutoff_s": ctx.param("preprocessing.highpass_cutoff_s"),
            "target": ctx.param("preprocessing.grand_mean_scaling"),
        }
        upstream = {"preprocess": content_key(keys=[c.key for c in chunks])}
        units.append(Unit(run, chunks[0].subject, chunks[0].session, upstream, payload))
    return plan_units(stage("filter"), units, ctx, run_filter)


def run_filter(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Scale to median 10000, high-pass (mean added back), write (t, z, y, x) in spatial blocks."""
    store, p = Store(spec.store_url), spec.payload
    attrs = run_attrs(store, p["raw"])
    affine, tr_s = np.asarray(attrs["affine"]), float(attrs["tr_s"])
    mask = read_array(store, p["mask"]).astype(bool)
    data = np.concatenate([read_array(store, key) for key in p["chunks"]])
    factor = 1.0
    if p["target"]:
        data, factor = grand_mean_scale(data, mask, p["target"])
    series = highpass_fsl(data[:, mask], tr_s, p["cutoff_s"], axis=0, add_mean=True)
    data[:, mask] = series.astype(np.float32)
    mean, snr = data.mean(axis=0), tsnr(data)
    out = p["out"]
    chunks = (
        data.shape[0],
        *(min(c, n) for c, n in zip(SPATIAL_CHUNK, data.shape[1:], strict=True)),
    )
    write_array(
        store,
        f"{out}/bold",
        data,
        ("t", "z", "y", "x"),
        chunks=chunks,
        attrs={"tr_s": tr_s, "affine": affine.tolist(), "scale_factor": factor},
    )
    entities = attrs["entities"]
    keys = {
        "mask": write_nifti(
            store, derivative_key(entities, "mask", ".nii.gz", desc="brain"), mask, affine
        ),
        "mean": write_nifti(
            store, derivative_key(entities, "boldref", ".nii.gz", desc="mean"), mean, affine
        ),
        "tsnr": write_nifti(
            store, derivative_key(entities, "boldmap", ".nii.gz", desc="tsnr"), snr, affine
        ),
    }
    overlay = derivative_key(entities, "mask", ".png", desc="qc")
    write_png(
        store,
        overlay,
        lambda path: save_mask_overlay_png(mean, mask, path, title=_run_of(spec.unit)),
    )
    return {
        "bold": f"{out}/bold",
        "scale_factor": factor,
        "tsnr_median": float(np.median(snr[mask])),
        "mask_voxels": int(mask.sum()),
        "overlay": overlay,
        **keys,
    }
