"""One block of a run's first level: the chosen noise model, then every contrast's maps.

The engine calls these two functions per spatial block; everything that decides numbers (which
noise model, the autocorrelation bias correction, which maps a t or F contrast yields, contrasts
undefined in this run) lives here rather than in the engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from processing.firstlevel.contrasts import compute_contrast
from processing.firstlevel.film import autocorrelation_bias, correct_autocorrelation
from processing.firstlevel.glm import GLMFit, fit_ar1, fit_film, fit_ols
from processing.firstlevel.model import Contrast, UndefinedContrast, run_contrast
from processing.preprocess.highpass import highpass_matrix

__all__ = ["contrast_maps", "fit_noise_model"]


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
        Smoothed raw residual autocorrelation (``film`` only).
    highpass_sigma : float, optional
        High-pass sigma in volumes applied to the data (``None``: no filter); enters the bias.
    bias_correction : bool
        Remove the bias that the design fit and the high-pass filter put into the residual
        autocorrelation before whitening (``False``: exactly FSL's FILM / nilearn's AR(1)).

    Returns
    -------
    GLMFit
    """
    if noise_model == "ols":
        return fit_ols(y, x, demean=True)
    if noise_model not in ("ar1", "film"):
        raise ValueError(f"noise_model must be 'film', 'ar1' or 'ols', got {noise_model!r}")
    if noise_model == "film" and acf is None:
        raise ValueError("noise_model 'film' needs the block's smoothed autocorrelation (acf)")
    bias = None
    if bias_correction:
        n_lags = 1 if noise_model == "ar1" else acf.shape[0]
        highpass = None if highpass_sigma is None else highpass_matrix(x.shape[0], highpass_sigma)
        bias = autocorrelation_bias(x, n_lags, highpass)
    if noise_model == "ar1":
        return fit_ar1(y, x, demean=True, bias=bias)
    if bias is not None:
        acf = correct_autocorrelation(acf, bias)
    return fit_film(y, x, acf, demean=True)


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
