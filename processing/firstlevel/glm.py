"""First-level GLM kernels on a block of voxels: OLS, nilearn-style binned AR(1) and FSL FILM.

Conventions: ``Y`` is ``(n_scans, n_voxels)`` (float32 or float64; computed in float64 in
sub-batches of voxels), ``X`` is the ``(n_scans, p)`` design. FEAT designs are filtered and
demeaned with no intercept, and FEAT demeans the data: ``demean=True`` (default) subtracts each
voxel's temporal mean before fitting. With ``demean=False`` any design, an intercept included,
is fitted as given (as nilearn does).

Voxels whose residual sum of squares is zero up to rounding (constant or all-zero series, exact
fits: ``SS_res <= 1e-24 * sum(y^2)``) get ``sigma2 = 0`` exactly; contrasts report them with
``z = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.firstlevel.ar1 import (
    WhiteningTerms,
    lag_products,
    near_exact,
    ols_lag1,
    spectrum_is_positive,
    whitening_terms,
)
from processing.firstlevel.film import (
    correct_autocorrelation,
    film_fft_length,
    film_lags,
    gls_spectral,
    gls_truncated,
    tukey_taper,
    whitening_spectrum,
)

__all__ = ["GLMFit", "check_glm_inputs", "fit_ar1", "fit_film", "fit_ols", "residuals"]

_BATCH = 4096  # voxels per float64 sub-batch
_TRUNCATED_BATCH = 256  # voxels per batch for FILM's per-voxel design filtering
_ZERO_REL = 1e-24  # SS_res below this fraction of sum(y^2) counts as exactly zero


@dataclass(frozen=True)
class GLMFit:
    """Result of a first-level GLM fit on a block of V voxels.

    Attributes
    ----------
    beta : ndarray, shape (p, V)
        Parameter estimates (units of Y per unit regressor).
    sigma2 : ndarray, shape (V,)
        Residual variance ``SS_res / dof`` (of the whitened residuals for ar1 / film).
    dof : float
        Residual degrees of freedom: ``N - rank(X)`` (ols, ar1, as nilearn), ``N - p`` (film).
    noise_model : str
        ``"ols"``, ``"ar1"`` or ``"film"``.
    inv_gram : ndarray, shape (p, p) or (V, p, p)
        Unscaled covariance of beta, ``(X'X)^-1`` (pseudo-inverse for ols / ar1), shared (ols)
        or per voxel for the whitened designs; ``Cov(beta) = sigma2 * inv_gram``.
    demeaned : bool
        Whether Y was demeaned before fitting.
    ar1 : ndarray, shape (V,), optional
        Quantised lag-1 autoregressive coefficient used per voxel (ar1 only).
    """

    beta: NDArray[np.float64]
    sigma2: NDArray[np.float64]
    dof: float
    noise_model: str
    inv_gram: NDArray[np.float64]
    demeaned: bool
    ar1: NDArray[np.float64] | None = None

    @property
    def n_voxels(self) -> int:
        """Number of voxels V in the block."""
        return int(self.beta.shape[1])


def check_glm_inputs(Y: ArrayLike, X: ArrayLike) -> tuple[NDArray, NDArray[np.float64]]:
    """Validate ``Y`` (N, V) and ``X`` (N, p); return ``Y`` as an array, ``X`` as float64.

    ``Y`` keeps its dtype (NaN is checked batch by batch while fitting); raises ValueError naming
    the shapes or values at fault.
    """
    data = np.asarray(Y)
    design = np.asarray(X)
    if data.ndim != 2:
        raise ValueError(
            f"Y must be (n_scans, n_voxels), got shape {data.shape}; use y[:, None] for one series"
        )
    if design.ndim != 2:
        raise ValueError(f"design X must be (n_scans, n_regressors), got shape {design.shape}")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise ValueError(f"Y must hold real numbers, got dtype {data.dtype}")
    if data.shape[0] != design.shape[0]:
        raise ValueError(
            f"Y has shape {data.shape} and the design X has shape {design.shape}: they need the "
            "same number of rows (scans); check that the design was built for this run"
        )
    n_scans, p = design.shape
    if p >= n_scans:
        raise ValueError(
            f"the design has {p} columns for only {n_scans} scans, leaving no residual degrees of "
            "freedom; drop confounds or conditions"
        )
    design = design.astype(np.float64)
    bad = ~np.isfinite(design)
    if bad.any():
        raise ValueError(
            f"design X holds {int(bad.sum())} NaN/inf values (first in column "
            f"{int(np.argwhere(bad)[0, 1])}); fix the regressors before fitting"
        )
    return data, design


def _load(
    Y: NDArray, columns: slice | NDArray[np.intp], demean: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """A float64 copy of some voxels (optionally demeaned) and their raw sum of squares."""
    y = np.array(Y[:, columns], dtype=np.float64)
    if not np.all(np.isfinite(y)):
        voxel = int(np.argwhere(~np.isfinite(y))[0, 1])
        first = columns.start + voxel if isinstance(columns, slice) else int(columns[voxel])
        raise ValueError(
            f"Y holds NaN or inf (first in voxel column {first}); drop non-finite voxels from "
            "the mask or replace them before fitting"
        )
    scale = np.einsum("nv,nv->v", y, y)
    if demean:
        y -= y.mean(axis=0)
    return y, scale


def _zero_tiny(ss_res: NDArray[np.float64], scale: NDArray[np.float64]) -> NDArray[np.float64]:
    """Clip negative rounding and set SS_res that is zero up to rounding to exactly 0."""
    return np.where(ss_res <= _ZERO_REL * scale, 0.0, ss_res)


def _dof_rank(design: NDArray[np.float64]) -> float:
    """``N - rank(X)`` as nilearn computes it."""
    tol = np.abs(design).sum() * np.finfo(np.float64).eps
    return float(design.shape[0] - np.linalg.matrix_rank(design, tol))


def fit_ols(Y: ArrayLike, X: ArrayLike, demean: bool = True) -> GLMFit:
    """Ordinary least squares on a block of voxels.

    Parameters
    ----------
    Y : array_like, shape (N, V)
        Time series of V voxels.
    X : array_like, shape (N, p)
        Design; may be rank deficient (pseudo-inverse, as nilearn).
    demean : bool
        Subtract each voxel's temporal mean first (FEAT; use False with an intercept column).

    Returns
    -------
    GLMFit
        ``noise_model="ols"``, shared ``inv_gram`` (p, p), ``dof = N - rank(X)``.
    """
    data, design = check_glm_inputs(Y, X)
    n_voxels = data.shape[1]
    pinv = np.linalg.pinv(design)
    dof = _dof_rank(design)
    beta = np.empty((design.shape[1], n_voxels))
    sigma2 = np.empty(n_voxels)
    for start in range(0, n_voxels, _BATCH):
        cols = slice(start, min(start + _BATCH, n_voxels))
        y, scale = _load(data, cols, demean)
        beta[:, cols] = pinv @ y
        resid = y - design @ beta[:, cols]
        sigma2[cols] = _zero_tiny(np.einsum("nv,nv->v", resid, resid), scale) / dof
    return GLMFit(beta, sigma2, dof, "ols", pinv @ pinv.T, demean)


def fit_ar1(
    Y: ArrayLike,
    X: ArrayLike,
    bins: int = 100,
    demean: bool = True,
    bias: ArrayLike | None = None,
    *,
    rho: ArrayLike | None = None,
    autocorrelation: ArrayLike | None = None,
) -> GLMFit:
    """nilearn-style AR(1) GLM: OLS residuals -> binned lag-1 coefficient -> whitened refit.

    As ``nilearn.glm.first_level.run_glm(noise_model="ar1")``: the Yule-Walker lag-1 coefficient
    of each voxel's OLS residuals is truncated towards zero to a multiple of ``1 / bins``; voxels
    sharing a value are refitted together with design and data whitened by
    ``w_t = x_t - rho x_{t-1}`` (first sample kept unscaled, as nilearn). One difference:
    residuals are centred per voxel, where nilearn subtracts one grand mean over the whole
    block (identical when the design holds an intercept or the data are demeaned).

    Parameters
    ----------
    Y : array_like, shape (N, V)
    X : array_like, shape (N, p)
    bins : int
        Quantisation levels per unit of the coefficient (nilearn default 100).
    demean : bool
        Subtract each voxel's temporal mean first.
    bias : array_like, shape (2, 2), optional
        ``autocorrelation_bias(X, 1, highpass)``: removes the residual-fitting (and high-pass)
        bias of the lag-1 coefficient before binning, as :func:`correct_autocorrelation` does
        for FILM. Not in nilearn; ``None`` reproduces nilearn exactly.
    rho : array_like, shape (V,), optional
        Lag-1 coefficients to use instead of estimating them (e.g. the spatially smoothed,
        bias-corrected FILM autocorrelation at lag 1); ``bias`` is then ignored.
    autocorrelation : array_like, shape (M, V), optional
        Noise autocorrelation at lags 1..M per voxel: the covariance of beta becomes the
        sandwich estimate allowing for the correlation an AR(1) whitening leaves
        (:mod:`processing.firstlevel.ar1_sandwich`); beta is unchanged. ``None``: nilearn's.

    Returns
    -------
    GLMFit
        ``noise_model="ar1"``, per-voxel ``inv_gram`` (V, p, p), ``ar1`` the binned
        coefficients, ``dof = N - rank(X)``.
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    data, design = check_glm_inputs(Y, X)
    n_voxels, p = data.shape[1], design.shape[1]
    if rho is not None and (np.shape(rho) != (n_voxels,) or not np.all(np.isfinite(rho))):
        raise ValueError(f"rho must hold {n_voxels} finite coefficients, got {np.shape(rho)}")
    acf = None if autocorrelation is None else np.asarray(autocorrelation, dtype=np.float64)
    if acf is not None and (acf.ndim != 2 or acf.shape[1] != n_voxels):
        raise ValueError(f"autocorrelation must be (n_lags, {n_voxels}), got {acf.shape}")
    dof = _dof_rank(design)
    pinv = np.linalg.pinv(design)
    terms = whitening_terms(design, 0 if acf is None else acf.shape[0])
    beta, sigma2 = np.empty((p, n_voxels)), np.empty(n_voxels)
    inv_gram, coefficients = np.empty((n_voxels, p, p)), np.empty(n_voxels)
    for start in range(0, n_voxels, _BATCH):
        cols = slice(start, min(start + _BATCH, n_voxels))
        y, scale = _load(data, cols, demean)
        prods = lag_products(y, design)
        if rho is None:
            a = ols_lag1(y, design, pinv, prods)
            if bias is not None:
                a = correct_autocorrelation(a[None, :], np.asarray(bias, dtype=np.float64))[0]
        else:
            a = np.asarray(rho[cols], dtype=np.float64)
        a = np.trunc(a * bins) / bins
        values, inverse = np.unique(a, return_inverse=True)
        grams = np.stack([terms.gram(v) for v in values])[inverse]
        zw, ww = prods.whitened(a)
        beta[:, cols] = np.einsum("vpq,qv->pv", grams, zw)
        rss = _whitened_rss(y, design, a, beta[:, cols], zw, ww)
        rss = _zero_tiny(rss, scale)
        coefficients[cols] = a
        if acf is None:
            inv_gram[cols], sigma2[cols] = grams, rss / dof
        else:
            inv_gram[cols], sigma2[cols] = _sandwich(
                terms, values, inverse, acf[:, cols], rss, grams, dof
            )
    return GLMFit(beta, sigma2, dof, "ar1", inv_gram, demean, ar1=coefficients)


def _whitened_rss(
    y: NDArray[np.float64],
    design: NDArray[np.float64],
    a: NDArray[np.float64],
    beta: NDArray[np.float64],
    zw: NDArray[np.float64],
    ww: NDArray[np.float64],
) -> NDArray[np.float64]:
    """``|w - Z beta|^2`` per voxel: by subtraction, recomputed directly for near-exact fits."""
    rss = ww - np.einsum("pv,pv->v", beta, zw)
    redo = np.flatnonzero(near_exact(rss, ww))
    if redo.size:
        resid = y[:, redo] - design @ beta[:, redo]
        resid[1:] -= a[redo] * (y[:-1, redo] - design[:-1] @ beta[:, redo])
        rss[redo] = np.einsum("nv,nv->v", resid, resid)
    return rss


def _sandwich(
    terms: WhiteningTerms,
    values: NDArray[np.float64],
    inverse: NDArray[np.intp],
    acf: NDArray[np.float64],
    rss: NDArray[np.float64],
    grams: NDArray[np.float64],
    dof: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sandwich ``inv_gram`` and ``sigma2`` of a batch (see :mod:`.ar1_sandwich`); voxels whose
    sandwich is not positive semi-definite keep the plain AR(1) covariance."""
    n_voxels, p = grams.shape[0], grams.shape[1]
    lags = np.vstack([np.ones((1, n_voxels)), acf])
    inv_gram = np.empty((n_voxels, p * p))
    trace = np.empty(n_voxels)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
    for k, value in enumerate(values):
        idx = order[bounds[k] : bounds[k + 1]]
        cov, tr = terms.sandwich(float(value))
        inv_gram[idx] = lags[:, idx].T @ cov
        trace[idx] = tr @ lags[:, idx]
    inv_gram = inv_gram.reshape(n_voxels, p, p)
    ok = (trace > 0) & spectrum_is_positive(acf)
    check = np.flatnonzero((trace > 0) & ~ok)
    if check.size:
        eig = np.linalg.eigvalsh(inv_gram[check])
        ok[check] = eig[:, 0] > -1e-10 * eig[:, -1]
    inv_gram[~ok] = grams[~ok]
    sigma2 = np.where(ok, rss / np.where(ok, trace, 1.0), rss / dof)
    return inv_gram, sigma2


def _check_acf(acf: ArrayLike, n_scans: int, n_voxels: int) -> NDArray:
    """Validate a raw autocorrelation block (M_raw >= M, V)."""
    arr = np.asarray(acf)
    n_lags = film_lags(n_scans)
    if arr.ndim != 2 or arr.shape[1] != n_voxels or arr.shape[0] < n_lags:
        raise ValueError(
            f"acf must be (n_lags >= {n_lags}, n_voxels={n_voxels}) for {n_scans} scans, got "
            f"shape {arr.shape}; compute it with residual_autocorrelation(res, film_lags(N))"
        )
    if not np.all(np.isfinite(arr[:n_lags])):
        raise ValueError("acf holds NaN or inf; set the autocorrelation of bad voxels to 0")
    return arr


def fit_film(
    Y: ArrayLike,
    X: ArrayLike,
    acf: ArrayLike,
    method: Literal["spectral", "truncated"] = "spectral",
    demean: bool = True,
) -> GLMFit:
    """FSL FILM GLS fit with a given (spatially smoothed) raw residual autocorrelation.

    The first ``M = film_lags(N)`` lags are Tukey-tapered, turned into a spectrum on
    ``film_fft_length(N)`` points and data and design are whitened with ``1 / sqrt(S)``
    (see :mod:`processing.firstlevel.film`). ``method="truncated"`` is FSL's exact procedure
    (whitened series truncated to N samples, per-voxel OLS; slow reference); ``"spectral"``
    (default, fast) computes the whitened inner products over the whole zero-padded series in
    the frequency domain, a Whittle-type approximation of the same GLS that differs only by the
    filter's spill-over at the run ends.

    Parameters
    ----------
    Y : array_like, shape (N, V)
    X : array_like, shape (N, p)
        Design of full column rank (FEAT: filtered, demeaned, no intercept).
    acf : array_like, shape (M_raw, V)
        Raw autocorrelation at lags 1..M_raw, ``M_raw >= film_lags(N)``; later lags are ignored.
    method : {"spectral", "truncated"}
    demean : bool
        Subtract each voxel's temporal mean first (FEAT).

    Returns
    -------
    GLMFit
        ``noise_model="film"``, per-voxel ``inv_gram`` (V, p, p), ``dof = N - p``.
    """
    kernels = {"spectral": (gls_spectral, _BATCH), "truncated": (gls_truncated, _TRUNCATED_BATCH)}
    if method not in kernels:
        raise ValueError(f"method must be 'spectral' or 'truncated', got {method!r}")
    data, design = check_glm_inputs(Y, X)
    (n_scans, n_voxels), p = data.shape, design.shape[1]
    rank = np.linalg.matrix_rank(design)
    if rank < p:
        raise ValueError(
            f"FILM needs a full-rank design, but X has rank {rank} < {p} columns; drop empty or "
            "duplicated regressors"
        )
    acf_arr = _check_acf(acf, n_scans, n_voxels)
    n_lags, n_fft = film_lags(n_scans), film_fft_length(n_scans)
    taper = tukey_taper(n_lags)[:, None]
    kernel, batch = kernels[method]
    beta = np.empty((p, n_voxels))
    sigma2 = np.empty(n_voxels)
    inv_gram = np.empty((n_voxels, p, p))
    dof = float(n_scans - p)
    for start in range(0, n_voxels, batch):
        cols = slice(start, min(start + batch, n_voxels))
        y, scale = _load(data, cols, demean)
        spectrum = whitening_spectrum(taper * acf_arr[:n_lags, cols], n_fft)
        beta[:, cols], ss_res, inv_gram[cols] = kernel(y, design, spectrum)
        sigma2[cols] = _zero_tiny(ss_res, scale) / dof
    return GLMFit(beta, sigma2, dof, "film", inv_gram, demean)


def residuals(fit: GLMFit, Y: ArrayLike, X: ArrayLike) -> NDArray[np.float64]:
    """Unwhitened residuals ``y - X beta`` (y demeaned if the fit was), e.g. for FILM's acf.

    Parameters
    ----------
    fit : GLMFit
        A fit of the same Y and X.
    Y : array_like, shape (N, V)
    X : array_like, shape (N, p)

    Returns
    -------
    ndarray, shape (N, V), float64
    """
    data, design = check_glm_inputs(Y, X)
    if fit.beta.shape != (design.shape[1], data.shape[1]):
        raise ValueError(
            f"fit has beta of shape {fit.beta.shape} but Y {data.shape} and X {design.shape} "
            "imply (p, V) = " + str((design.shape[1], data.shape[1]))
        )
    out = np.empty(data.shape)
    for start in range(0, data.shape[1], _BATCH):
        cols = slice(start, min(start + _BATCH, data.shape[1]))
        y, _ = _load(data, cols, fit.demeaned)
        out[:, cols] = y - design @ fit.beta[:, cols]
    return out
