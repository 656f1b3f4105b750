"""Exact conversion of t and F statistics to z (standard normal) scores.

``z`` is the normal quantile with the same tail probability as the statistic. Tail probabilities
are handled as logarithms throughout, so a t of 40 with 10 degrees of freedom (p about 1e-12) or of
1e6 (p far below the smallest float64) still gives a finite, monotonic z instead of inf: where
scipy's log tail probability underflows, the leading term of the incomplete-beta series gives it
(relative error of order ``dof / t**2``, negligible there). FSL's ``ttoz``/``ftoz`` serve the same
purpose.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

__all__ = ["f_to_z", "log_t_sf", "t_to_z"]

_UNDERFLOW_LOG = -600.0  # below this, use the series (float64 tail probabilities end near -745)


def _log_betainc_small_x(x: NDArray, a: NDArray, b: NDArray) -> NDArray:
    """log I_x(a, b) for small ``x`` from the leading term of its power series."""
    return a * np.log(x) + b * np.log1p(-x) - np.log(a) - special.betaln(a, b)


def _check_dof(dof: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(dof, dtype=np.float64)
    if not np.all(arr > 0):
        bad = arr[~(arr > 0)].ravel()[0]
        raise ValueError(f"{name} must be > 0, got {bad}; a model needs more scans than columns")
    return arr


def log_t_sf(t: ArrayLike, dof: ArrayLike) -> NDArray[np.float64]:
    """Natural log of the upper tail probability P(T > t) of Student's t.

    Parameters
    ----------
    t : array_like
        Statistic values (any sign, finite or +-inf).
    dof : array_like
        Degrees of freedom (> 0), broadcastable against ``t``.

    Returns
    -------
    ndarray of float64
        ``log P(T > t)``; finite for every finite ``t``.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    nu = _check_dof(dof, "dof")
    t_arr, nu = np.broadcast_arrays(t_arr, nu)
    with np.errstate(divide="ignore"):  # log(0) where the tail underflows: the series below
        out = np.asarray(
            np.log(special.stdtr(nu, -t_arr)), dtype=np.float64
        )  # P(T > t) = P(T < -t)
    deep = (t_arr > 0) & ~(out > _UNDERFLOW_LOG) & np.isfinite(t_arr)
    if deep.any():
        tt, nn = t_arr[deep], nu[deep]
        x = nn / (nn + tt * tt)
        out[deep] = np.log(0.5) + _log_betainc_small_x(x, nn / 2.0, np.full_like(nn, 0.5))
    return out


def t_to_z(t: ArrayLike, dof: ArrayLike) -> NDArray[np.float64]:
    """Convert t statistics to z scores with the same tail probability.

    Parameters
    ----------
    t : array_like
        t statistics; NaN stays NaN, +-inf becomes +-inf.
    dof : array_like
        Degrees of freedom (> 0), scalar or broadcastable (e.g. per voxel).

    Returns
    -------
    ndarray of float64, shape of ``broadcast(t, dof)``
        ``z`` with ``Phi(-|z|) = P(T > |t|)`` and the sign of ``t``; exact (to float64) for
        moderate values, finite and monotonic for arbitrarily large finite ``t``.
    """
    t_arr = np.asarray(t, dtype=np.float64)
    magnitude = -special.ndtri_exp(log_t_sf(np.abs(t_arr), dof))
    return np.where(np.isinf(t_arr), t_arr, np.sign(t_arr) * magnitude) + 0.0


def f_to_z(f: ArrayLike, dof1: ArrayLike, dof2: ArrayLike) -> NDArray[np.float64]:
    """Convert F statistics to z scores with the same upper tail probability.

    Parameters
    ----------
    f : array_like
        F statistics (>= 0; NaN stays NaN).
    dof1, dof2 : array_like
        Numerator (contrast rank) and denominator (residual) degrees of freedom.

    Returns
    -------
    ndarray of float64
        ``z`` with ``P(Z > z) = P(F > f)``: negative for F below its median, finite for
        arbitrarily large finite ``f``.
    """
    f_arr = np.asarray(f, dtype=np.float64)
    d1, d2 = _check_dof(dof1, "dof1"), _check_dof(dof2, "dof2")
    f_arr, d1, d2 = np.broadcast_arrays(f_arr, d1, d2)
    if np.any(f_arr < 0):
        raise ValueError(f"F statistics must be >= 0, got {f_arr[f_arr < 0].ravel()[0]}")
    log_sf = np.asarray(stats.f.logsf(f_arr, d1, d2), dtype=np.float64)
    deep = ~(log_sf > _UNDERFLOW_LOG) & np.isfinite(f_arr)
    if deep.any():
        x = d2[deep] / (d2[deep] + d1[deep] * f_arr[deep])
        log_sf[deep] = _log_betainc_small_x(x, d2[deep] / 2.0, d1[deep] / 2.0)
    z = -special.ndtri_exp(log_sf)
    return np.where(np.isinf(f_arr), np.inf, z)
