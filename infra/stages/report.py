"""Engine side of the study's last two stages: ROI + clinical statistics, and the HTML report.

``group_roi`` (one task for the study, once every group analysis is final):

* ROIs: spheres of ``boldcloud.roi.sphere_diameter_mm`` (4 mm) on the peak voxel of each
  significant cluster of the group maps named in ``boldcloud.roi.maps`` (``<node>:<contrast>``),
  plus any ``boldcloud.roi.coordinates`` given in the study file.
* Per subject and session: mean percent signal change in each ROI, featquery's definition
  (``processing.group.roi``): ``100 * effect * peak height / mean functional``, with the
  session's MNI effect and mean images (``normalise``) and the contrast's peak height (max - min
  of the contrast-weighted regressors of each run's design, averaged over the runs the session's
  fixed effects used). Subjects whose registration failed QC are left out. Then post - pre.
* Correlations (Spearman by default, Pearson on request) of the ROI changes with the change
  scores named in ``boldcloud.roi.clinical_changes`` (phenotype columns with a ``session_id``:
  post - pre; columns without sessions, e.g. practice minutes, as they are), pairwise-complete N,
  with the outlier-robust repeat; scatter plots.
* Clinical tables (``boldcloud.clinical``): paired t-tests pre vs post per measure with mean
  (SD), t, P, d_z and d_av, and the Pearson correlation matrix of the pre measures.

``group_report``: ``derivatives/boldcloud/group/report.html``, self-contained (images embedded),
listing the cohort and every exclusion with its reason, cluster tables, thumbnails, ROI, clinical
tables and a methods paragraph generated from the parameters that ran.
"""

from __future__ import annotations

import base64
import html
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import read_array, read_tsv, write_tsv
from infra.derivatives import write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import run_model
from infra.stages.group import analyses, subjects_of
from infra.stages.group_inference import GROUP_ROOT
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.group.clinical import correlation_matrix, paired_tests, roi_correlations
from processing.group.roi import roi_psc, sphere_mask
from processing.stages import stage

REPORT_KEY = f"{GROUP_ROOT}/report.html"
STUDY_UNIT = "study"


# ---------------------------------------------------------------- shared planning helpers
def _final(records: dict[str, TaskRecord], unit: str) -> TaskRecord | None:
    rec = records.get(unit)
    return rec if rec is not None and rec.state in ("done", "excluded") else None


def _inference_records(ctx: PlanContext) -> list[TaskRecord] | None:
    """The group_inference record of every analysis, or None while any is unfinished."""
    records = ctx.load("group_inference")
    out = []
    for analysis in analyses(ctx):
        rec = _final(records, analysis.label)
        if rec is None:
            return None
        out.append(rec)
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


def _phenotype(ctx: PlanContext) -> tuple[dict[str, dict], str]:
    """Phenotype + participants as {column: {subject: value}} (session tables: ``<col>_<ses>``),
    and a fingerprint of what was used."""
    wanted = ctx.param("boldcloud.clinical.phenotype_tables")
    tables = dict(ctx.dataset.phenotype or {})
    if wanted:
        missing = [t for t in wanted if t not in tables]
        if missing:
            raise ValueError(
                f"boldcloud.clinical.phenotype_tables names {missing}, not in the dataset's "
                f"phenotype/ folder (tables: {sorted(tables)})"
            )
        tables = {k: v for k, v in tables.items() if k in wanted}
    if ctx.dataset.participants is not None:
        tables = {"participants": ctx.dataset.participants, **tables}
    wide: dict[str, dict] = {}
    for table in tables.values():
        if "participant_id" not in table.columns:
            continue
        subjects = table["participant_id"].astype(str).str.removeprefix("sub-")
        sessions = (
            table["session_id"].astype(str).str.removeprefix("ses-")
            if "session_id" in table.columns
            else None
        )
        for column in table.columns:
            if column in ("participant_id", "session_id"):
                continue
            values = pd.to_numeric(table[column], errors="coerce")
            if values.isna().all():
                continue
            for i, value in enumerate(values):
                name = column if sessions is None else f"{column}_{sessions.iloc[i]}"
                if value == value:
                    wide.setdefault(name, {})[subjects.iloc[i]] = float(value)
    return wide, content_key(wide=wide)


# ---------------------------------------------------------------- group_roi
def plan_group_roi(ctx: PlanContext) -> StagePlan:
    """One task for the study once every group analysis has finished (or was excluded)."""
    if not analyses(ctx):
        return plan_units(stage("group_roi"), [], ctx, run_group_roi)
    inference = _inference_records(ctx)
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
    phenotype, phenotype_key = _phenotype(ctx)
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
                outputs["correlations"] = _correlations(store, p, change, pheno, files)
    clinical = _clinical(store, p, pheno, files)
    outputs["clinical"] = clinical
    return outputs


def _change_scores(p: dict, pheno: pd.DataFrame) -> pd.DataFrame:
    scores = {}
    pre, post = p["sessions"]
    for name in p["roi"]["clinical_changes"] or []:
        if f"{name}_{pre}" in pheno.columns and f"{name}_{post}" in pheno.columns:
            scores[f"{name}_change"] = pheno[f"{name}_{post}"] - pheno[f"{name}_{pre}"]
        elif name in pheno.columns:
            scores[name] = pheno[name]
        else:
            raise ValueError(
                f"boldcloud.roi.clinical_changes names {name!r}, which is neither a phenotype "
                f"column with sessions {pre}/{post} nor a subject-level column; available: "
                f"{sorted(pheno.columns)}"
            )
    return pd.DataFrame(scores, index=pheno.index)


def _correlations(store, p, change: pd.DataFrame, pheno: pd.DataFrame, files) -> list[dict]:
    scores = _change_scores(p, pheno)
    if scores.empty:
        return []
    method = p["roi"]["correlation"]
    robust = bool(p["roi"]["robust_leave_one_out"])
    frames = [roi_correlations(change, scores, method=m, robust=robust)
              for m in dict.fromkeys([method, "spearman", "pearson"])]  # fmt: skip
    table = pd.concat(frames, ignore_index=True)
    if "dropped_subject" in table.columns:
        table["dropped_subject"] = [
            f"sub-{s}" if isinstance(s, str) else s for s in table["dropped_subject"]
        ]
    table["significant"] = table["p"] <= p["roi"]["alpha"]
    files["correlations"] = write_tsv(store, f"{GROUP_ROOT}/desc-roicorrelations_table.tsv", table)
    left, right = change.align(scores, join="outer", axis=0)
    for roi in change.columns:
        for score in scores.columns:
            row = table[(table.roi == roi) & (table.score == score) & (table.method == method)]
            key = f"{GROUP_ROOT}/roi/desc-{roi}_score-{score.replace('_', '')}_scatter.png"
            files["scatter"][f"{roi}|{score}"] = write_png(
                store, key, lambda path, r=roi, s=score, row=row: _scatter(
                    right[s].to_numpy(float), left[r].to_numpy(float), list(left.index),
                    path, r, s, row.iloc[0].to_dict() if len(row) else {}),
            )  # fmt: skip
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
            for rec in table.to_dict("records")]  # fmt: skip


def _scatter(x, y, labels, path, roi: str, score: str, stats: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.4), dpi=100)
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], s=18, color="tab:blue")
    for xi, yi, lab in zip(x[ok], y[ok], np.asarray(labels)[ok], strict=True):
        ax.annotate(str(lab), (xi, yi), fontsize=6, alpha=0.6)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, icept = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 10)
        ax.plot(xs, slope * xs + icept, color="grey", lw=1)
    r, pval, n = stats.get("r", np.nan), stats.get("p", np.nan), stats.get("n", 0)
    ax.set_title(f"{roi} vs {score}\n{stats.get('method', '')} r={r:.2f} p={pval:.3g} N={n}",
                 fontsize=8)  # fmt: skip
    ax.set_xlabel(score, fontsize=8)
    ax.set_ylabel(f"{roi} PSC change", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _clinical(store: Store, p: dict, pheno: pd.DataFrame, files: dict) -> dict[str, Any]:
    measures = list(p["clinical_measures"])
    if not measures or not p["sessions"]:
        return {}
    pre, post = p["sessions"]
    missing = [m for m in measures if f"{m}_{pre}" not in pheno.columns]
    if missing:
        known = sorted({c.rsplit("_", 1)[0] for c in pheno.columns if c.endswith(f"_{pre}")})
        raise ValueError(
            f"boldcloud.clinical.measures {missing} are not phenotype columns with sessions "
            f"{pre}/{post}; available: {known}"
        )
    tests = paired_tests(pheno, measures, pre_suffix=f"_{pre}", post_suffix=f"_{post}")
    table = tests.reset_index()
    files["clinical_paired"] = write_tsv(store, f"{GROUP_ROOT}/desc-clinicalpaired_table.tsv",
                                         table)  # fmt: skip
    r, pv, n = correlation_matrix(pheno, [f"{m}_{pre}" for m in measures], method="pearson")
    long = pd.DataFrame(
        [{"a": a, "b": b, "r": r.loc[a, b], "p": pv.loc[a, b], "n": n.loc[a, b]}
         for i, a in enumerate(r.index) for b in r.index[i + 1:]]
    )  # fmt: skip
    files["clinical_correlations"] = write_tsv(
        store, f"{GROUP_ROOT}/desc-clinicalcorrelations_table.tsv", long
    )
    return {"paired": [{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                       for rec in table.to_dict("records")]}  # fmt: skip


# ---------------------------------------------------------------- group_report
def plan_group_report(ctx: PlanContext) -> StagePlan:
    """The study report once the ROI/clinical task and every analysis are final."""
    units = []
    inference = _inference_records(ctx) if analyses(ctx) else None
    roi = _final(ctx.load("group_roi"), STUDY_UNIT)
    if inference is not None and roi is not None:
        stacks = ctx.load("group_stack")
        normalised = ctx.load("normalise")
        selected = set(subjects_of(ctx))
        payload = {
            "study": ctx.study.name if ctx.study is not None else "study",
            "analyses": [
                {"label": r.unit, "state": r.state, "reason": r.reason, "outputs": r.outputs}
                for r in inference
            ],
            "stacks": {
                u: {
                    "state": r.state,
                    "reason": r.reason,
                    "excluded": r.outputs.get("excluded", {}),
                    "subjects": r.outputs.get("subjects", []),
                }
                for u, r in stacks.items()
            },
            "subjects": {
                u: {
                    "state": r.state,
                    "reason": r.reason,
                    "failed": bool(r.outputs.get("failed")),
                    "qc": r.outputs.get("qc"),
                    "source": r.outputs.get("source"),
                }
                for u, r in normalised.items()
                if u.removeprefix("sub-") in selected
            },
            "runs": _run_exclusions(ctx),
            "roi": roi.outputs if roi.state == "done" else {"reason": roi.reason},
            "params": _methods_params(ctx),
        }
        upstream = {
            "group_inference": content_key(keys=sorted(r.key for r in inference)),
            "group_roi": roi.key,
            "summary": content_key(p=payload["subjects"], r=payload["runs"]),
        }
        units.append(Unit("report", None, None, upstream, payload))
    return plan_units(stage("group_report"), units, ctx, run_group_report)


def _run_exclusions(ctx: PlanContext) -> dict[str, Any]:
    runs = ctx.run_keys()
    filt = ctx.load("filter")
    sessions = ctx.load("fixed_effects")
    excluded = {u: r.reason for u, r in filt.items() if r.state == "excluded"}
    return {
        "total": len(runs),
        "excluded": excluded,
        "sessions_excluded": {u: r.reason for u, r in sessions.items() if r.state == "excluded"},
    }


PARAMS = (
    "preprocessing.motion_exclusion_mm", "preprocessing.smoothing_fwhm_mm",
    "preprocessing.highpass_cutoff_s", "preprocessing.grand_mean_scaling",
    "boldcloud.run_level.noise_model", "boldcloud.run_level.autocorr_bias_correction",
    "boldcloud.session_level.dof_cap", "boldcloud.group_level.estimator",
    "boldcloud.inference.method", "boldcloud.inference.statistic",
    "boldcloud.inference.cluster_forming_z", "boldcloud.inference.cluster_p",
    "boldcloud.inference.n_permutations", "boldcloud.inference.seed",
    "boldcloud.inference.two_sided", "boldcloud.roi.sphere_diameter_mm",
    "boldcloud.roi.correlation",
)  # fmt: skip


def _methods_params(ctx: PlanContext) -> dict[str, Any]:
    return {name: ctx.param(name) for name in PARAMS}


def _versions() -> dict[str, str]:
    out = {}
    for name in ("boldcloud", "numpy", "scipy", "nibabel", "dipy", "dask", "zarr"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _methods(params: dict[str, Any], versions: dict[str, str]) -> str:
    g = params.get
    inference = g("boldcloud.inference.method")
    text = (
        f"Runs with any TR-to-TR displacement above {g('preprocessing.motion_exclusion_mm')} mm "
        f"were excluded. Data were motion corrected, smoothed with a "
        f"{g('preprocessing.smoothing_fwhm_mm')} mm FWHM Gaussian, grand-mean scaled to "
        f"{g('preprocessing.grand_mean_scaling')} and high-pass filtered "
        f"({g('preprocessing.highpass_cutoff_s')} s cutoff). First-level GLMs used the "
        f"{g('boldcloud.run_level.noise_model')} noise model; runs of a session were combined by "
        f"inverse-variance fixed effects (dof cap {g('boldcloud.session_level.dof_cap')}), and "
        "the session maps were warped to MNI152NLin2009aSym 2 mm (T1w affine + SyN, EPI rigid to "
        f"T1w). Group maps were estimated with {g('boldcloud.group_level.estimator').upper()} "
        "(between-subject variance by REML per voxel; paired post - pre differences with summed "
        "variances). "
    )
    if inference == "permutation":
        text += (
            f"Inference used {g('boldcloud.inference.n_permutations')} sign flips (seed "
            f"{g('boldcloud.inference.seed')}; exhaustive when fewer exist) of the OLS t "
            f"statistic, cluster-forming threshold Z > {g('boldcloud.inference.cluster_forming_z')}"
            f", {g('boldcloud.inference.statistic')} FWE-corrected P < "
            f"{g('boldcloud.inference.cluster_p')}"
            f"{', both signs' if g('boldcloud.inference.two_sided') else ''}. "
        )
    elif inference == "grf":
        text += (
            "Clusters were corrected with Gaussian random field theory (FEAT's method) at Z > "
            f"{g('boldcloud.inference.cluster_forming_z')}, "
            f"P < {g('boldcloud.inference.cluster_p')}. "
        )
    text += (
        f"ROIs were {g('boldcloud.roi.sphere_diameter_mm')} mm spheres on significant cluster "
        "peaks; percent signal change followed featquery (100 x effect x regressor peak height / "
        f"mean functional); {g('boldcloud.roi.correlation')} correlations with clinical change "
        "scores used pairwise-complete subjects. Software: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + "."
    )
    return text


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ study }}: group report</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd}.muted{color:#777}.ex{color:#a33}
</style></head><body>
<h1>{{ study }}: group report</h1>
<p class="muted">Generated {{ generated }} by boldcloud {{ versions.get('boldcloud', '') }}.</p>
<h2 id="cohort">Cohort and exclusions</h2>
<p>{{ subjects|length }} subject(s); {{ runs.total }} run(s), {{ runs.excluded|length }} excluded.</p>
<table><tr><th class="l">subject</th><th class="l">normalisation</th><th class="l">reason</th></tr>
{% for s, info in subjects|dictsort %}<tr><td class="l">{{ s }}</td>
<td class="l">{{ 'failed QC' if info.failed else info.state }}</td>
<td class="l">{{ info.reason or '' }}</td></tr>{% endfor %}</table>
{% if runs.excluded %}<h3>Excluded runs</h3><table><tr><th class="l">run</th><th class="l">reason</th></tr>
{% for r, why in runs.excluded|dictsort %}<tr><td class="l">{{ r }}</td><td class="l">{{ why }}</td></tr>
{% endfor %}</table>{% endif %}
{% if runs.sessions_excluded %}<h3>Excluded sessions</h3><table><tr><th class="l">session</th><th class="l">reason</th></tr>
{% for r, why in runs.sessions_excluded|dictsort %}<tr><td class="l">{{ r }}</td><td class="l">{{ why }}</td></tr>
{% endfor %}</table>{% endif %}
<h2 id="group">Group maps</h2>
{% for a in analyses %}<h3 id="{{ a.label }}">{{ a.label }}</h3>
{% if a.state != 'done' %}<p class="ex">Not estimated: {{ a.reason }}</p>{% else %}
<p>N = {{ a.outputs.n }} ({{ a.names }}); dof {{ '%.1f'|format(a.outputs.dof) }};
inference: {{ a.outputs.inference.method }}{% if a.outputs.inference.n_permutations %}, {{ a.outputs.inference.n_permutations }} permutations{% endif %}.
{{ a.outputs.significant }} significant cluster(s).</p>
{% if a.outputs.excluded %}<p class="ex">Left out: {% for s, why in a.outputs.excluded|dictsort %}sub-{{ s }} ({{ why }}){% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% if a.image %}<img alt="z map of {{ a.label }}" src="{{ a.image }}">{% endif %}
{{ a.table }}{% endif %}{% endfor %}
<h2 id="roi">ROI analysis</h2>
{% if roi_tables %}{% for t in roi_tables %}<h3>{{ t.title }}</h3>{{ t.html }}{% endfor %}
{% else %}<p class="muted">No ROI: {{ roi_reason }}</p>{% endif %}
{% for img in scatter %}<img alt="{{ img.alt }}" src="{{ img.src }}" style="width:32%">{% endfor %}
<h2 id="clinical">Clinical statistics</h2>
{% if clinical_tables %}{% for t in clinical_tables %}<h3>{{ t.title }}</h3>{{ t.html }}{% endfor %}
{% else %}<p class="muted">No clinical measures configured or available.</p>{% endif %}
<h2 id="methods">Methods</h2><p>{{ methods }}</p>
</body></html>
"""  # noqa: E501


def _png_data(store: Store, key: str | None) -> str | None:
    if not key or not store.exists(key):
        return None
    return "data:image/png;base64," + base64.b64encode(store.read_bytes(key)).decode()


def _html_table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    if frame is None or frame.empty:
        return '<p class="muted">(none)</p>'
    shown = frame[[c for c in (columns or frame.columns) if c in frame.columns]]
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="n/a",
                         border=0, escape=True)  # fmt: skip


def run_group_report(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Render the self-contained HTML report."""
    import jinja2
    from markupsafe import Markup

    store, p = Store(spec.store_url), spec.payload
    cluster_cols = ["side", "cluster", "voxels", "volume_mm3", "p_fwe", "peak_z", "peak_x_mm",
                    "peak_y_mm", "peak_z_mm", "cog_x_mm", "cog_y_mm", "cog_z_mm"]  # fmt: skip
    shown = []
    for a in p["analyses"]:
        entry = dict(a)
        if a["state"] == "done":
            files = a["outputs"]["files"]
            entry["image"] = _png_data(store, files.get("thumbnail"))
            table = _html_table(read_tsv(store, files["clusters"]), cluster_cols)
            entry["table"] = Markup(table)
            entry["names"] = ", ".join(f"sub-{s}" for s in a["outputs"]["subjects"])
        shown.append(entry)
    roi = p["roi"]
    files = roi.get("files", {})
    roi_tables, clinical_tables = [], []
    for key, title in (("rois", "ROIs"), ("change", "Percent signal change, post - pre"),
                       ("correlations", "Correlations with clinical change scores")):  # fmt: skip
        if files.get(key):
            roi_tables.append({"title": title, "html": _html_table(read_tsv(store, files[key]))})
    clinical_titles = (
        ("clinical_paired", "Paired t-tests, post vs pre (d_z and d_av)"),
        ("clinical_correlations", "Pearson correlations of pre measures"),
    )
    for key, title in clinical_titles:
        if files.get(key):
            clinical_tables.append({"title": title,
                                    "html": _html_table(read_tsv(store, files[key]))})  # fmt: skip
    scatter = [{"alt": name, "src": _png_data(store, key)}
               for name, key in sorted(files.get("scatter", {}).items())]  # fmt: skip
    versions = _versions()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    page = env.from_string(TEMPLATE).render(
        study=p["study"],
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        versions=versions,
        subjects=p["subjects"],
        runs=p["runs"],
        analyses=shown,
        roi_tables=[{"title": t["title"], "html": Markup(t["html"])} for t in roi_tables],
        roi_reason=html.escape(roi.get("reason") or "no significant cluster in the ROI maps"),
        scatter=scatter,
        clinical_tables=[{"title": t["title"], "html": Markup(t["html"])} for t in clinical_tables],
        methods=_methods(p["params"], versions),
    )
    store.write_bytes(REPORT_KEY, page.encode())
    return {"report": REPORT_KEY, "analyses": len(shown),
            "significant": sum(a["outputs"].get("significant", 0) for a in shown
                               if a["state"] == "done")}  # fmt: skip


__all__ = ["REPORT_KEY", "plan_group_report", "plan_group_roi"]
