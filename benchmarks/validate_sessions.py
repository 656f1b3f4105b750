"""Single-session group maps against the planted truth (informational part of validate_study).

The issue's "nothing significant appears where nothing was planted" is judged on the post - pre
maps (criterion 3 of ``validate_study.py``). The one-sample maps of each session (``ses-pre``,
``ses-post``) are listed here as well. A significant cluster is *explained* when the planted
population-mean response of that session and contrast, evaluated at the cluster's peak or at one
of its listed local maxima, has the cluster's sign and is at least ``MIN_PSC`` (0.05 % signal
change). The planted mean is computed from the truth's ROI table exactly as the simulator draws
it: each ROI's pre mean on its blob (``fwhm_mm``) plus, in ``post``, the mean change on the
change blob (``change_fwhm_mm``); blobs are Gaussians cut to 0 below 1e-3 of their peak. (A
negative change on a blob broader than the ROI's response plants a negative surround in the
post session, which this accounts for.)

Each map and side is a separate test at the cluster FWE level, so about ``alpha`` x maps x 2
unexplained clusters are expected by chance; the count is printed beside that expectation and
not failed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from infra.manifest import Manifest, TaskRecord

SESSIONS = ("pre", "post")
MIN_PSC = 0.05
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_CUTOFF = 1e-3


def session_analyses(manifest: Manifest) -> dict[str, TaskRecord]:
    """``group_inference`` records of the one-sample session maps (``ses-<session> <contrast>``)."""
    out = {}
    for rec in manifest.records("group_inference"):
        analysis = rec.outputs.get("analysis") or {}
        session = analysis.get("session_label")
        if session in SESSIONS and not analysis.get("group_contrast"):
            out[f"ses-{session} {analysis.get('contrast')}"] = rec
    return out


def _blob(distance_mm: float, fwhm_mm: float) -> float:
    value = float(np.exp(-(distance_mm**2) / (2.0 * (fwhm_mm * _FWHM_TO_SIGMA) ** 2)))
    return value if value >= _CUTOFF else 0.0


def planted_mean(
    truth: dict[str, Any], session: str, weights: dict[str, float], point_mm: np.ndarray
) -> float:
    """Planted population-mean response (% signal change) of a contrast at an MNI point.

    Parameters
    ----------
    truth : dict
        The simulator's truth.json (``rois``: ``mni_mm``, ``fwhm_mm``, ``change_fwhm_mm``,
        ``pre_mean_sd_psc``, ``change_condition``, ``change_mean_sd_psc``).
    session : {"pre", "post"}
    weights : dict
        Condition -> contrast weight.
    point_mm : ndarray, shape (3,)
        MNI coordinate (mm).

    Returns
    -------
    float
    """
    total = 0.0
    for roi in truth["rois"]:
        distance = float(np.linalg.norm(point_mm - np.asarray(roi["mni_mm"], dtype=float)))
        own = _blob(distance, float(roi.get("fwhm_mm") or 8.0))
        for condition, (mean, _sd) in (roi.get("pre_mean_sd_psc") or {}).items():
            total += weights.get(condition, 0.0) * float(mean) * own
        change = roi.get("change_condition")
        if session == "post" and change:
            extent = float(roi.get("change_fwhm_mm") or roi.get("fwhm_mm") or 8.0)
            mean_change = float(roi["change_mean_sd_psc"][0])
            total += weights.get(change, 0.0) * mean_change * _blob(distance, extent)
    return total


def check_sessions(
    truth: dict[str, Any],
    analyses: dict[str, TaskRecord],
    alpha: float,
    weights_of: Callable[[str], dict[str, float]],
    maxima_of: Callable[[TaskRecord], list[dict[str, Any]]],
) -> dict[str, Any]:
    """Every significant cluster of the one-sample session maps, explained or not.

    Parameters
    ----------
    truth : dict
        The simulator's truth.json.
    analyses : dict
        :func:`session_analyses`.
    alpha : float
        Cluster FWE p threshold.
    weights_of : callable
        ``weights_of(contrast) -> {condition: weight}`` (``validate_study.contrast_weights``).
    maxima_of : callable
        ``maxima_of(record) -> rows`` of the analysis' local-maxima table (``side``,
        ``cluster``, ``x_mm``, ``y_mm``, ``z_mm``).

    Returns
    -------
    dict
        ``rows`` (one per significant cluster), ``unexplained`` (count), ``expected_by_chance``
        (alpha x maps x 2 sides) and ``maps`` (how many session maps were done).
    """
    rows, done = [], 0
    for name, rec in sorted(analyses.items()):
        if rec.state != "done":
            continue
        done += 1
        session, contrast = name.removeprefix("ses-").split(" ", 1)
        weights = weights_of(contrast)
        sig = [
            c for c in rec.outputs.get("clusters") or []
            if isinstance(c.get("p_fwe"), int | float) and c["p_fwe"] <= alpha
        ]  # fmt: skip
        maxima = maxima_of(rec) if sig else []
        for cluster in sig:
            points = [np.array([cluster["peak_x_mm"], cluster["peak_y_mm"], cluster["peak_z_mm"]])]
            points += [
                np.array([m["x_mm"], m["y_mm"], m["z_mm"]]) for m in maxima
                if m["side"] == cluster["side"] and int(m["cluster"]) == int(cluster["cluster"])
            ]  # fmt: skip
            rows.append(_explain(truth, name, session, weights, cluster, points))
    return {
        "rows": rows,
        "unexplained": sum(not r["explained"] for r in rows),
        "expected_by_chance": round(alpha * done * 2, 2),
        "maps": done,
    }


def _explain(truth, name, session, weights, cluster, points) -> dict[str, Any]:
    sign = 1 if cluster["side"] == "positive" else -1
    planted = [planted_mean(truth, session, weights, p.astype(float)) for p in points]
    best = max(planted, key=lambda v: sign * v)
    peak = points[0].astype(float)
    distances = {
        r["name"]: float(np.linalg.norm(peak - np.asarray(r["mni_mm"], float)))
        for r in truth["rois"]
    }
    nearest = min(distances, key=distances.get)
    return {
        "analysis": name, "side": cluster["side"], "voxels": int(cluster["voxels"]),
        "peak_mni_mm": peak.tolist(), "p_fwe": float(cluster["p_fwe"]),
        "peak_z": float(cluster["peak_z"]), "nearest_roi": nearest,
        "nearest_roi_mm": distances[nearest], "planted_psc": best,
        "explained": bool(sign * best >= MIN_PSC),
    }  # fmt: skip


SESSION_COLUMNS = [
    ("analysis", "map"), ("side", "side"), ("voxels", "voxels"), ("peak_mni_mm", "peak MNI"),
    ("p_fwe", "FWE p"), ("peak_z", "Z"), ("nearest_roi", "nearest ROI"),
    ("nearest_roi_mm", "mm"), ("planted_psc", "planted %"), ("explained", "explained"),
]  # fmt: skip
