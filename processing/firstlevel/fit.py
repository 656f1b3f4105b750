"""One block of a run's first level: the chosen noise model, then every contrast's maps.

The engine calls these two functions per spatial block; everything that decides numbers (which
noise model, the autocorrelation bias correction, which maps a t or F contrast yields, contrasts
undefined in this run) lives here rather than in the engine.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from processing.firstlevel.contrasts import compute_contrast
from processing.firstlevel.film import autocorrelation_bias, correct_autocorrelation
from processing.firstlevel.glm import GLMFit, fit_ar1, fit_film, fit_ols
from processing.firstlevel.model import Contrast, UndefinedContrast, run_contrast
from processing.preprocess.highpass import highpass_matrix

__all__ = ["contrast_maps", "fit_noise_model", "uses_autocorrelation"]


def uses_autocorrelation(noise_model: str, bias_correction: bool) -> bool:
    """Whether the model needs the spatially smoothed residual autocorrelation (the engine's
    ``glm_autocorr`` passes): ``film`` always, ``ar1`` with the bias correction (its smoothed
    lag-1 coefficient and sandwich variance)."""
    return noise_model == "film" or (noise_model == "ar1" and bool(bias_correction))


def fit_noise_model(
    noise_model: str,
    y: NDArray,
    x: NDArray[np.float64],
    acf: NDArray | None = None,
    *,
    highpass_sigma: float | None = None,
    bias_correction: bool = True,
) -> GLMFit:
    """Fit ``ols``, ``ar1`` or ``film`` to a block (data and design demeaned, FEAT style).

    Parameters
    ----------
    noise_model : {"ols", "ar1", "film"}
    y : ndarray, shape (N, V)
        In-mask time series of the block.
    x : ndarray, shape (N, p)
        The run's design (filtered, demeaned, no intercept).
    acf : ndarray, shape (M, V), optional
        Smoothed raw residual autocorrelation (``film``, and ``ar1`` with the bias correction).
    highpass_sigma : float, optional
        High-pass sigma in volumes applied to the data (``None``: no filter); enters the bias.
    bias_correction : bool
        Remove the bias that the design fit and the high-pass filter put into the residual
        autocorrelation before whitening (``False``: exactly FSL's FILM / nilearn's AR(1)).
        For ``ar1`` this also whitens with the smoothed, corrected lag-1 coefficient and takes
        the sandwich variance over lags 1..M (:mod:`processing.firstlevel.ar1_sandwich`).

    Returns
    -------
    GLMFit
    """
    if noise_model == "ols":
        return fit_ols(y, x, demean=True)
    if noise_model not in ("ar1", "film"):
        raise ValueError(f"noise_model must be 'film', 'ar1' or 'ols', got {noise_model!r}")
    if uses_autocorrelation(noise_model, bias_correction) and acf is None:
        raise ValueError(
            f"noise_model {noise_model!r} with bias_correction={bias_correction} needs the "
            "block's smoothed autocorrelation (acf); run the glm_autocorr passes first"
        )
    if not bias_correction:
        return fit_ar1(y, x, demean=True) if noise_model == "ar1" else fit_film(y, x, acf)
    design = np.ascontiguousarray(x, dtype=np.float64)
    bias = _autocorrelation_bias(design.tobytes(), design.shape, acf.shape[0], highpass_sigma)
    corrected = correct_autocorrelation(acf, bias)
    if noise_model == "ar1":
        return fit_ar1(y, x, demean=True, rho=corrected[0], autocorrelation=corrected)
    return fit_film(y, x, corrected, demean=True)


@functools.lru_cache(maxsize=8)
def _autocorrelation_bias(
    design: bytes, shape: tuple[int, int], n_lags: int, highpass_sigma: float | None
) -> NDArray[np.float64]:
    """:func:`autocorrelation_bias` of a design (given as bytes, so that blocks of one run
    share one computation; it depends only on the design, the lags and the filter)."""
    x = np.frombuffer(design, dtype=np.float64).reshape(shape)
    highpass = None if highpass_sigma is None else highpass_matrix(shape[0], highpass_sigma)
    bias = autocorrelation_bias(x, n_lags, highpass)
    bias.setflags(write=False)
    return bias


def contrast_maps(
    fit: GLMFit,
    contrasts: Sequence[Contrast],
    columns: Sequence[str],
    dropped: Mapping[str, str],
) -> tuple[list[str], list[NDArray[np.float64]], dict[str, str]]:
    """Every map a block yields: residual variance, then per t contrast effect, variance, t and
    z, per F contrast F and z.

    Returns
    -------
    names : list of str
        ``"sigmasquared"`` and ``"<contrast>:<stat>"``.
    maps : list of ndarray, shape (V,)
    undefined : dict
        Contrasts undefined in this run (a needed condition was dropped), with the reason.
    """
    names, maps, undefined = ["sigmasquared"], [fit.sigma2], {}
    for contrast in contrasts:
        try:
            weights = run_contrast(contrast, columns, dropped)
        except UndefinedContrast as why:
            undefined[contrast.name] = str(why)
            continue
        result = compute_contrast(fit, weights)
        if contrast.test == "t":
            stats = {"effect": result.effect, "variance": result.variance, "t": result.stat}
        else:
            stats = {"F": result.stat}
        for label, values in {**stats, "z": result.z}.items():
            names.append(f"{contrast.name}:{label}")
            maps.append(values)
    return names, maps, undefined
