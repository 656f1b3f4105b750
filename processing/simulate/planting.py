"""Per-subject ROI amplitudes, with post - pre changes planted to correlate with clinical change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from processing.simulate.phenotype import analysis_sample, correlated_change
from processing.simulate.specs import ROIS, stream

__all__ = ["Planted", "plant_amplitudes"]


@dataclass(frozen=True)
class Planted:
    """Planted effect sizes (% signal change per unit regressor).

    Attributes
    ----------
    amplitudes : list of dict
        Per subject: session ("pre"/"post") -> ROI -> condition -> amplitude.
    changes : dict
        ROI -> post - pre change of its analysis contrast, shape (n_subjects,).
    correlations : list of dict
        Per correlated ROI: target and realised Pearson/Spearman correlations.
    """

    amplitudes: list[dict[str, dict[str, dict[str, float]]]]
    changes: dict[str, NDArray[np.float64]]
    correlations: list[dict]


def _realised(change: NDArray, clinical: NDArray, use: NDArray[np.bool_]) -> dict:
    """Pearson and Spearman correlations over ``use`` (None below 3 subjects)."""
    if use.sum() < 3:
        return {"n": int(use.sum()), "pearson": None, "spearman": None}
    x, y = change[use], clinical[use]
    return {
        "n": int(use.sum()),
        "pearson": float(stats.pearsonr(x, y).statistic),
        "spearman": float(stats.spearmanr(x, y).statistic),
    }


def plant_amplitudes(
    seed: int, clinical: dict[str, NDArray[np.float64]], usable: NDArray[np.bool_]
) -> Planted:
    """Draw every subject's ROI amplitudes.

    Pre amplitudes are ``mean + sd * N(0, 1)`` per ROI and condition (``specs.ROIS``); post
    equals pre except for the ROI's analysis condition, which adds the planted change.

    Parameters
    ----------
    seed : int
        Study seed.
    clinical : dict
        Output of :func:`processing.simulate.phenotype.clinical_scores`.
    usable : ndarray of bool, shape (n_subjects,)
        Subjects with usable pre and post imaging (the ROI analysis sample).

    Returns
    -------
    Planted
    """
    n = usable.size
    amplitudes = [{"pre": {}, "post": {}} for _ in range(n)]
    changes, correlations = {}, []
    for roi in ROIS:
        pre = {
            cond: np.round(mean + sd * stream(seed, "amplitude", roi.name, cond).normal(size=n), 6)
            for cond, (mean, sd) in roi.pre.items()
        }
        change = np.zeros(n)
        if roi.change_on is not None:
            clin = clinical[f"{roi.measure}_post"] - clinical[f"{roi.measure}_pre"]
            mean, sd = roi.change
            rng = stream(seed, "change", roi.name)
            change = np.round(correlated_change(rng, clin, usable, roi.target_r, mean, sd), 6)
            use = analysis_sample(clin, usable)
            correlations.append(
                {
                    "roi": roi.name,
                    "contrast": roi.contrast,
                    "measure": roi.measure,
                    "target_r": roi.target_r,
                    "analysis_sample": _realised(change, clin, use),
                    "all_with_clinical_change": _realised(change, clin, np.isfinite(clin)),
                }
            )
        changes[roi.name] = change
        for i in range(n):
            amplitudes[i]["pre"][roi.name] = {c: float(v[i]) for c, v in pre.items()}
            amplitudes[i]["post"][roi.name] = {
                c: round(float(v[i] + (change[i] if c == roi.change_on else 0.0)), 6)
                for c, v in pre.items()
            }
    return Planted(amplitudes, changes, correlations)
