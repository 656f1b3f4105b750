"""Check a finished simulated reference study against the simulator's planted truth (issue 6).

Given the store of ``boldcloud run`` on ``boldcloud simulate`` output and the simulated BIDS root,
three criteria are checked against ``<bids>/derivatives/truth/truth.json``:

1. **Planted clusters.** For every planted ROI with a post - pre change (``change_condition``
   set, ``change_mean_sd_psc`` mean non-zero), the paired analysis
   ``ses-postMinusPre_task-<task>_contrast-<analysis_contrast>`` (``P40-P0`` -> ``P40vsP0``) has a
   significant cluster (``p_fwe <= alpha``) on the side of the planted change (rTPJ: negative,
   dlPFC/vPCC: positive) whose peak, or one of its local maxima (the cluster table's peaks, as
   FSL lists them), lies within ``--peak-mm`` (6 mm) of the planted MNI coordinate. The
   distance of the cluster's largest group effect (``cope_max``, FSL's COPE-MAX) is shown
   beside it, not judged.
2. **ROI-clinical correlations.** For every planted correlation (``correlations``: roi, measure,
   target_r), the ``group_roi`` correlation of the pipeline's ROI at that place (an ROI of a
   contrast the planted change enters, centred within ``--fp-fwhm`` x FWHM of the planted
   coordinate, the rule of criterion 3; ROIs built on cluster peaks are preferred over
   study-file coordinates, then the nearest) with the measure's
   change score (``<measure>_change``) has the sign of ``target_r``, in the study's correlation
   method (Spearman by default; Pearson is shown beside it).
3. **No false positives.** Every significant cluster of every post - pre map is explained by a
   planted change in that contrast: its peak or one of its listed local maxima (as in
   criterion 1) lies within ``--fp-fwhm`` (1.5) x the FWHM of the change's blob
   (``change_fwhm_mm`` in the truth; 12 mm for the simulator's 8 mm change blobs) of a blob
   whose change enters the contrast, on the side of that change. Any other significant
   cluster is a false positive.

Where the outputs live: ``manifest/tasks/group_inference/<analysis>.json`` (``outputs.clusters``:
the cluster table rows, ``outputs.files.peaks``: local maxima TSV) and
``manifest/tasks/group_roi/study.json`` (``outputs.rois``, ``outputs.correlations``).

    .venv/bin/python benchmarks/validate_study.py --store STORE --bids BIDS [--json OUT]

Exit status 0 when every criterion passes, 1 otherwise (2 for unusable inputs). The one-sample
maps of each session are listed too, with the count of unexplained clusters beside the number
expected by chance (informational, ``validate_sessions.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.arrays import read_tsv
from infra.manifest import Manifest, TaskRecord
from infra.storage import Store

sys.path.insert(0, str(Path(__file__).parent))
from validate_sessions import SESSION_COLUMNS, check_sessions, session_analyses

PAIRED_LABEL = "postMinusPre"
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Blob:
    """One planted ROI of the simulator's truth.

    Attributes
    ----------
    name : str
        ROI name (``rTPJ``).
    mni_mm : ndarray, shape (3,)
        Planted MNI coordinate.
    fwhm_mm : float
        FWHM of the planted change's blob (of the ROI's blob when the truth predates separate
        change blobs, or the ROI has no change).
    analysis_contrast : str
        First-level contrast of the analysis, as the pipeline names it (``P40vsP0``).
    change_condition : str or None
        Condition whose amplitude changes post - pre.
    change_mean : float
        Mean planted post - pre change (% signal change).
    """

    name: str
    mni_mm: np.ndarray
    fwhm_mm: float
    analysis_contrast: str
    change_condition: str | None
    change_mean: float

    @property
    def changes(self) -> bool:
        """Whether a post - pre change was planted."""
        return self.change_condition is not None and self.change_mean != 0.0


# ---------------------------------------------------------------- truth and contrasts
def contrast_label(expression: str) -> str:
    """The pipeline's contrast name of a truth contrast expression (``P40-P0`` -> ``P40vsP0``)."""
    return "vs".join(part.strip() for part in expression.split("-"))


def contrast_weights(label: str, conditions: set[str]) -> dict[str, float]:
    """Condition weights of a contrast name (``P40vsP0`` -> ``{P40: 1, P0: -1}``).

    Parameters
    ----------
    label : str
        First-level contrast name as in the output entity.
    conditions : set of str
        Condition names known from the truth.

    Returns
    -------
    dict
        Empty when the name is neither a condition nor ``<condition>vs<condition>``.
    """
    if label in conditions:
        return {label: 1.0}
    for match in re.finditer("vs", label):
        left, right = label[: match.start()], label[match.end() :]
        if left in conditions and right in conditions:
            return {left: 1.0, right: -1.0}
    return {}


def expected_sign(blob: Blob, weights: dict[str, float]) -> int:
    """Sign of the blob's planted post - pre change in a contrast (0 when it does not enter)."""
    if not blob.changes:
        return 0
    weight = weights.get(blob.change_condition or "", 0.0)
    return int(np.sign(weight * blob.change_mean))


def load_truth(bids: Path) -> dict[str, Any]:
    """The simulator's ``derivatives/truth/truth.json``."""
    path = bids / "derivatives" / "truth" / "truth.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no simulator truth at {path} (is this `boldcloud simulate` output?)"
        )
    return json.loads(path.read_text())


def blobs_of(truth: dict[str, Any]) -> list[Blob]:
    """Planted ROIs of the truth as :class:`Blob`."""
    return [
        Blob(
            name=r["name"],
            mni_mm=np.asarray(r["mni_mm"], dtype=float),
            fwhm_mm=float(r.get("change_fwhm_mm") or r.get("fwhm_mm") or 8.0),
            analysis_contrast=contrast_label(r["analysis_contrast"]),
            change_condition=r.get("change_condition"),
            change_mean=float((r.get("change_mean_sd_psc") or [0.0])[0]),
        )
        for r in truth["rois"]
    ]


def conditions_of(truth: dict[str, Any]) -> set[str]:
    """Every condition named in the truth's ROIs."""
    out: set[str] = set()
    for r in truth["rois"]:
        out |= set(r.get("pre_mean_sd_psc", {}))
        if r.get("change_condition"):
            out.add(r["change_condition"])
    return out


# ---------------------------------------------------------------- store
def paired_analyses(manifest: Manifest) -> dict[str, TaskRecord]:
    """``group_inference`` records of the post - pre group-mean analyses, by contrast."""
    out = {}
    for rec in manifest.records("group_inference"):
        if f"ses-{PAIRED_LABEL}_" not in rec.unit + "_":
            continue
        analysis = rec.outputs.get("analysis") or {}
        if analysis.get("group_contrast"):
            continue
        contrast = analysis.get("contrast") or rec.unit.rsplit("contrast-", 1)[-1]
        out[contrast] = rec
    return out


def alpha_of(records: dict[str, TaskRecord], override: float | None) -> float:
    """Cluster P threshold: ``--alpha``, else the run's ``boldcloud.inference.cluster_p``."""
    if override is not None:
        return override
    for rec in records.values():
        value = rec.params.get("boldcloud.inference.cluster_p")
        if value is not None:
            return float(value)
    return DEFAULT_ALPHA


def significant(rec: TaskRecord | None, alpha: float) -> list[dict[str, Any]]:
    """Significant cluster rows of an analysis (none unless it is done)."""
    if rec is None or rec.state != "done":
        return []
    rows = rec.outputs.get("clusters") or []
    return [r for r in rows if _finite(r.get("p_fwe")) and r["p_fwe"] <= alpha]


def local_maxima(store: Store, rec: TaskRecord) -> list[dict[str, Any]]:
    """Rows of the analysis' local-maxima TSV (empty when it cannot be read)."""
    key = (rec.outputs.get("files") or {}).get("peaks")
    if not key or not store.exists(key):
        return []
    return read_tsv(store, key).to_dict("records")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _peak(row: dict[str, Any]) -> np.ndarray:
    return np.array([row["peak_x_mm"], row["peak_y_mm"], row["peak_z_mm"]], dtype=float)


def _state(rec: TaskRecord | None) -> str:
    if rec is None:
        return "missing"
    return rec.state if rec.state == "done" else f"{rec.state}: {rec.reason or rec.error}"


# ---------------------------------------------------------------- criterion 1
def check_clusters(
    store: Store, blobs: list[Blob], paired: dict[str, TaskRecord], alpha: float,
    conditions: set[str], peak_mm: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Criterion 1: a significant cluster of the planted sign near each planted change.

    "Near" means the cluster's peak or one of its local maxima (the cluster table's peaks, at
    least 8 mm apart, as FSL lists them and as the paper reports its vPCC coordinate) lies
    within ``peak_mm`` of the planted coordinate; both distances are reported.

    Parameters
    ----------
    store : Store
        The run's store (local-maxima TSVs).
    blobs : list of Blob
        Planted ROIs; those without a post - pre change are skipped.
    paired : dict
        Post - pre ``group_inference`` records by contrast (:func:`paired_analyses`).
    alpha : float
        Cluster FWE p threshold.
    conditions : set of str
        Condition names (:func:`conditions_of`).
    peak_mm : float
        Largest planted-to-peak distance that passes.

    Returns
    -------
    list of dict
        One row per changed blob: the nearest significant cluster of the expected side, its
        distance, FWE p, peak Z and ``ok``.
    """
    rows = []
    for blob in (b for b in blobs if b.changes):
        rec = paired.get(blob.analysis_contrast)
        sign = expected_sign(blob, contrast_weights(blob.analysis_contrast, conditions))
        side = "positive" if sign > 0 else "negative"
        row: dict[str, Any] = {
            "roi": blob.name, "analysis": f"ses-{PAIRED_LABEL} {blob.analysis_contrast}",
            "planted_mni_mm": blob.mni_mm.tolist(), "expected_side": side,
            "analysis_state": _state(rec), "cluster": None, "peak_mni_mm": None,
            "distance_mm": None, "p_fwe": None, "peak_z": None, "nearest_local_max_mm": None,
            "cope_max_mm": None,
        }  # fmt: skip
        candidates = [r for r in significant(rec, alpha) if r["side"] == side]
        if candidates:
            best = min(candidates, key=lambda r: np.linalg.norm(_peak(r) - blob.mni_mm))
            row.update(
                cluster=int(best["cluster"]), peak_mni_mm=_peak(best).tolist(),
                distance_mm=float(np.linalg.norm(_peak(best) - blob.mni_mm)),
                p_fwe=float(best["p_fwe"]), peak_z=float(best["peak_z"]),
                nearest_local_max_mm=_nearest_local_max(store, rec, best, blob),
                cope_max_mm=_cope_max_distance(best, blob),
            )  # fmt: skip
        near = [d for d in (row["distance_mm"], row["nearest_local_max_mm"]) if d is not None]
        row["ok"] = bool(near) and min(near) <= peak_mm
        rows.append(row)
    return rows


def _cope_max_distance(cluster: dict, blob: Blob) -> float | None:
    """Distance from the blob to the cluster's largest effect (informational, not judged)."""
    xyz = [cluster.get(f"cope_max_{a}_mm") for a in "xyz"]
    if not all(_finite(v) for v in xyz):
        return None
    return float(np.linalg.norm(np.asarray(xyz, dtype=float) - blob.mni_mm))


def cluster_maxima(store: Store | None, rec: TaskRecord, cluster: dict) -> np.ndarray:
    """MNI mm of the cluster's listed local maxima, shape (k, 3) (k = 0 without a store)."""
    rows = [] if store is None else local_maxima(store, rec)
    xyz = [
        [m["x_mm"], m["y_mm"], m["z_mm"]] for m in rows
        if m["side"] == cluster["side"] and int(m["cluster"]) == int(cluster["cluster"])
    ]  # fmt: skip
    return np.array(xyz, dtype=float).reshape(-1, 3)


def _nearest_local_max(store: Store, rec: TaskRecord, cluster: dict, blob: Blob) -> float | None:
    """Distance from the blob to the nearest local maximum of the cluster."""
    xyz = cluster_maxima(store, rec, cluster)
    if not len(xyz):
        return None
    return float(np.linalg.norm(xyz - blob.mni_mm, axis=1).min())


# ---------------------------------------------------------------- criterion 2
def contrasts_with_change(blob: Blob, contrasts: set[str], conditions: set[str]) -> set[str]:
    """Contrast names (of ``contrasts`` and the blob's own) that the blob's change enters."""
    names = contrasts | {blob.analysis_contrast}
    return {c for c in names if expected_sign(blob, contrast_weights(c, conditions)) != 0}


def pick_roi(rois: list[dict], blob: Blob, contrasts: set[str], radius_mm: float) -> dict | None:
    """The pipeline ROI for a blob: a matching contrast, centred within ``radius_mm``; ROIs on
    cluster peaks before study-file coordinates, then the nearest."""
    near = []
    for roi in rois:
        if roi.get("contrast") not in contrasts:
            continue
        centre = np.array([roi["x_mm"], roi["y_mm"], roi["z_mm"]], dtype=float)
        distance = float(np.linalg.norm(centre - blob.mni_mm))
        if distance <= radius_mm:
            near.append((roi.get("source") == "study file", distance, roi))
    if not near:
        return None
    _, distance, roi = min(near, key=lambda item: item[:2])
    return {**roi, "distance_mm": distance}


def correlation_row(rows: list[dict], roi: str, measure: str, method: str) -> dict | None:
    """The ``group_roi`` correlation of an ROI with a measure's change score."""
    for score in (f"{measure}_change", measure):
        for row in rows:
            if row["roi"] == roi and row["score"] == score and row["method"] == method:
                return row
    return None


def check_correlations(
    roi_rec: TaskRecord | None, blobs: list[Blob], truth: dict[str, Any],
    conditions: set[str], fwhm_multiple: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Criterion 2: the sign of each planted ROI x clinical-change correlation.

    Parameters
    ----------
    roi_rec : TaskRecord or None
        The ``group_roi/study`` record.
    blobs : list of Blob
        Planted ROIs.
    truth : dict
        The simulator's truth (``correlations``: roi, measure, target_r).
    conditions : set of str
        Condition names (:func:`conditions_of`).
    fwhm_multiple : float
        An ROI belongs to a blob when centred within this many blob FWHMs of it (the rule
        criterion 3 uses to explain a cluster by a blob).

    Returns
    -------
    list of dict
        One row per planted correlation: the pipeline ROI used, r, p, N (study method and the
        other one), ``ok`` (right sign) and the ROIs nearby (information only).
    """
    done = roi_rec is not None and roi_rec.state == "done"
    rois = (roi_rec.outputs.get("rois") or []) if done else []
    corr = (roi_rec.outputs.get("correlations") or []) if done else []
    method = (roi_rec.params.get("boldcloud.roi.correlation") if done else None) or "spearman"
    contrasts = {r.get("contrast") for r in rois if r.get("contrast")}
    by_name = {b.name: b for b in blobs}
    out = []
    for planted in truth.get("correlations", []):
        blob = by_name[planted["roi"]]
        radius = fwhm_multiple * blob.fwhm_mm
        roi = pick_roi(rois, blob, contrasts_with_change(blob, contrasts, conditions), radius)
        row = _correlation_result(planted, roi, corr, method, _state(roi_rec))
        row["nearby_rois"] = nearby_rois(rois, corr, blob, planted["measure"], method, radius)
        out.append(row)
    return out


def nearby_rois(
    rois: list[dict], corr: list[dict], blob: Blob, measure: str, method: str, radius_mm: float
) -> list[dict[str, Any]]:
    """Every pipeline ROI within ``2 * radius_mm`` of a blob with its r (information only)."""
    out = []
    for roi in rois:
        centre = np.array([roi["x_mm"], roi["y_mm"], roi["z_mm"]], dtype=float)
        distance = float(np.linalg.norm(centre - blob.mni_mm))
        if distance <= 2 * radius_mm:
            found = correlation_row(corr, roi["roi"], measure, method) or {}
            out.append({"roi": roi["roi"], "source": roi.get("source"),
                        "contrast": roi.get("contrast"), "distance_mm": distance,
                        "r": found.get("r"), "n": found.get("n")})  # fmt: skip
    return sorted(out, key=lambda item: item["distance_mm"])


def _correlation_result(
    planted: dict, roi: dict | None, corr: list[dict], method: str, state: str
) -> dict[str, Any]:
    target = float(planted["target_r"])
    row: dict[str, Any] = {
        "roi": planted["roi"], "measure": planted["measure"], "target_r": target,
        "simulated_r": (planted.get("analysis_sample") or {}).get(method),
        "group_roi_state": state, "pipeline_roi": None, "roi_source": None,
        "roi_distance_mm": None, "method": method, "r": None, "p": None, "n": None,
        "r_other": None, "ok": False,
    }  # fmt: skip
    if roi is None:
        return row
    row.update(pipeline_roi=roi["roi"], roi_source=roi.get("source"),
               roi_distance_mm=roi["distance_mm"])  # fmt: skip
    main = correlation_row(corr, roi["roi"], planted["measure"], method)
    other = "pearson" if method == "spearman" else "spearman"
    alt = correlation_row(corr, roi["roi"], planted["measure"], other)
    if main is not None:
        row.update(r=main["r"], p=main["p"], n=main["n"])
        row["ok"] = bool(_finite(main["r"]) and np.sign(main["r"]) == np.sign(target))
    if alt is not None:
        row["r_other"] = {"method": other, "r": alt["r"], "p": alt["p"], "n": alt["n"]}
    return row


# ---------------------------------------------------------------- criterion 3
def check_false_positives(
    store: Store | None, blobs: list[Blob], paired: dict[str, TaskRecord], alpha: float,
    conditions: set[str], fwhm_multiple: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """Criterion 3: every significant post - pre cluster, explained or a false positive.

    A cluster is explained by a blob whose change enters the contrast with the cluster's sign
    when the cluster's peak, or one of its listed local maxima, lies within ``fwhm_multiple``
    FWHMs of the blob: a cluster with a maximum on the planted change is where something was
    planted even when noise puts its highest voxel farther off (criterion 1 credits such a
    cluster to the change by the same maxima).

    Parameters
    ----------
    store : Store or None
        The run's store (local-maxima TSVs); None judges by the peaks alone.
    blobs : list of Blob
        Planted ROIs.
    paired : dict
        Post - pre ``group_inference`` records by contrast (:func:`paired_analyses`).
    alpha : float
        Cluster FWE p threshold.
    conditions : set of str
        Condition names (:func:`conditions_of`).
    fwhm_multiple : float
        A peak within this many FWHMs of a blob whose change enters the contrast with the
        cluster's sign is explained by it.

    Returns
    -------
    list of dict
        One row per significant cluster, with ``explained_by`` and ``false_positive``.
    """
    rows = []
    for contrast, rec in sorted(paired.items()):
        weights = contrast_weights(contrast, conditions)
        for cluster in significant(rec, alpha):
            maxima = cluster_maxima(store, rec, cluster)
            rows.append(_explain(cluster, maxima, contrast, weights, blobs, fwhm_multiple))
    return rows


def _explain(
    cluster: dict, maxima: np.ndarray, contrast: str, weights: dict[str, float],
    blobs: list[Blob], multiple: float,
) -> dict[str, Any]:  # fmt: skip
    """Whether a significant cluster sits on a planted change of its contrast and side."""
    peak = _peak(cluster)
    points = np.vstack([peak, maxima])
    sign = 1 if cluster["side"] == "positive" else -1
    distances = {b.name: float(np.linalg.norm(peak - b.mni_mm)) for b in blobs}
    nearest = min(distances, key=distances.get)
    near_mm = {b.name: float(np.linalg.norm(points - b.mni_mm, axis=1).min()) for b in blobs}
    explained_by = [
        b.name for b in blobs
        if expected_sign(b, weights) == sign and near_mm[b.name] <= multiple * b.fwhm_mm
    ]  # fmt: skip
    return {
        "analysis": f"ses-{PAIRED_LABEL} {contrast}", "side": cluster["side"],
        "cluster": int(cluster["cluster"]), "voxels": int(cluster["voxels"]),
        "peak_mni_mm": peak.tolist(), "p_fwe": float(cluster["p_fwe"]),
        "peak_z": float(cluster["peak_z"]), "nearest_blob": nearest,
        "nearest_blob_mm": distances[nearest], "nearest_blob_max_mm": near_mm[nearest],
        "explained_by": explained_by,
        "false_positive": not explained_by,
    }  # fmt: skip


# ---------------------------------------------------------------- report
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.2f}"
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ", ".join(value) or "-"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A plain fixed-width table of ``rows`` (``columns``: key, heading)."""
    print(f"\n{title}")
    if not rows:
        print("  (none)")
        return
    cells = [[_fmt(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    for line in [[h for _, h in columns], *cells]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


CLUSTER_COLUMNS = [
    ("roi", "planted ROI"), ("analysis", "map"), ("expected_side", "side"),
    ("planted_mni_mm", "planted MNI"), ("peak_mni_mm", "nearest sig. peak"),
    ("distance_mm", "dist mm"), ("p_fwe", "FWE p"), ("peak_z", "Z"),
    ("nearest_local_max_mm", "local max mm"), ("cope_max_mm", "effect max mm"),
    ("analysis_state", "analysis"), ("ok", "ok"),
]  # fmt: skip
CORRELATION_COLUMNS = [
    ("roi", "planted ROI"), ("measure", "clinical change"), ("target_r", "target r"),
    ("simulated_r", "sim r"), ("pipeline_roi", "pipeline ROI"), ("roi_distance_mm", "ROI mm"),
    ("method", "method"), ("r", "r"), ("p", "p"), ("n", "N"), ("other_r", "other r"),
    ("ok", "sign ok"),
]  # fmt: skip
FP_COLUMNS = [
    ("analysis", "map"), ("side", "side"), ("cluster", "cluster"), ("voxels", "voxels"),
    ("peak_mni_mm", "peak MNI"), ("p_fwe", "FWE p"), ("peak_z", "Z"),
    ("nearest_blob", "nearest blob"), ("nearest_blob_mm", "mm"),
    ("nearest_blob_max_mm", "mm (maxima)"), ("explained_by", "explained by"),
    ("false_positive", "false positive"),
]  # fmt: skip


def print_report(result: dict[str, Any]) -> None:
    """The three criteria as tables and a verdict per criterion."""
    s = result["settings"]
    print(f"store {result['store']}  bids {result['bids']}  cluster FWE alpha {s['alpha']}")
    states = result["paired_analyses"].items()
    print("post-pre analyses: " + ("; ".join(f"{c} {st}" for c, st in states) or "none found"))
    for name, title, columns in (
        ("clusters", f"1. planted post-pre effects: significant cluster peak within "
                     f"{s['peak_mm']} mm, right side", CLUSTER_COLUMNS),
        ("correlations", "2. planted ROI x clinical-change correlations: right sign",
         CORRELATION_COLUMNS),
        ("false_positives", f"3. significant post-pre clusters (false positive: peak and "
                            f"local maxima farther than {s['fp_fwhm']} x FWHM from a blob "
                            "changed in that contrast and side)", FP_COLUMNS),
    ):  # fmt: skip
        rows = result[name]["rows"]
        if name == "correlations":
            rows = [{**r, "other_r": (r["r_other"] or {}).get("r")} for r in rows]
        print_table(title, rows, columns)
        print(f"  -> {'PASS' if result[name]['pass'] else 'FAIL'}")
    sessions = result["session_maps"]
    print_table(
        f"(informational) significant clusters of the {sessions['maps']} one-sample session maps",
        sessions["rows"],
        SESSION_COLUMNS,
    )
    print(
        f"  -> {sessions['unexplained']} not explained by a planted response; "
        f"{sessions['expected_by_chance']} expected by chance (alpha x maps x 2 sides)"
    )
    print(f"\nall criteria: {'PASS' if result['pass'] else 'FAIL'}")


# ---------------------------------------------------------------- main
def validate(store_url: str, bids: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the three checks.

    Parameters
    ----------
    store_url : str
        Store URL or path of the finished run.
    bids : Path
        Simulated BIDS root (``derivatives/truth/truth.json``).
    args : argparse.Namespace
        ``alpha``, ``peak_mm``, ``fp_fwhm`` (:func:`parse_args`).

    Returns
    -------
    dict
        Settings, post - pre analysis states and, per criterion, ``rows`` and ``pass``; ``pass``
        overall.
    """
    truth = load_truth(bids)
    store = Store(store_url)
    manifest = Manifest(store)
    blobs, conditions = blobs_of(truth), conditions_of(truth)
    paired = paired_analyses(manifest)
    alpha = alpha_of(paired, args.alpha)
    clusters = check_clusters(store, blobs, paired, alpha, conditions, args.peak_mm)
    correlations = check_correlations(
        manifest.get("group_roi", "study"), blobs, truth, conditions, args.fp_fwhm
    )
    fps = check_false_positives(store, blobs, paired, alpha, conditions, args.fp_fwhm)
    sessions = check_sessions(
        truth,
        session_analyses(manifest),
        alpha,
        lambda contrast: contrast_weights(contrast, conditions),
        lambda rec: local_maxima(store, rec),
    )
    result = {
        "store": store_url, "bids": str(bids),
        "settings": {"alpha": alpha, "peak_mm": args.peak_mm, "fp_fwhm": args.fp_fwhm},
        "paired_analyses": {c: _state(r) for c, r in sorted(paired.items())},
        "clusters": {"rows": clusters, "pass": bool(clusters) and all(r["ok"] for r in clusters)},
        "correlations": {"rows": correlations,
                         "pass": bool(correlations) and all(r["ok"] for r in correlations)},
        "false_positives": {"rows": fps, "count": sum(r["false_positive"] for r in fps),
                            "pass": bool(paired) and not any(r["false_positive"] for r in fps)},
        "session_maps": sessions,
    }  # fmt: skip
    result["pass"] = all(result[k]["pass"] for k in ("clusters", "correlations", "false_positives"))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="store URL or path of the finished run")
    ap.add_argument("--bids", required=True, type=Path, help="simulated BIDS root")
    ap.add_argument("--json", type=Path, help="also write the result as JSON here")
    ap.add_argument(
        "--peak-mm",
        type=float,
        default=6.0,
        help="largest planted-to-peak (and ROI centre) distance (default 6)",
    )
    ap.add_argument(
        "--fp-fwhm",
        type=float,
        default=1.5,
        help="a cluster within this many blob FWHMs of a planted change is "
        "explained (default 1.5: 12 mm for the simulator's 8 mm change blobs)",
    )
    ap.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="cluster FWE p threshold (default: the run's cluster_p, else 0.05)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Validate, print, optionally write JSON; 0 when every criterion passes."""
    args = parse_args(argv)
    try:
        result = validate(args.store, args.bids, args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
