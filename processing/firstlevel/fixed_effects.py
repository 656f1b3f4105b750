"""Fixed-effects combination of lower-level estimates (``flameo --runmode=fe``).

With lower-level effects ``y_i`` (COPEs), their variances ``s_i`` (VARCOPEs) and a design ``Z``
(a column of ones for the mean of a session's runs), each voxel's estimate is the generalised
least-squares fit with known variances: ``W = diag(1 / s_i)``, ``gamma = (Z'WZ)^-1 Z'W y``,
``Cov = (Z'WZ)^-1``. For the mean this is the inverse-variance weighted mean with variance
``1 / sum(1 / s_i)``. Degrees of freedom follow FSL: ``min(sum of lower-level dofs, cap) - r``
with ``r`` the number of regressors (nilearn's ``compute_fixed_effects`` differs: unweighted mean,
100 dof per input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.zstat import t_to_z

__all__ = ["FixedEffects", "fixed_effects", "fixed_effects_dof"]


@dataclass(frozen=True)
class FixedEffects:
    """Voxelwise fixed-effects result for one contrast of ``gamma``.

    Attributes
    ----------
    effect, variance, t, z : ndarray, shape (V,)
        Contrast estimate, its variance, t and z. Voxels where any input variance is not
        positive and finite (outside some input's mask) are 0 in every map.
    dof : float
        FSL's fixed-effects degrees of freedom.
    valid : ndarray of bool, shape (V,)
        Voxels where every input had a usable variance.
    """

    effect: NDArray[np.float64]
    variance: NDArray[np.float64]
    t: NDArray[np.float64]
    z: NDArray[np.float64]
    dof: float
    valid: NDArray[np.bool_]


def fixed_effects_dof(input_dofs: ArrayLike, n_regressors: int = 1, cap: float = 1000.0) -> float:
    """``min(sum(input_dofs), cap) - n_regressors`` (flameo's fixed-effects dof).

    Parameters
    ----------
    input_dofs : array_like, shape (k,)
        Degrees of freedom of each lower-level input.
    n_regressors : int
        Columns of the higher-level design (1 for a mean).
    cap : float
        FSL caps the summed dof at 1000.

    Returns
    -------
    float
    """
    dofs = np.asarray(input_dofs, dtype=np.float64)
    if dofs.ndim != 1 or dofs.size == 0 or not np.all(dofs > 0):
        raise ValueError(f"input dofs must be a non-empty list of positive numbers, got {dofs}")
    dof = min(float(dofs.sum()), float(cap)) - n_regressors
    if dof <= 0:
        raise ValueError(
            f"fixed-effects dof is {dof} (inputs {dofs.tolist()}, {n_regressors} regressors); "
            "combine fewer regressors or more inputs"
        )
    return dof


def _check_inputs(
    effects: ArrayLike, variances: ArrayLike, design: ArrayLike | None
) -> tuple[NDArray, NDArray, NDArray]:
    y = np.atleast_2d(np.asarray(effects, dtype=np.float64))
    s = np.atleast_2d(np.asarray(variances, dtype=np.float64))
    if y.shape != s.shape:
        raise ValueError(f"effects {y.shape} and variances {s.shape} must have the same shape")
    z = np.ones((y.shape[0], 1)) if design is None else np.asarray(design, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.shape[0] != y.shape[0]:
        raise ValueError(
            f"design has {z.shape[0]} rows but there are {y.shape[0]} inputs; one row per input"
        )
    if np.linalg.matrix_rank(z) < z.shape[1]:
        raise ValueError(f"higher-level design {z.tolist()} is rank deficient")
    return y, s, z


def fixed_effects(
    effects: ArrayLike,
    variances: ArrayLike,
    dofs: ArrayLike,
    *,
    design: ArrayLike | None = None,
    contrast: ArrayLike | None = None,
    dof_cap: float = 1000.0,
) -> FixedEffects:
    """Combine k lower-level maps with inverse-variance weights (FSL fixed effects).

    Parameters
    ----------
    effects, variances : array_like, shape (k, V)
        Lower-level COPEs and VARCOPEs (one row per run).
    dofs : array_like, shape (k,)
        Each input's degrees of freedom.
    design : array_like, shape (k, r), optional
        Higher-level design; default a column of ones (the mean).
    contrast : array_like, shape (r,), optional
        Contrast of ``gamma``; default ``[1, 0, ...]``.
    dof_cap : float
        Cap on the summed lower-level dofs (FSL: 1000).

    Returns
    -------
    FixedEffects
    """
    y, s, z = _check_inputs(effects, variances, design)
    c = np.zeros(z.shape[1]) if contrast is None else np.asarray(contrast, dtype=np.float64)
    if contrast is None:
        c[0] = 1.0
    if c.shape != (z.shape[1],):
        raise ValueError(f"contrast {c.tolist()} must have one weight per design column")
    dof = fixed_effects_dof(dofs, z.shape[1], dof_cap)
    valid = np.all(np.isfinite(s) & (s > 0) & np.isfinite(y), axis=0)
    w = np.where(valid, 1.0 / np.where(valid, s, 1.0), 0.0)  # (k, V)
    gram = np.einsum("kv,ka,kb->vab", w, z, z)  # (V, r, r)
    gram[~valid] = np.eye(z.shape[1])
    cov = np.linalg.inv(gram)
    gamma = np.einsum("vab,kb,kv->va", cov, z, w * y)
    effect = np.where(valid, gamma @ c, 0.0)
    variance = np.where(valid, np.einsum("a,vab,b->v", c, cov, c), 0.0)
    t = np.divide(effect, np.sqrt(variance), out=np.zeros_like(effect), where=valid)
    return FixedEffects(effect, variance, t, t_to_z(t, dof), dof, valid)
