"""Robust (sandwich) covariance for the AR(1)-prewhitened GLM.

An AR(1) whitening ``W`` (``w_t = x_t - rho x_{t-1}``) leaves the noise correlated when the
noise is not AR(1) (e.g. AR(2): about 0.18 at lag 2 after whitening), and the usual
``sigma2 (Z'Z)^-1`` (``Z = W X``) then underestimates the contrast variance. With ``V`` the
noise autocorrelation matrix (Toeplitz of ``rho_0 = 1, rho_1, .., rho_M``, zero beyond M),
the estimate ``beta = Z^+ W y`` has

``Cov(beta) = s2 Q' V Q`` with ``Q = W' Z^+'`` (N x p),

and the whitened residual sum of squares has ``E[RSS] = s2 tr(W' R W V)`` (``R = I - Z Z^+``),
so ``s2 = RSS / tr(W' R W V)``. Both are linear in the autocorrelation: per lag ``k``,
``Q' (D_k + D_k') Q`` and the ``k``-th diagonal sums of ``W' R W`` depend only on the design
and ``rho``, so they are computed once per quantised coefficient (voxels share them, as in the
binned AR(1) fit) and combined per voxel with that voxel's autocorrelation. The estimate stays
the AR(1) GLS estimate; only its variance changes. The autocorrelation is the spatially
smoothed, bias-corrected FILM estimate (untapered: the sandwich needs no positive-definite
spectrum, and the taper would shrink the correlation it is meant to capture). Voxels where the
estimated ``V`` makes a variance non-positive keep the plain AR(1) covariance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["sandwich_covariance", "sandwich_terms"]


def _whiten(v: NDArray[np.float64], rho: float) -> NDArray[np.float64]:
    """``W v`` for nilearn's AR(1) whitening (first sample unscaled)."""
    out = v.copy()
    out[1:] -= rho * v[:-1]
    return out


def _whiten_transposed(v: NDArray[np.float64], rho: float) -> NDArray[np.float64]:
    """``W' v``."""
    out = v.copy()
    out[:-1] -= rho * v[1:]
    return out


def sandwich_terms(
    design: ArrayLike, rho: float, n_lags: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-lag terms of the sandwich covariance and of the residual trace, for one coefficient.

    Parameters
    ----------
    design : array_like, shape (N, p)
        The unwhitened design.
    rho : float
        The AR(1) whitening coefficient.
    n_lags : int
        Largest lag M of the noise autocorrelation.

    Returns
    -------
    cov_terms : ndarray, shape (M + 1, p, p)
        ``Q'Q`` and ``Q' (D_k + D_k') Q`` for k = 1..M.
    trace_terms : ndarray, shape (M + 1,)
        ``tr(W'RW)`` and ``2 * sum(diag_k(W'RW))`` for k = 1..M.
    """
    x = np.asarray(design, dtype=np.float64)
    n_scans = x.shape[0]
    if not 1 <= n_lags < n_scans:
        raise ValueError(f"n_lags must be in 1..{n_scans - 1}, got {n_lags}")
    z = _whiten(x, rho)
    z_pinv = np.linalg.pinv(z)
    q = _whiten_transposed(z_pinv.T, rho)  # W' Z^+' (N, p)
    b = _whiten_transposed(z, rho)  # W'Z; W'RW = W'W - (W'Z)(Z^+ W) and Z^+ W = q'
    cov = np.empty((n_lags + 1, x.shape[1], x.shape[1]))
    cov[0] = q.T @ q
    hat = np.empty(n_lags + 1)  # diagonal sums of (W'Z)(Z^+ W) = b q'
    hat[0] = np.sum(b * q)
    for k in range(1, n_lags + 1):
        lagged = q[:-k].T @ q[k:]
        cov[k] = lagged + lagged.T
        hat[k] = np.sum(b[:-k] * q[k:])
    gram = np.zeros(n_lags + 1)  # diagonal sums of the tridiagonal W'W
    gram[0] = n_scans + (n_scans - 1) * rho**2
    gram[1] = -rho * (n_scans - 1)
    trace = gram - hat
    trace[1:] *= 2.0
    return cov, trace


def sandwich_covariance(
    design: ArrayLike,
    rho: float,
    autocorrelation: ArrayLike,
    rss: ArrayLike,
    plain_inv_gram: ArrayLike,
    plain_sigma2: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sandwich ``inv_gram`` and ``sigma2`` for voxels whitened with the same coefficient.

    Parameters
    ----------
    design : array_like, shape (N, p)
    rho : float
        The voxels' (quantised) AR(1) whitening coefficient.
    autocorrelation : array_like, shape (M, V)
        Noise autocorrelation at lags 1..M per voxel (smoothed, bias-corrected).
    rss : array_like, shape (V,)
        Whitened residual sums of squares.
    plain_inv_gram : array_like, shape (p, p)
        ``(Z'Z)^+``, kept where the sandwich is not positive.
    plain_sigma2 : array_like, shape (V,)
        ``RSS / dof``, kept where the sandwich is not positive.

    Returns
    -------
    inv_gram : ndarray, shape (V, p, p)
        ``Q' V Q`` per voxel (``Cov(beta) = sigma2 * inv_gram``).
    sigma2 : ndarray, shape (V,)
        ``RSS / tr(W'RWV)``.
    """
    acf = np.asarray(autocorrelation, dtype=np.float64)
    if acf.ndim != 2:
        raise ValueError(f"autocorrelation must be (n_lags, n_voxels), got shape {acf.shape}")
    cov_terms, trace_terms = sandwich_terms(design, rho, acf.shape[0])
    lags = np.vstack([np.ones((1, acf.shape[1])), acf])
    inv_gram = np.einsum("kv,kab->vab", lags, cov_terms)
    trace = trace_terms @ lags
    eig = np.linalg.eigvalsh(inv_gram)
    ok = (trace > 0) & (eig[:, 0] > -1e-10 * eig[:, -1])  # PSD (rank-deficient designs: 0)
    inv_gram[~ok] = np.asarray(plain_inv_gram, dtype=np.float64)
    sigma2 = np.where(ok, np.asarray(rss, float) / np.where(ok, trace, 1.0), plain_sigma2)
    return inv_gram, sigma2
