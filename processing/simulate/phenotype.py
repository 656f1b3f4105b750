"""Demographics, clinical scores and ROI amplitudes planted to correlate with them.

Pre/post scores of each measure are bivariate normal with the paper's means and SDs and a
pre-post correlation that reproduces the paper's paired-difference SD (from its t statistic, with
N = 17). With at least 3 subjects the draws are standardised so the sample moments (post: over
the subjects with post data) are exact before rounding and clipping to the instrument's range.

The post - pre change of each ROI's analysis contrast is built as
``mean + sd * (r z_c + sqrt(1 - r^2) e)``, with ``z_c`` the standardised clinical change and
``e`` a standardised random vector orthogonal to it, on the subjects with usable pre and post
imaging and a post score (the ROI analysis sample), so its sample Pearson correlation there is
exactly ``r``; among 200 such draws the one whose Spearman correlation is closest to ``r`` is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

__all__ = [
    "MEASURES",
    "MeasureSpec",
    "analysis_sample",
    "clinical_scores",
    "correlated_change",
    "demographics",
]


@dataclass(frozen=True)
class MeasureSpec:
    """A questionnaire score: phenotype file, range, decimals, pre/post mean (sd), diff sd."""

    column: str
    table: str
    description: str
    low: float
    high: float
    decimals: int
    pre: tuple[float, float]
    post: tuple[float, float]
    diff_sd: float


def _maia(name: str, pre: tuple[float, float], post: tuple[float, float]) -> MeasureSpec:
    return MeasureSpec(
        f"maia_{name}",
        "maia",
        f"MAIA {name.replace('_', ' ')} subscale (0-5)",
        0,
        5,
        2,
        pre,
        post,
        0.8,
    )


MEASURES = (
    MeasureSpec(
        "promis_pain_intensity",
        "promis",
        "PROMIS-29 pain intensity item (0-10)",
        0,
        10,
        0,
        (4.15, 1.89),
        (2.89, 1.41),
        1.47,
    ),
    MeasureSpec(
        "rmq_total",
        "rmq",
        "Roland-Morris disability questionnaire total (0-24)",
        0,
        24,
        0,
        (10.44, 4.83),
        (7.28, 4.51),
        2.81,
    ),
    MeasureSpec(
        "scs_total",
        "scs",
        "Self-Compassion Scale total, mean item score (1-5)",
        1,
        5,
        2,
        (3.15, 0.81),
        (3.54, 0.94),
        0.633,
    ),
    MeasureSpec(
        "pcs_total",
        "pcs",
        "Pain Catastrophizing Scale total (0-52)",
        0,
        52,
        0,
        (20.5, 10.2),
        (14.1, 9.5),
        7.0,
    ),
    _maia("noticing", (2.9, 0.9), (3.2, 0.8)),
    _maia("not_distracting", (1.9, 0.8), (2.2, 0.8)),
    _maia("not_worrying", (2.3, 0.9), (2.6, 0.9)),
    _maia("attention_regulation", (2.3, 0.9), (2.9, 0.8)),
    _maia("emotional_awareness", (3.0, 1.0), (3.3, 0.9)),
    _maia("self_regulation", (2.2, 1.0), (2.9, 0.9)),
    _maia("body_listening", (1.8, 1.1), (2.6, 1.0)),
    _maia("trusting", (2.6, 1.1), (3.0, 1.0)),
)


def _standardise(z: NDArray[np.float64], against: NDArray[np.float64] | None = None) -> NDArray:
    """Zero mean, unit sample SD (ddof 1), optionally orthogonal to ``against``; n >= 3 only."""
    if z.size < 3:
        return z
    z = z - z.mean()
    if against is not None:
        ref = against - against.mean()
        z = z - (z @ ref) / (ref @ ref) * ref
    return z / z.std(ddof=1)


def demographics(rng: np.random.Generator, n: int) -> dict[str, list]:
    """Age (40.15 +- 12.56, 21-70) and sex (13 F : 7 M in every block of 20) per subject."""
    age = np.clip(np.rint(40.15 + 12.56 * _standardise(rng.normal(size=n))), 21, 70)
    sexes: list[str] = []
    while len(sexes) < n:
        sexes.extend(rng.permutation(["F"] * 13 + ["M"] * 7).tolist())
    return {"age": [int(a) for a in age], "sex": sexes[:n]}


def clinical_scores(
    rng: np.random.Generator, n: int, post_missing: NDArray[np.bool_]
) -> dict[str, NDArray[np.float64]]:
    """Pre and post scores of every measure, MAIA total and practice minutes.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the scores.
    n : int
        Number of subjects.
    post_missing : ndarray of bool, shape (n,)
        Subjects without post data (dropouts): their post scores and practice are NaN.

    Returns
    -------
    dict
        ``"<column>_pre"`` / ``"<column>_post"`` arrays of shape (n,) for each measure and for
        ``maia_total``, and ``"practice_minutes"``.
    """
    out: dict[str, NDArray[np.float64]] = {}
    for spec in MEASURES:
        (m1, s1), (m2, s2) = spec.pre, spec.post
        rho = np.clip((s1**2 + s2**2 - spec.diff_sd**2) / (2 * s1 * s2), -0.95, 0.95)
        z1 = _standardise(rng.normal(size=n))
        z2 = _standardise(rng.normal(size=n), against=z1)
        pre = m1 + s1 * z1
        mixed = rho * z1 + np.sqrt(1 - rho**2) * z2
        mixed[~post_missing] = _standardise(mixed[~post_missing])  # moments of the observed
        post = m2 + s2 * mixed
        for key, val in (("pre", pre), ("post", post)):
            out[f"{spec.column}_{key}"] = np.round(np.clip(val, spec.low, spec.high), spec.decimals)
    for key in ("pre", "post"):
        subscales = [out[f"{s.column}_{key}"] for s in MEASURES if s.table == "maia"]
        out[f"maia_total_{key}"] = np.round(np.mean(subscales, axis=0), 2)
    out["practice_minutes"] = np.rint(np.exp(rng.normal(np.log(300.0), 0.5, n)))
    for key in list(out):
        if not key.endswith("_pre"):
            out[key] = np.where(post_missing, np.nan, out[key])
    return out


def analysis_sample(
    clinical_change: NDArray[np.float64], sample: NDArray[np.bool_]
) -> NDArray[np.bool_]:
    """Subjects over which a planted correlation is exact.

    Parameters
    ----------
    clinical_change : ndarray, shape (n,)
        Post - pre clinical change (NaN where missing).
    sample : ndarray of bool, shape (n,)
        Subjects with usable pre and post imaging.

    Returns
    -------
    ndarray of bool, shape (n,)
        ``sample`` restricted to subjects with a change, or every subject with a change when
        that leaves fewer than 4.
    """
    have = np.isfinite(clinical_change)
    use = sample & have
    return use if use.sum() >= 4 else have


def correlated_change(
    rng: np.random.Generator,
    clinical_change: NDArray[np.float64],
    sample: NDArray[np.bool_],
    target_r: float,
    mean: float,
    sd: float,
    n_draws: int = 200,
) -> NDArray[np.float64]:
    """ROI changes correlated with a clinical change score (see module docstring).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the residual draws.
    clinical_change : ndarray, shape (n,)
        Post - pre clinical change (NaN where missing).
    sample : ndarray of bool, shape (n,)
        Subjects over which the correlation is made exact (falls back to all subjects with a
        change when fewer than 4; no exact construction below 3).
    target_r : float
        Target correlation in (-1, 1).
    mean, sd : float
        Mean and SD of the ROI change (% signal change).

    Returns
    -------
    ndarray, shape (n,)
        ROI change per subject.
    """
    if not -1 < target_r < 1:
        raise ValueError(f"target_r must be in (-1, 1), got {target_r}")
    have = np.isfinite(clinical_change)
    use = analysis_sample(clinical_change, sample)
    resid = rng.normal(size=clinical_change.size)
    if use.sum() < 3 or np.ptp(clinical_change[use]) == 0:
        return mean + sd * resid
    ref = clinical_change[use]
    z = (clinical_change - ref.mean()) / ref.std(ddof=1)
    best, best_gap = None, np.inf
    for _ in range(n_draws):
        e = _standardise(rng.normal(size=int(use.sum())), against=z[use])
        d = target_r * z[use] + np.sqrt(1 - target_r**2) * e
        gap = abs(stats.spearmanr(d, ref).statistic - target_r)
        if gap < best_gap:
            best, best_gap = d, gap
    out = np.where(have, target_r * np.nan_to_num(z), 0.0) + np.sqrt(1 - target_r**2) * resid
    out = np.where(have, out, resid)
    out[use] = best
    return mean + sd * out
