"""Contrasts on a first-level GLM fit: t (cope, varcope, t, z) and Wald F statistics.

Voxels with zero or non-finite contrast variance (all-zero or constant time series at the mask
edge, exact fits) get effect, variance, statistic and z of exactly 0 and are counted in
``ContrastResult.n_zero_variance``; no NaN or inf is produced for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.firstlevel.glm import GLMFit
from processing.zstat import f_to_z, t_to_z

__all__ = ["ContrastResult", "compute_contrast", "contrast_vector"]


def contrast_vector(
    columns: Sequence[str],
    condition_list: Sequence[str],
    weights: Sequence[float],
    name: str,
) -> NDArray[np.float64]:
    """Build a t-contrast vector over the design's columns from named conditions.

    Parameters
    ----------
    columns : sequence of str, length p
        Design column names, in design order.
    condition_list : sequence of str
        Conditions (column names) the contrast weights.
    weights : sequence of float
        One weight per condition.
    name : str
        Contrast name, used in error messages.

    Returns
    -------
    ndarray, shape (p,), float64
        Weights at the conditions' columns, 0 elsewhere.
    """
    if len(weights) != len(condition_list):
        raise ValueError(
            f"contrast {name!r} has {len(weights)} weights for {len(condition_list)} conditions "
            f"{list(condition_list)}; give exactly one weight per condition"
        )
    index = {column: i for i, column in enumerate(columns)}
    vector = np.zeros(len(columns))
    for condition, weight in zip(condition_list, weights, strict=True):
        if condition not in index:
            raise ValueError(
                f"contrast {name!r} uses condition {condition!r}, which is not a design column; "
                f"columns are {list(columns)}"
            )
        if not np.isfinite(weight):
            raise ValueError(f"contrast {name!r} has a non-finite weight {weight!r}")
        vector[index[condition]] += float(weight)
    return vector


@dataclass(frozen=True)
class ContrastResult:
    """Statistics of one contrast over a block of V voxels.

    Attributes
    ----------
    effect : ndarray, shape (V,) for t, (q, V) for F
        Contrast estimate ``c beta`` (FSL's cope), per row of the contrast matrix for F.
    variance : ndarray, shape (V,) for t, (q, V) for F
        ``sigma2 * c inv_gram c'`` (FSL's varcope); for F, the varcope of each row.
    stat : ndarray, shape (V,)
        t statistic, or Wald F ``(C b)' (C V C')^-1 (C b) / q``.
    z : ndarray, shape (V,)
        Normal score with the same tail probability (``t_to_z`` / ``f_to_z``).
    dof : float or tuple of float
        Residual dof (t), or (q, residual dof) (F).
    kind : str
        ``"t"`` or ``"F"``.
    n_zero_variance : int
        Voxels reported as 0 because their variance was zero or non-finite.
    """

    effect: NDArray[np.float64]
    variance: NDArray[np.float64]
    stat: NDArray[np.float64]
    z: NDArray[np.float64]
    dof: float | tuple[float, float]
    kind: str
    n_zero_variance: int


def _check_contrast(fit: GLMFit, contrast: ArrayLike) -> NDArray[np.float64]:
    """Validate a (p,) or (q, p) contrast against the fit."""
    con = np.asarray(contrast, dtype=np.float64)
    p = fit.beta.shape[0]
    if con.ndim not in (1, 2) or con.shape[-1] != p:
        raise ValueError(
            f"contrast has shape {con.shape} but the design has {p} columns; give (p,) for a "
            "t contrast or (q, p) for an F contrast"
        )
    if not np.all(np.isfinite(con)):
        raise ValueError("contrast holds NaN or inf weights")
    if con.ndim == 2 and (con.shape[0] == 0 or np.linalg.matrix_rank(con) < con.shape[0]):
        raise ValueError(
            f"the {con.shape[0]} rows of the F contrast are linearly dependent (rank "
            f"{np.linalg.matrix_rank(con) if con.size else 0}); drop redundant rows"
        )
    if not np.any(con):
        raise ValueError("contrast is all zeros; give at least one non-zero weight")
    return con


def _quadratic(inv_gram: NDArray[np.float64], con: NDArray[np.float64]) -> NDArray[np.float64]:
    """``C inv_gram C'``: (q, q) for a shared inv_gram, (V, q, q) per voxel."""
    return con @ inv_gram @ con.T


def _invalid(variance: NDArray[np.float64], effect: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Voxels whose variance is not a positive finite number (or effect not finite)."""
    bad = ~(np.isfinite(variance) & (variance > 0))
    return bad | ~np.isfinite(effect).reshape(-1, bad.size).all(axis=0)


def _t_contrast(fit: GLMFit, con: NDArray[np.float64]) -> ContrastResult:
    effect = con @ fit.beta
    variance = fit.sigma2 * _quadratic(fit.inv_gram, con[None, :])[..., 0, 0]
    bad = _invalid(variance, effect)
    effect, variance = np.where(bad, 0.0, effect), np.where(bad, 0.0, variance)
    stat = effect / np.sqrt(np.where(bad, 1.0, variance))
    z = np.where(bad, 0.0, t_to_z(stat, fit.dof))
    return ContrastResult(effect, variance, stat, z, fit.dof, "t", int(bad.sum()))


def _f_contrast(fit: GLMFit, con: NDArray[np.float64]) -> ContrastResult:
    q = con.shape[0]
    effect = con @ fit.beta  # (q, V)
    quad = _quadratic(fit.inv_gram, con)  # (q, q) or (V, q, q)
    diag = np.diagonal(quad, axis1=-2, axis2=-1)  # (q,) or (V, q)
    variance = fit.sigma2[None, :] * np.broadcast_to(diag, (fit.n_voxels, q)).T
    bad = _invalid(fit.sigma2, effect) | ~np.all(variance > 0, axis=0)
    if quad.ndim == 2:
        solved = np.linalg.solve(quad, effect)  # (q, V)
    else:
        solved = np.linalg.solve(quad, effect.T[:, :, None])[:, :, 0].T
    wald = np.einsum("qv,qv->v", effect, solved)
    stat = np.where(bad, 0.0, wald / (q * np.where(bad, 1.0, fit.sigma2)))
    z = np.where(bad, 0.0, f_to_z(np.maximum(stat, 0.0), q, fit.dof))
    effect, variance = np.where(bad, 0.0, effect), np.where(bad, 0.0, variance)
    return ContrastResult(effect, variance, stat, z, (float(q), fit.dof), "F", int(bad.sum()))


def compute_contrast(fit: GLMFit, contrast: ArrayLike) -> ContrastResult:
    """t or F contrast of a GLM fit.

    Parameters
    ----------
    fit : GLMFit
        Result of ``fit_ols``, ``fit_ar1`` or ``fit_film``.
    contrast : array_like, shape (p,) or (q, p)
        A vector gives a t contrast: ``effect = c beta``, ``variance = sigma2 c inv_gram c'``,
        ``t = effect / sqrt(variance)``, ``z = t_to_z(t, dof)``. A matrix (rows linearly
        independent) gives a Wald F test with ``(q, dof)`` degrees of freedom and
        ``z = f_to_z(F, q, dof)``.

    Returns
    -------
    ContrastResult
        Zero-variance voxels are 0 everywhere and counted in ``n_zero_variance``.
    """
    con = _check_contrast(fit, contrast)
    return _t_contrast(fit, con) if con.ndim == 1 else _f_contrast(fit, con)
