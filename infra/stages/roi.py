"""Engine side of ``group_roi``: ROI spheres and percent signal change, then the clinical tables.

One task for the study, once every group analysis is final:

* ROIs: spheres of ``boldcloud.roi.sphere_diameter_mm`` (4 mm) on the peak voxel of each
  significant cluster of the group maps named in ``boldcloud.roi.maps`` (``<node>:<contrast>``),
  plus any ``boldcloud.roi.coordinates`` given in the study file.
* Per subject and session: mean percent signal change in each ROI, featquery's definition
  (``processing.group.roi``): ``100 * effect * peak height / mean functional``, with the
  session's MNI effect and mean images (``normalise``) and the contrast's peak height (max - min
  of the contrast-weighted regressors of each run's design, averaged over the runs the session's
  fixed effects used). Subjects whose registration failed QC are left out. Then post - pre.
* Correlations and clinical tables: :mod:`infra.stages.clinical`.

The shared planning helpers (:func:`final_record`, :func:`inference_records`) serve the report
stage too (:mod:`infra.stages.report`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import read_array, read_tsv, write_tsv
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.clinical import clinical_tables, phenotype_table, roi_change_correlations
from infra.stages.firstlevel import run_model
from infra.stages.group import analyses, subjects_of
from infra.stages.group_inference import GROUP_ROOT
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.group.roi import roi_psc, sphere_mask
from processing.stages import stage

STUDY_UNIT = "study"
PACKAGES = ("boldcloud", "numpy", "scipy", "nibabel", "dipy", "dask", "zarr")


# ---------------------------------------------------------------- shared planning helpers
def final_record(records: dict[str, TaskRecord], unit: str) -> TaskRecord | None:
    """The record of ``unit`` when it is done or excluded (final), else None."""
    rec = records.get(unit)
    return rec if rec is not None and rec.state in ("done", "excluded") else None


def inference_records(ctx: PlanContext) -> list[TaskRecord] | None:
    """The group_inference record of every analysis, or None while any is unfinished."""
    records = ctx.load("group_inference")
    out = []
    for analysis in analyses(ctx):
        rec = final_record(records, analysis.label)
        if rec is None:
            return None
        out.append(rec)
    return out


def software_versions() -> dict[str, str]:
    """Installed versions of boldcloud and the scientific packages it relies on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _sessions(ctx: PlanContext) -> tuple[str, str] | None:
    chosen = ctx.param("boldcloud.clinical.paired_sessions")
    if chosen:
        return tuple(chosen)  # type: ignore[return-value]
    found = ctx.study.select("sessions") if ctx.study is not None else None
    return tuple(found[:2]) if found and len(found) >= 2 else None  # type: ignore[return-value]


def _contrast_weights(ctx: PlanContext) -> dict[str, dict[str, float]]:
    model, _ = run_model(ctx)
    return {
        c.name: dict(zip(c.conditions, c.weights[0], strict=True))
        for c in model.contrasts
        if c.test == "t"
    }


def _subject_sessions(ctx: PlanContext, contrasts: set[str]) -> dict[str, dict[str, dict]]:
    """Per subject and session: MNI effect keys per contrast, mean key, design TSVs per contrast."""
    normalised = ctx.done("normalise")
    fixed = ctx.done("fixed_effects")
    designs = ctx.done("design")
    out: dict[str, dict[str, dict]] = {}
    for subject in subjects_of(ctx):
        rec = normalised.get(f"sub-{subject}")
        if rec is None or rec.outputs.get("failed"):
            continue
        for key, ses in rec.outputs.get("sessions", {}).items():
            ents = dict(part.split("-", 1) for part in key.split("_"))
            fe = fixed.get(key)
            if fe is None:
                continue
            entry = {"mean": ses["mean"], "effects": {}, "designs": {}}
            for contrast in contrasts:
                effect = ses["maps"].get(f"{contrast}:effect")
                runs = fe.outputs.get("runs", {}).get(contrast, [])
                if effect is None or not all(r in designs for r in runs):
                    continue
                entry["effects"][contrast] = effect
                entry["designs"][contrast] = [designs[r].outputs["design"] for r in runs]
            out.setdefault(subject, {})[ents.get("ses", "")] = entry
    return out


# ---------------------------------------------------------------- group_roi
def plan_group_roi(ctx: PlanContext) -> StagePlan:
    """One task for the study once every group analysis has finished (or was excluded)."""
    if not analyses(ctx):
        return plan_units(stage("group_roi"), [], ctx, run_group_roi)
    inference = inference_records(ctx)
    if inference is None:
        return plan_units(stage("group_roi"), [], ctx, run_group_roi)
    weights = _contrast_weights(ctx)
    sources = []
    for ref in ctx.param("boldcloud.roi.maps") or []:
        node, _, contrast = ref.partition(":")
        for rec in inference:
            a = rec.outputs.get("analysis") if rec.state == "done" else None
            if a and a["node"] == node and a["contrast"] == contrast:
                sources.append({"map": ref, "label": rec.unit, "analysis": a,
                                "clusters": rec.outputs["clusters"],
                                "affine": rec.outputs["affine"],
                                "shape": rec.outputs["shape"]})  # fmt: skip
    coordinates = ctx.param("boldcloud.roi.coordinates") or []
    contrasts = {s["analysis"]["contrast"] for s in sources}
    contrasts |= {c.get("contrast") for c in coordinates if c.get("contrast")}
    unknown = sorted(c for c in contrasts if c not in weights)
    if unknown:
        raise ValueError(
            f"ROI contrasts {unknown} are not first-level t contrasts {sorted(weights)}"
        )
    phenotype, phenotype_key = phenotype_table(ctx)
    geometry = next(
        ((r.outputs["affine"], r.outputs["shape"]) for r in inference if r.state == "done"), None
    )
    payload = {
        "sources": sources,
        "coordinates": coordinates,
        "geometry": geometry,
        "subjects": _subject_sessions(ctx, contrasts),
        "weights": {c: weights[c] for c in contrasts},
        "phenotype": phenotype,
        "sessions": _sessions(ctx),
        "roi": {k: ctx.param(f"boldcloud.roi.{k}") for k in
                ("sphere_diameter_mm", "measure", "clinical_changes", "correlation", "alpha",
                 "robust_leave_one_out")},
        "clinical_measures": ctx.param("boldcloud.clinical.measures") or [],
        "cluster_p": float(ctx.param("boldcloud.inference.cluster_p")),
    }  # fmt: skip
    upstream = {
        "group_inference": content_key(keys=sorted(r.key for r in inference)),
        "normalise": content_key(keys=sorted(r.key for r in ctx.done("normalise").values())),
        "phenotype": phenotype_key,
        "coordinates": content_key(c=coordinates),
    }
    unit = Unit(STUDY_UNIT, None, None, upstream, payload)
    return plan_units(stage("group_roi"), [unit], ctx, run_group_roi)


def _roi_definitions(p: dict) -> list[dict[str, Any]]:
    rois = []
    for src in p["sources"]:
        a = src["analysis"]
        for row in src["clusters"]:
            if not row["p_fwe"] <= p["cluster_p"]:
                continue
            side = "pos" if row["side"] == "positive" else "neg"
            ses = a.get("session_label") or ""
            rois.append({
                "roi": f"{a['contrast']}{ses[:1].upper() + ses[1:]}{side.capitalize()}"
                       f"{row['cluster']}",
                "source": src["map"], "analysis": src["label"], "contrast": a["contrast"],
                "x_mm": row["peak_x_mm"], "y_mm": row["peak_y_mm"], "z_mm": row["peak_z_mm"],
                "peak_z": row["peak_z"], "p_fwe": row["p_fwe"], "side": row["side"],
            })  # fmt: skip
    for item in p["coordinates"]:
        x, y, z = item["mni_mm"]
        rois.append({"roi": item["name"], "source": "study file", "analysis": "",
                     "contrast": item["contrast"], "x_mm": x, "y_mm": y, "z_mm": z,
                     "peak_z": np.nan, "p_fwe": np.nan, "side": ""})  # fmt: skip
    return rois


def _peak_height(store: Store, tsv_keys: list[str], weights: dict[str, float]) -> float:
    """Mean over runs of max - min of the contrast-weighted regressors (FEAT's PPheights)."""
    heights = []
    for key in tsv_keys:
        design = read_tsv(store, key)
        columns = [c for c in weights if c in design.columns and weights[c] != 0]
        combined = sum(weights[c] * design[c].to_numpy(dtype=np.float64) for c in columns)
        heights.append(float(np.ptp(combined)) if columns else np.nan)
    return float(np.nanmean(heights)) if heights else np.nan


def run_group_roi(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """ROI percent signal change, change scores, correlations, clinical tables (TSV + PNG)."""
    store, p = Store(spec.store_url), spec.payload
    files: dict[str, Any] = {"scatter": {}}
    rois = _roi_definitions(p)
    pheno = pd.DataFrame(p["phenotype"])
    outputs: dict[str, Any] = {"rois": rois, "files": files}
    if rois and p["geometry"] is not None:
        affine = np.asarray(p["geometry"][0])
        shape_ijk = tuple(int(n) for n in reversed(p["geometry"][1]))
        masks = {r["roi"]: sphere_mask((r["x_mm"], r["y_mm"], r["z_mm"]), affine, shape_ijk,
                                       p["roi"]["sphere_diameter_mm"]) for r in rois}  # fmt: skip
        for r in rois:
            r["voxels"] = int(masks[r["roi"]].sum())
        files["rois"] = write_tsv(store, f"{GROUP_ROOT}/desc-roi_table.tsv", pd.DataFrame(rois))
        rows = []
        means: dict[tuple[str, str], np.ndarray] = {}
        for subject, sessions in sorted(p["subjects"].items()):
            for session, entry in sorted(sessions.items()):
                for r in rois:
                    c = r["contrast"]
                    if c not in entry["effects"]:
                        continue
                    if (subject, session) not in means:
                        means[(subject, session)] = read_array(store, entry["mean"]).T
                    effect = read_array(store, entry["effects"][c]).T
                    if p["roi"]["measure"] == "effect":
                        height, mean = 1.0, np.full(effect.shape, 100.0)
                    else:
                        height = _peak_height(store, entry["designs"][c], p["weights"][c])
                        mean = means[(subject, session)]
                    value = roi_psc(effect[None], mean, [height], masks[r["roi"]])[0]
                    rows.append({"subject": f"sub-{subject}", "session": session,
                                 "roi": r["roi"], "contrast": c, "peak_height": height,
                                 "psc": value})  # fmt: skip
        psc = pd.DataFrame(rows, columns=["subject", "session", "roi", "contrast",
                                          "peak_height", "psc"])  # fmt: skip
        files["psc"] = write_tsv(store, f"{GROUP_ROOT}/desc-psc_table.tsv", psc)
        outputs["n_psc"] = len(psc)
        if p["sessions"] and len(psc):
            pre, post = p["sessions"]
            wide = psc.pivot_table(index=["subject", "roi"], columns="session", values="psc")
            if pre in wide.columns and post in wide.columns:
                change = (wide[post] - wide[pre]).unstack("roi")
                change.index = [s.removeprefix("sub-") for s in change.index]
                table = change.reset_index(names="subject")
                table["subject"] = "sub-" + table["subject"]
                files["change"] = write_tsv(store, f"{GROUP_ROOT}/desc-pscchange_table.tsv", table)
                outputs["correlations"] = roi_change_correlations(store, p, change, pheno, files)
    outputs["clinical"] = clinical_tables(store, p, pheno, files)
    outputs["software"] = software_versions()
    return outputs


__all__ = [
    "STUDY_UNIT",
    "final_record",
    "inference_records",
    "plan_group_roi",
    "run_group_roi",
    "software_versions",
]
