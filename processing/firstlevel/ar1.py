"""Building blocks of the binned AR(1) GLM computed from lag-0/lag-1 cross-products.

Whitening ``w_t = x_t - a x_{t-1}`` (first sample unchanged, as nilearn) is linear in ``a`` and
``a^2``, so every inner product the fit needs follows from a few products taken once per batch
of voxels instead of once per coefficient bin:

``Z'w = X'y - a (sum_t x_t y_{t-1} + x_{t-1} y_t) + a^2 (X'y - x_{N-1} y_{N-1})`` and
``w'w = y'y - 2 a sum_t y_t y_{t-1} + a^2 (y'y - y_{N-1}^2)``.

One ``(3p, N) @ (N, V)`` product gives all of them; the per-bin work is a ``(p, p)`` matrix per
coefficient. The OLS residual lag-1 coefficient nilearn estimates comes from the same products.
Residual sums of squares taken by subtraction lose the relative precision of near-exact fits, so
voxels whose fit explains all but ``1e-8`` of their sum of squares are recomputed directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from processing.firstlevel.ar1_sandwich import sandwich_terms

__all__ = [
    "LagProducts",
    "WhiteningTerms",
    "lag_products",
    "near_exact",
    "ols_lag1",
    "spectrum_is_positive",
    "whitening_terms",
]

_NEAR_EXACT = 1e-8  # RSS below this fraction of w'w is recomputed from the residuals
_SPECTRUM_POINTS = 48  # frequencies on [0, pi] of the positive-spectrum test's first grid
_TERMS: dict[tuple, WhiteningTerms] = {}  # see whitening_terms


@dataclass(frozen=True)
class LagProducts:
    """Cross-products of a batch of voxels ``y`` (N, V) with the design ``X`` (N, p)."""

    xy: NDArray[np.float64]  # (p, V) sum_t x_t y_t
    x_lag_y: NDArray[np.float64]  # (p, V) sum_{t>=1} x_t y_{t-1} + x_{t-1} y_t
    xy_head: NDArray[np.float64]  # (p, V) sum_{t<N-1} x_t y_t
    yy: NDArray[np.float64]  # (V,)
    yy_lag: NDArray[np.float64]  # (V,) sum_{t>=1} y_t y_{t-1}
    yy_head: NDArray[np.float64]  # (V,) sum_{t<N-1} y_t^2

    def whitened(self, a: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
        """``Z'w`` (p, V) and ``w'w`` (V,) for per-voxel coefficients ``a`` (V,)."""
        zw = self.xy - a * self.x_lag_y + a**2 * self.xy_head
        ww = self.yy - 2.0 * a * self.yy_lag + a**2 * self.yy_head
        return zw, ww


def lag_products(y: NDArray[np.float64], design: NDArray[np.float64]) -> LagProducts:
    """The lag-0 and lag-1 products of ``y`` (N, V) and ``design`` (N, p), one BLAS call."""
    p = design.shape[1]
    shifted = np.zeros((3 * p, design.shape[0]))
    shifted[:p] = design.T
    shifted[p : 2 * p, :-1] = design[1:].T  # row t: x_{t+1}, pairs with y_t
    shifted[2 * p :, 1:] = design[:-1].T  # row t: x_{t-1}, pairs with y_t
    prod = shifted @ y
    xy = prod[:p]
    yy = np.einsum("nv,nv->v", y, y)
    return LagProducts(
        xy=xy,
        x_lag_y=prod[p : 2 * p] + prod[2 * p :],
        xy_head=xy - np.outer(design[-1], y[-1]),
        yy=yy,
        yy_lag=np.einsum("nv,nv->v", y[1:], y[:-1]),
        yy_head=yy - y[-1] ** 2,
    )


def ols_lag1(
    y: NDArray[np.float64], design: NDArray[np.float64], pinv: NDArray, prods: LagProducts
) -> NDArray[np.float64]:
    """nilearn's Yule-Walker lag-1 coefficient of the centred OLS residuals, per voxel.

    ``r = y - X pinv(X) y``; ``sum (r_t - m)^2 / N`` and ``sum (r_t - m)(r_{t-1} - m) / (N - 1)``
    with ``m`` the residual mean, all from ``prods``; 0 where the residuals are all zero.
    """
    n_scans = y.shape[0]
    beta = pinv @ y
    lag0 = prods.yy - 2 * np.einsum("pv,pv->v", beta, prods.xy)
    lag0 += np.einsum("pv,pq,qv->v", beta, design.T @ design, beta)
    lag1 = prods.yy_lag - np.einsum("pv,pv->v", beta, prods.x_lag_y)
    lag1 += np.einsum("pv,pq,qv->v", beta, design[1:].T @ design[:-1], beta)
    mean = y.mean(axis=0) - design.mean(axis=0) @ beta
    first, last = y[0] - design[0] @ beta, y[-1] - design[-1] @ beta
    lag0 = (lag0 - n_scans * mean**2) / n_scans
    lag1 = (lag1 - mean * (2 * n_scans * mean - first - last) + (n_scans - 1) * mean**2) / (
        n_scans - 1
    )
    positive = lag0 > 0
    return np.where(positive, lag1 / np.where(positive, lag0, 1.0), 0.0)


def whitening_terms(design: NDArray[np.float64], n_lags: int) -> WhiteningTerms:
    """The :class:`WhiteningTerms` of ``design`` and ``n_lags``, shared by every batch of a run
    (the blocks of one run have the same design; the last few designs are kept)."""
    key = (design.shape, design.tobytes(), n_lags)
    terms = _TERMS.get(key)
    if terms is None:
        terms = WhiteningTerms(design.copy(), n_lags)
        if len(_TERMS) >= 4:
            _TERMS.pop(next(iter(_TERMS)))
        _TERMS[key] = terms
    return terms


@dataclass
class WhiteningTerms:
    """Per-coefficient matrices of one design, computed once per distinct coefficient.

    ``gram(a)`` is ``(Z'Z)^+`` for ``Z = W_a X``; ``sandwich(a)`` the per-lag terms of
    :func:`processing.firstlevel.ar1_sandwich.sandwich_terms` flattened to ``(M + 1, p * p)``
    and ``(M + 1,)``.
    """

    design: NDArray[np.float64]
    n_lags: int = 0
    _gram: dict[float, NDArray[np.float64]] = field(default_factory=dict)
    _sandwich: dict[float, tuple[NDArray, NDArray]] = field(default_factory=dict)

    def gram(self, a: float) -> NDArray[np.float64]:
        """``(Z'Z)^+`` (p, p) for whitening coefficient ``a``."""
        if a not in self._gram:
            z = self.design.copy()
            z[1:] -= a * self.design[:-1]
            pinv = np.linalg.pinv(z)
            self._gram[a] = pinv @ pinv.T
        return self._gram[a]

    def sandwich(self, a: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Covariance terms (M + 1, p * p) and residual-trace terms (M + 1,) for ``a``."""
        if a not in self._sandwich:
            cov, trace = sandwich_terms(self.design, a, self.n_lags)
            self._sandwich[a] = (cov.reshape(cov.shape[0], -1), trace)
        return self._sandwich[a]


def spectrum_is_positive(acf: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Voxels whose autocorrelation (M, V) (lags 1..M, 0 beyond) is a positive-definite sequence.

    The spectrum ``S(w) = 1 + 2 sum_k acf_k cos(k w)`` is evaluated on a grid of [0, pi] with
    spacing ``h``; a voxel passes when its smallest value exceeds the most ``S`` can dip between
    two grid points: ``h/2 max|S'|`` and ``h^2/8 max|S''|`` (below the chord), with
    ``|S'| <= 2 sum_k k |acf_k|`` and ``|S''| <= 2 sum_k k^2 |acf_k|``; the smaller bound is used.
    Then its Toeplitz matrix, and any ``Q' V Q``, is positive semi-definite. Voxels positive on
    the coarse grid whose bound is not met are tried again on a grid 8 times finer. Voxels
    failing are not necessarily indefinite: callers check them exactly.
    """
    lags = np.arange(1, acf.shape[0] + 1, dtype=np.float64)
    magnitude = np.abs(acf)
    slope, curvature = 2.0 * (lags @ magnitude), 2.0 * (lags**2 @ magnitude)
    passed = np.zeros(acf.shape[1], dtype=bool)
    todo = np.arange(acf.shape[1])
    for points in (_SPECTRUM_POINTS, 8 * _SPECTRUM_POINTS):
        freqs = np.linspace(0.0, np.pi, points)
        block = acf if todo.size == acf.shape[1] else acf[:, todo]
        lowest = 1.0 + 2.0 * (np.cos(np.outer(freqs, lags)) @ block).min(axis=0)
        step = np.pi / (points - 1)
        slack = np.minimum(step / 2 * slope[todo], step**2 / 8 * curvature[todo])
        passed[todo[lowest > slack]] = True
        todo = todo[(lowest > 0) & (lowest <= slack)]
        if not todo.size:
            break
    return passed


def near_exact(rss: NDArray[np.float64], ww: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Voxels whose subtracted RSS is too small a fraction of ``w'w`` to trust."""
    return rss <= _NEAR_EXACT * ww
