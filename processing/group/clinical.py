"""Clinical statistics and ROI-behaviour correlations (the paper's Tables 2 and 3).

All functions take pandas objects indexed by subject; missing values are NaN and every statistic
uses the pairwise-complete subjects of the columns involved (its own N).

Paired t-tests (:func:`paired_tests`)
    Per measure, subjects with both ``<measure>_pre`` and ``<measure>_post``; ``diff = post -
    pre``; ``t = mean(diff) / (sd(diff) / sqrt(n))`` with ``n - 1`` dof, two-sided P
    (``scipy.stats.ttest_rel(post, pre)``); means and SDs (ddof 1) per session over the same
    subjects. Effect sizes: ``d_z = mean(diff) / sd(diff)`` and
    ``d_av = mean(diff) / ((sd_pre + sd_post) / 2)`` (Lakens 2013). Signs follow post - pre.

Correlations (:func:`correlate`, :func:`correlation_matrix`, :func:`roi_correlations`)
    Spearman (default) or Pearson r with the two-sided P of ``scipy.stats``. The outlier-robust
    repeat drops the single most influential observation, defined as the one whose removal changes
    r the most (``max_i |r - r_(-i)|``, leave-one-out), and recomputes r and P on the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "correlate",
    "correlation_matrix",
    "paired_tests",
    "post_minus_pre",
    "robust_correlate",
    "roi_correlations",
]

METHODS = ("spearman", "pearson")


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"columns {missing} do not exist; available: {sorted(map(str, frame.columns))}"
        )


def _r(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    if method == "spearman":
        res = stats.spearmanr(x, y)
    elif method == "pearson":
        res = stats.pearsonr(x, y)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return float(res.statistic), float(res.pvalue)


def paired_tests(
    data: pd.DataFrame,
    measures: Sequence[str],
    *,
    pre_suffix: str = "_pre",
    post_suffix: str = "_post",
) -> pd.DataFrame:
    """Pre vs post paired t-tests per measure (module docstring).

    Parameters
    ----------
    data : pandas.DataFrame
        One row per subject with columns ``<measure><pre_suffix>`` and ``<measure><post_suffix>``.
    measures : sequence of str
        Measure names.

    Returns
    -------
    pandas.DataFrame
        Index ``measure``; columns ``n``, ``pre_mean``, ``pre_sd``, ``post_mean``, ``post_sd``,
        ``mean_diff``, ``sd_diff``, ``t``, ``dof``, ``p``, ``d_z``, ``d_av``. Rows with
        fewer than 2 complete pairs have NaN statistics.
    """
    _require(data, [m + s for m in measures for s in (pre_suffix, post_suffix)])
    rows = []
    for m in measures:
        pair = data[[m + pre_suffix, m + post_suffix]].astype(float).dropna()
        pre, post = pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy()
        n = len(pair)
        diff = post - pre
        if n < 2:
            rows.append({"measure": m, "n": n})
            continue
        sd_pre, sd_post, sd_diff = pre.std(ddof=1), post.std(ddof=1), diff.std(ddof=1)
        res = stats.ttest_rel(post, pre)
        rows.append(
            {
                "measure": m,
                "n": n,
                "pre_mean": pre.mean(),
                "pre_sd": sd_pre,
                "post_mean": post.mean(),
                "post_sd": sd_post,
                "mean_diff": diff.mean(),
                "sd_diff": sd_diff,
                "t": float(res.statistic),
                "dof": n - 1,
                "p": float(res.pvalue),
                "d_z": diff.mean() / sd_diff if sd_diff > 0 else np.nan,
                "d_av": diff.mean() / ((sd_pre + sd_post) / 2) if sd_pre + sd_post > 0 else np.nan,
            }
        )
    cols = ["measure", "n", "pre_mean", "pre_sd", "post_mean", "post_sd", "mean_diff", "sd_diff",
            "t", "dof", "p", "d_z", "d_av"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=cols).set_index("measure")


def correlation_matrix(
    data: pd.DataFrame, columns: Sequence[str], *, method: str = "pearson"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pairwise-complete correlation matrix with P values and N (the paper's Table 3).

    Parameters
    ----------
    data : pandas.DataFrame
    columns : sequence of str
    method : {"pearson", "spearman"}

    Returns
    -------
    r, p, n : pandas.DataFrame
        Square frames indexed by ``columns``; diagonal r 1, p 0; NaN below 3 complete pairs.
    """
    _require(data, columns)
    k = len(columns)
    r, p, n = np.eye(k), np.zeros((k, k)), np.zeros((k, k), dtype=int)
    for a in range(k):
        n[a, a] = int(data[columns[a]].notna().sum())
        for b in range(a + 1, k):
            pair = data[[columns[a], columns[b]]].astype(float).dropna()
            n[a, b] = n[b, a] = len(pair)
            if len(pair) >= 3:
                r[a, b], p[a, b] = _r(
                    pair.iloc[:, 0].to_numpy(), pair.iloc[:, 1].to_numpy(), method
                )
            else:
                r[a, b] = p[a, b] = np.nan
            r[b, a], p[b, a] = r[a, b], p[a, b]
    names = list(columns)
    return (
        pd.DataFrame(r, names, names),
        pd.DataFrame(p, names, names),
        pd.DataFrame(n, names, names),
    )


def correlate(x: ArrayLike, y: ArrayLike, *, method: str = "spearman") -> dict:
    """Correlation over pairwise-complete observations.

    Returns
    -------
    dict
        ``n``, ``r``, ``p`` (NaN below 3 pairs).
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape:
        raise ValueError(f"x {xa.shape} and y {ya.shape} must have the same shape")
    ok = np.isfinite(xa) & np.isfinite(ya)
    n = int(ok.sum())
    if n < 3:
        return {"n": n, "r": np.nan, "p": np.nan}
    r, p = _r(xa[ok], ya[ok], method)
    return {"n": n, "r": r, "p": p}


def robust_correlate(x: ArrayLike, y: ArrayLike, *, method: str = "spearman") -> dict:
    """Correlation after dropping the most influential observation (largest ``|r - r_(-i)|``).

    Parameters
    ----------
    x, y : array_like, shape (n,)
        NaN marks missing values (pairwise-complete observations are used).
    method : {"spearman", "pearson"}

    Returns
    -------
    dict
        ``n`` (after dropping), ``r``, ``p``, ``dropped`` (position in the input of the dropped
        observation, or -1 below 4 complete pairs, when nothing is dropped and r is NaN).
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    full = correlate(xa, ya, method=method)
    ok = np.nonzero(np.isfinite(xa) & np.isfinite(ya))[0]
    if ok.size < 4:
        return {"n": int(ok.size), "r": np.nan, "p": np.nan, "dropped": -1}
    changes = []
    for i in ok:
        keep = ok[ok != i]
        changes.append(abs(full["r"] - _r(xa[keep], ya[keep], method)[0]))
    drop = int(ok[int(np.nanargmax(changes))])
    keep = ok[ok != drop]
    r, p = _r(xa[keep], ya[keep], method)
    return {"n": int(keep.size), "r": r, "p": p, "dropped": drop}


def post_minus_pre(pre: pd.DataFrame, post: pd.DataFrame) -> pd.DataFrame:
    """``post - pre`` aligned on subject index and columns (NaN where either is missing)."""
    pre_a, post_a = pre.align(post, join="outer")
    return post_a.astype(float) - pre_a.astype(float)


def roi_correlations(
    roi_changes: pd.DataFrame,
    scores: pd.DataFrame,
    pairs: Sequence[tuple[str, str]] | None = None,
    *,
    method: str = "spearman",
    robust: bool = True,
) -> pd.DataFrame:
    """Correlations of ROI changes with clinical change scores (and practice minutes).

    Parameters
    ----------
    roi_changes : pandas.DataFrame
        Subjects x ROIs, post - pre percent signal change.
    scores : pandas.DataFrame
        Subjects x scores (e.g. change scores, practice minutes); aligned on the index.
    pairs : sequence of (roi, score), optional
        Default every ROI with every score.
    method : {"spearman", "pearson"}
    robust : bool
        Add the outlier-robust repeat (:func:`robust_correlate`).

    Returns
    -------
    pandas.DataFrame
        Columns ``roi``, ``score``, ``method``, ``n``, ``r``, ``p`` and, with ``robust``,
        ``n_robust``, ``r_robust``, ``p_robust``, ``dropped_subject``.
    """
    if pairs is None:
        pairs = [(a, b) for a in roi_changes.columns for b in scores.columns]
    _require(roi_changes, {a for a, _ in pairs})
    _require(scores, {b for _, b in pairs})
    left, right = roi_changes.align(scores, join="outer", axis=0)
    rows = []
    for roi, score in pairs:
        x, y = left[roi].astype(float).to_numpy(), right[score].astype(float).to_numpy()
        row = {"roi": roi, "score": score, "method": method, **correlate(x, y, method=method)}
        if robust:
            rob = robust_correlate(x, y, method=method)
            row.update(
                n_robust=rob["n"],
                r_robust=rob["r"],
                p_robust=rob["p"],
                dropped_subject=left.index[rob["dropped"]] if rob["dropped"] >= 0 else None,
            )
        rows.append(row)
    return pd.DataFrame(rows)
