"""FSL FILM prewhitening: residual autocorrelation, Tukey taper, spectrum and GLS kernels.

FILM (``film_gls``) estimates each voxel's raw residual autocorrelation, smooths every lag
spatially, tapers it with a Tukey window of ``M = int(2 sqrt(N)) // 2`` lags and whitens data and
design in the frequency domain with the filter ``1 / sqrt(S(f))``, where ``S`` is the spectrum
of the tapered autocorrelation (lag 0 = 1). Series are zero-padded to ``n_fft``, the smallest
power of two ``>= 2 N`` (:func:`film_fft_length`).

Two GLS kernels work on a block of voxels:

- :func:`gls_truncated` is FSL's procedure: filter every series and every design column, keep the
  first ``N`` samples of the inverse FFT and fit OLS per voxel (per-voxel design FFTs: slow).
- :func:`gls_spectral` computes the same whitened inner products ``X*'X*``, ``X*'y*`` and the
  residual sum of squares in the frequency domain over the whole zero-padded series (Parseval).
  It does not truncate the filtered series to ``N`` samples: the inverse covariance is
  approximated by the Toeplitz matrix of ``1 / S`` (a Whittle-type approximation of the same GLS).
  The two differ only through the filter's spill-over at the run ends, and agree closely.

Spectrum floor: ``S(f)`` can dip to or below zero when the (smoothed, tapered) autocorrelation is
not positive definite; it is clipped to :data:`SPECTRUM_FLOOR` (1 % of the white-noise level,
i.e. a gain of at most 10 on any frequency) before ``1 / sqrt(S)``. Well-behaved fMRI noise
(and AR(1) up to rho ~ 0.95) never reaches this floor.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.preprocess.smoothing import smooth_mm

__all__ = [
    "SPECTRUM_FLOOR",
    "autocorrelation_bias",
    "correct_autocorrelation",
    "film_fft_length",
    "film_lags",
    "gls_spectral",
    "gls_truncated",
    "residual_autocorrelation",
    "smooth_autocorrelation",
    "tukey_taper",
    "whitening_spectrum",
]

SPECTRUM_FLOOR = 1e-2  # lowest allowed spectral density (white noise = 1)
_ACF_BATCH = 4096  # voxels per batch in residual_autocorrelation
_DIRECT_MAX_LAGS = 32  # up to this many lags, direct lag products beat FFTs


def film_lags(n_scans: int) -> int:
    """FILM's Tukey window length ``M = int(2 sqrt(N)) // 2`` for ``N = n_scans`` (13 for 188)."""
    if int(n_scans) != n_scans or n_scans < 2:
        raise ValueError(f"n_scans must be an integer >= 2, got {n_scans!r}")
    return max(int(2.0 * math.sqrt(n_scans)) // 2, 1)


def film_fft_length(n_scans: int) -> int:
    """FFT length used for FILM: the smallest power of two ``>= 2 n_scans`` (512 for 188)."""
    if int(n_scans) != n_scans or n_scans < 1:
        raise ValueError(f"n_scans must be a positive integer, got {n_scans!r}")
    return 1 << math.ceil(math.log2(2 * int(n_scans)))


def tukey_taper(n_lags: int) -> NDArray[np.float64]:
    """Tukey weights ``w_j = 0.5 (1 + cos(pi j / M))`` for lags ``j = 1..M``.

    Parameters
    ----------
    n_lags : int
        Window length ``M`` (>= 1); lags beyond ``M`` get weight 0 (and ``w_M = 0``).

    Returns
    -------
    ndarray, shape (M,)
    """
    if int(n_lags) != n_lags or n_lags < 1:
        raise ValueError(f"n_lags must be a positive integer, got {n_lags!r}")
    lags = np.arange(1, int(n_lags) + 1, dtype=np.float64)
    return 0.5 * (1.0 + np.cos(np.pi * lags / n_lags))


def residual_autocorrelation(residuals: ArrayLike, n_lags: int) -> NDArray[np.float64]:
    """Raw autocorrelation of residual time series, lags 1..n_lags, normalised by lag 0.

    ``r_k = sum_t e_t e_{t+k} / sum_t e_t^2`` (FSL's biased estimator): direct lag products up
    to 32 lags (faster for FILM's 13), zero-padded FFTs beyond (same values up to rounding).
    Series are not demeaned (residuals of a demeaned fit have zero mean); all-zero series give 0.

    Parameters
    ----------
    residuals : array_like, shape (N, V)
        Residual time series, one column per voxel.
    n_lags : int
        Number of lags (1 <= n_lags < N).

    Returns
    -------
    ndarray, shape (n_lags, V), float64
    """
    res = np.asarray(residuals)
    if res.ndim != 2:
        raise ValueError(f"residuals must be (n_scans, n_voxels), got shape {res.shape}")
    n_scans = res.shape[0]
    if int(n_lags) != n_lags or not 1 <= n_lags < n_scans:
        raise ValueError(f"n_lags must be an integer in [1, {n_scans - 1}], got {n_lags!r}")
    n_fft = film_fft_length(n_scans)
    out = np.zeros((int(n_lags), res.shape[1]))
    for start in range(0, res.shape[1], _ACF_BATCH):
        block = np.asarray(res[:, start : start + _ACF_BATCH], dtype=np.float64)
        if not np.all(np.isfinite(block)):
            raise ValueError("residuals hold NaN or inf; drop non-finite voxels first")
        acov = _autocovariance(block, int(n_lags), n_fft)
        lag0 = acov[0]
        ok = lag0 > 0
        out[:, start : start + block.shape[1]] = np.where(ok, acov[1:] / np.where(ok, lag0, 1), 0)
    return out


def _autocovariance(block: NDArray[np.float64], n_lags: int, n_fft: int) -> NDArray[np.float64]:
    """Unnormalised lag products ``sum_t e_t e_{t+k}`` for k = 0..n_lags: (n_lags + 1, B)."""
    if n_lags > _DIRECT_MAX_LAGS:
        spec = np.fft.rfft(block, n=n_fft, axis=0)
        return np.fft.irfft(spec.real**2 + spec.imag**2, n=n_fft, axis=0)[: n_lags + 1]
    n_scans = block.shape[0]
    return np.stack(
        [np.einsum("nb,nb->b", block[: n_scans - k], block[k:]) for k in range(n_lags + 1)]
    )


def smooth_autocorrelation(
    acf_maps: ArrayLike, mask: ArrayLike, affine: ArrayLike, fwhm_mm: float = 5.0
) -> NDArray[np.float32]:
    """Smooth each autocorrelation lag spatially, as FILM does before tapering.

    FSL smooths every lag with SUSAN (5 mm) restricted to voxels of similar intensity. Here each
    lag is smoothed with a Gaussian of the same FWHM normalised within the brain mask
    (:func:`processing.preprocess.smoothing.smooth_mm`): estimates do not mix with the zeros
    outside the mask, but they do mix across tissue boundaries inside it (no intensity term).

    Parameters
    ----------
    acf_maps : array_like, shape (L, z, y, x)
        Raw autocorrelation of lags 1..L as volumes.
    mask : array_like of bool, shape (z, y, x)
        Brain mask; output is 0 outside.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.
    fwhm_mm : float
        Kernel FWHM in mm (FSL: 5 mm).

    Returns
    -------
    ndarray, shape (L, z, y, x), float32
    """
    maps = np.asarray(acf_maps)
    if maps.ndim != 4:
        raise ValueError(f"acf_maps must be (n_lags, z, y, x), got shape {maps.shape}")
    return smooth_mm(maps, affine, fwhm_mm, mask)


def autocorrelation_bias(
    design: ArrayLike, n_lags: int, highpass: ArrayLike | None = None, demean: bool = True
) -> NDArray[np.float64]:
    """Expected raw residual autocovariance per true noise autocorrelation lag (Worsley 2002).

    OLS residuals ``e = R H eps`` (``R = I - Z Z^+`` with ``Z = [1, X]`` when demeaning, ``H``
    the temporal filter applied to the data) are autocorrelated even for white ``eps``:
    with smooth task regressors FILM's raw estimate is biased by about ``-rank(Z) / N`` per lag,
    which whitening turns into anti-conservative t. ``A[k, j] = tr(D_k R H T_j H' R)`` (``D_k``
    the lag-k shift, ``T_0 = I``, ``T_j = D_j + D_j'``) is ``E[sum_t e_t e_{t+k}]`` for a unit
    autocorrelation at lag ``j`` alone; :func:`correct_autocorrelation` inverts it.

    Parameters
    ----------
    design : array_like, shape (N, p)
        The design of the OLS fit that gave the residuals (filtered like the data).
    n_lags : int
        Number of lags M of the model (noise autocorrelation assumed 0 beyond it).
    highpass : array_like, shape (N, N), optional
        The filter applied to the data, e.g. ``highpass_matrix(N, sigma)``; None for none.
    demean : bool
        Whether the fit demeaned the data.

    Returns
    -------
    ndarray, shape (M + 1, M + 1)
        ``A`` for lags 0..M (rows: observed lag k, columns: true lag j).
    """
    x = np.asarray(design, dtype=np.float64)
    n_scans = x.shape[0]
    z = np.column_stack([np.ones(n_scans), x]) if demean else x
    b = np.eye(n_scans) - z @ np.linalg.pinv(z)
    if highpass is not None:
        b = b @ np.asarray(highpass, dtype=np.float64)
    out = np.empty((n_lags + 1, n_lags + 1))
    for j in range(n_lags + 1):
        c = b @ b.T if j == 0 else b[:, : n_scans - j] @ b[:, j:].T
        c = c if j == 0 else c + c.T
        out[:, j] = [np.trace(c, offset=-k) for k in range(n_lags + 1)]
    return out


def correct_autocorrelation(acf: ArrayLike, bias: NDArray[np.float64]) -> NDArray[np.float64]:
    """Remove the residual-fitting bias from a raw (possibly smoothed) autocorrelation.

    Solves ``bias @ rho = (1, r_1, .., r_M)`` per voxel and renormalises to ``rho_0 = 1``. Not
    part of FSL's FILM (off by default there): an option that restores nominal false-positive
    rates on null data (see ``tests/test_glm.py``).

    Parameters
    ----------
    acf : array_like, shape (M_raw >= M, V)
        Raw autocorrelation, lags 1..M_raw.
    bias : ndarray, shape (M + 1, M + 1)
        From :func:`autocorrelation_bias` for the same design and filter.

    Returns
    -------
    ndarray, shape (M, V)
        Corrected autocorrelation, lags 1..M.
    """
    n_lags = bias.shape[0] - 1
    raw = np.asarray(acf, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] < n_lags:
        raise ValueError(f"acf must be (n_lags >= {n_lags}, n_voxels), got shape {raw.shape}")
    rho = np.linalg.solve(bias, np.vstack([np.ones((1, raw.shape[1])), raw[:n_lags]]))
    return rho[1:] / rho[0]


def whitening_spectrum(
    acf_tapered: ArrayLike, n_fft: int, floor: float = SPECTRUM_FLOOR
) -> NDArray[np.float64]:
    """Spectral density of a tapered autocorrelation sequence (lag 0 = 1), floored.

    ``S_k = 1 + 2 sum_j a_j cos(2 pi j k / n_fft)`` for the ``n_fft // 2 + 1`` frequencies of a
    real FFT: the FFT of the symmetric sequence ``(1, a_1, .., a_M, 0, .., 0, a_M, .., a_1)``.

    Parameters
    ----------
    acf_tapered : array_like, shape (M, V)
        Tapered autocorrelation of lags 1..M per voxel.
    n_fft : int
        FFT length (> 2 M).
    floor : float
        Lower clip of ``S`` (relative to white noise = 1), see the module notes.

    Returns
    -------
    ndarray, shape (V, n_fft // 2 + 1), float64
        ``max(S, floor)``, one spectrum per row; the whitening filter is ``1 / sqrt`` of it.
    """
    acf = np.asarray(acf_tapered, dtype=np.float64)
    if acf.ndim != 2:
        raise ValueError(f"acf_tapered must be (n_lags, n_voxels), got shape {acf.shape}")
    if n_fft <= 2 * acf.shape[0]:
        raise ValueError(f"n_fft={n_fft} must exceed twice the number of lags ({acf.shape[0]})")
    freqs = np.arange(n_fft // 2 + 1)[:, None]
    lags = np.arange(1, acf.shape[0] + 1)[None, :]
    cosines = np.cos(2.0 * np.pi * ((freqs * lags) % n_fft) / n_fft)
    spectrum = acf.T @ cosines.T  # (V, K)
    spectrum *= 2.0
    spectrum += 1.0
    return np.maximum(spectrum, floor, out=spectrum)


def _rfft_weights(n_fft: int) -> NDArray[np.float64]:
    """Parseval weights of the half spectrum: 1 for DC and Nyquist, 2 elsewhere, over n_fft."""
    weights = np.full(n_fft // 2 + 1, 2.0)
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0
    return weights / n_fft


def _gram_products(design_hat: NDArray[np.complex128]) -> NDArray[np.float64]:
    """``Re(X_a conj(X_b))`` per frequency for the upper triangle a <= b: (K, p(p+1)/2)."""
    rows, cols = np.triu_indices(design_hat.shape[1])
    return np.ascontiguousarray((design_hat[:, rows] * design_hat[:, cols].conj()).real)


def _symmetric_from_upper(upper: NDArray[np.float64], p: int) -> NDArray[np.float64]:
    """(B, n_upper) upper-triangle values -> (B, p, p) symmetric matrices."""
    rows, cols = np.triu_indices(p)
    index = np.empty((p, p), dtype=np.intp)
    index[rows, cols] = index[cols, rows] = np.arange(rows.size)
    return np.take(upper, index.ravel(), axis=1).reshape(-1, p, p)


def gls_spectral(
    y: NDArray[np.float64], design: NDArray[np.float64], spectrum: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """GLS fit of a block with inner products taken in the frequency domain (Parseval).

    With ``w_k = c_k / (n_fft S_k)`` (``c_k`` = 1 at DC and Nyquist, 2 elsewhere) and hats for
    real FFTs: ``X*'X* = sum_k w_k Re(X_k X_k^H)`` (one matrix product for all voxels),
    ``X*'y* = sum_k w_k Re(X_k conj(y_k))`` and ``SS_res = sum_k w_k |y_k - X_k beta|^2``.

    Parameters
    ----------
    y : ndarray, shape (N, B), float64
        Data (already demeaned if wanted).
    design : ndarray, shape (N, p), float64
        Design matrix (full column rank).
    spectrum : ndarray, shape (B, n_fft // 2 + 1)
        Per-voxel spectral density from :func:`whitening_spectrum`.

    Returns
    -------
    beta : ndarray, shape (p, B)
    ss_res : ndarray, shape (B,)
        Whitened residual sum of squares over the whole zero-padded series (``y*'y* - b'X*'y*``,
        recomputed from the residual spectrum where that cancels to under 1e-6 of ``y*'y*``).
    inv_gram : ndarray, shape (B, p, p)
        ``(X*' X*)^-1`` per voxel.
    """
    n_fft = 2 * (spectrum.shape[1] - 1)
    p = design.shape[1]
    design_hat = np.fft.rfft(design, n=n_fft, axis=0)  # (K, p)
    weights = _rfft_weights(n_fft) / spectrum  # (B, K)
    inv_gram = np.linalg.inv(_symmetric_from_upper(weights @ _gram_products(design_hat), p))
    y_hat = np.fft.rfft(np.ascontiguousarray(y.T), n=n_fft, axis=1)  # (B, K): rows are fastest
    y_real, y_imag = y_hat.real, y_hat.imag
    w_real, w_imag = weights * y_real, weights * y_imag
    xty = w_real @ design_hat.real + w_imag @ design_hat.imag  # (B, p)
    beta = np.matmul(inv_gram, xty[:, :, None])[:, :, 0]  # (B, p)
    yty = np.einsum("bk,bk->b", w_real, y_real) + np.einsum("bk,bk->b", w_imag, y_imag)
    ss_res = yty - np.einsum("bp,bp->b", beta, xty)
    redo = np.flatnonzero(ss_res < 1e-6 * yty)
    if redo.size:
        res_real = y_real[redo] - beta[redo] @ design_hat.real.T
        res_imag = y_imag[redo] - beta[redo] @ design_hat.imag.T
        ss_res[redo] = np.einsum("bk,bk->b", weights[redo], res_real**2 + res_imag**2)
    return beta.T, ss_res, inv_gram


def gls_truncated(
    y: NDArray[np.float64], design: NDArray[np.float64], spectrum: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """GLS fit of a block exactly as FSL: filter, keep the first N samples, OLS per voxel.

    Same parameters and returns as :func:`gls_spectral`; ``ss_res`` sums the N retained whitened
    samples. Builds a whitened design per voxel (``B p n_fft`` floats): use small blocks.
    """
    n_scans = design.shape[0]
    n_fft = 2 * (spectrum.shape[1] - 1)
    gain = 1.0 / np.sqrt(spectrum.T)  # (K, B)
    y_w = np.fft.irfft(np.fft.rfft(y, n=n_fft, axis=0) * gain, n=n_fft, axis=0)[:n_scans]
    design_hat = np.fft.rfft(design, n=n_fft, axis=0)  # (K, p)
    x_w = np.fft.irfft(design_hat[:, :, None] * gain[:, None, :], n=n_fft, axis=0)[:n_scans]
    inv_gram = np.linalg.inv(np.einsum("npb,nqb->bpq", x_w, x_w))
    xty = np.einsum("npb,nb->bp", x_w, y_w)
    beta = np.matmul(inv_gram, xty[:, :, None])[:, :, 0].T  # (p, B)
    resid = y_w - np.einsum("npb,pb->nb", x_w, beta)
    return beta, np.einsum("nb,nb->b", resid, resid), inv_gram
