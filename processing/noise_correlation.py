"""Spatial lag-1 correlation of noise, from residuals (FSL ``smoothest``'s first step).

Residuals are standardised per voxel (unit sum of squares over their rows: time points of a
run, or subjects of a group design). For each array axis ``d`` the lag-1 correlation between
neighbouring in-mask voxels is

    rho_d = sum r(v) r(v + e_d) / sqrt(sum r(v)^2 sum r(v + e_d)^2)

over all rows and all pairs of in-mask neighbours along ``d``. The three sums are additive, so
blocks of one image can be summed separately (:func:`lag1_sums`) and combined later
(:func:`lag1_correlation`); pairs that straddle two blocks are left out, which only lowers the
pair count. A Gaussian autocorrelation of standard deviation ``s`` voxels has
``rho = exp(-1 / (4 s^2))``.

The first level uses the run's OLS residuals (:func:`residual_lag1_sums`): the effect map of a
contrast is a linear function of each voxel's time series, so its noise has the spatial
correlation of the data's noise; the normalisation needs it to resample variance maps
(:mod:`processing.normalise.resample`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["lag1_correlation", "lag1_sums", "residual_lag1_sums"]


def lag1_sums(residuals: ArrayLike, mask: ArrayLike) -> NDArray[np.float64]:
    """Sums for the lag-1 correlation along each axis of ``mask`` (module docstring).

    Parameters
    ----------
    residuals : array_like, shape (N, V)
        Residuals of the V in-mask voxels in the order of ``np.nonzero(mask)``, N rows.
    mask : array_like of bool, 3-D
        The voxels the residuals belong to; its axis order is the order of the result.

    Returns
    -------
    ndarray, shape (3, 3)
        Per axis: ``sum r(v) r(v + e_d)``, ``sum r(v)^2``, ``sum r(v + e_d)^2`` over pairs.
    """
    m = np.asarray(mask, dtype=bool)
    r = np.asarray(residuals, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {m.shape}")
    if r.ndim != 2 or r.shape[1] != int(m.sum()):
        raise ValueError(f"residuals must have shape (N, {int(m.sum())}), got {r.shape}")
    norm = np.sqrt((r**2).sum(0))
    r = np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)
    vol = np.zeros((r.shape[0], *m.shape))
    vol[:, m] = r
    sums = np.zeros((3, 3))
    for d in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[d], hi[d] = slice(0, -1), slice(1, None)
        pair = m[tuple(lo)] & m[tuple(hi)]
        a = vol[(slice(None), *lo)][:, pair]
        b = vol[(slice(None), *hi)][:, pair]
        sums[d] = ((a * b).sum(), (a * a).sum(), (b * b).sum())
    return sums


def lag1_correlation(sums: ArrayLike) -> NDArray[np.float64]:
    """Lag-1 correlation per axis from (summed) :func:`lag1_sums`.

    Parameters
    ----------
    sums : array_like, shape (3, 3)

    Returns
    -------
    ndarray, shape (3,)
        NaN along an axis without voxel pairs.
    """
    s = np.asarray(sums, dtype=np.float64)
    if s.shape != (3, 3):
        raise ValueError(f"sums must have shape (3, 3) (lag1_sums), got {s.shape}")
    denom = np.sqrt(s[:, 1] * s[:, 2])
    return np.divide(s[:, 0], denom, out=np.full(3, np.nan), where=denom > 0)


def residual_lag1_sums(y: ArrayLike, x: ArrayLike, mask: ArrayLike) -> NDArray[np.float64]:
    """:func:`lag1_sums` of the OLS residuals of a block of time series.

    Parameters
    ----------
    y : array_like, shape (n_scans, V)
        In-mask time series (order of ``np.nonzero(mask)``).
    x : array_like, shape (n_scans, p)
        Design; data and design are demeaned before the fit.
    mask : array_like of bool, 3-D
        The block's in-mask voxels.

    Returns
    -------
    ndarray, shape (3, 3)
    """
    yc = np.asarray(y, dtype=np.float64)
    yc = yc - yc.mean(0)
    xc = np.asarray(x, dtype=np.float64)
    xc = xc - xc.mean(0)
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(f"design has {xc.shape[0]} rows, data {yc.shape[0]} scans")
    residuals = yc - xc @ (np.linalg.pinv(xc) @ yc)
    return lag1_sums(residuals, mask)
