"""The whole first level of one run in memory: the reference the engine's block stages reproduce.

The engine splits this into ``glm_autocorr`` (per block), ``glm_autocorr_smooth`` (per run) and
``glm`` (per block) so that no task holds more than one block; :func:`fit_run` runs the same
steps on a whole in-memory run, in voxel batches. It is what a notebook user calls, what the
first-level benchmark times against nilearn, and what the engine's output is tested against.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from threadpoolctl import threadpool_limits

from processing.firstlevel.film import film_lags, residual_autocorrelation, smooth_autocorrelation
from processing.firstlevel.fit import contrast_maps, fit_noise_model, uses_autocorrelation
from processing.firstlevel.model import Contrast

__all__ = ["AUTOCORR_FWHM_MM", "RunMaps", "fit_run"]

AUTOCORR_FWHM_MM = 5.0  # FSL smooths FILM's autocorrelation estimates over 5 mm
_VOXELS_PER_BATCH = 16384  # bounds the float64 copies and per-voxel (p, p) matrices of a batch


@dataclass
class RunMaps:
    """Every map of one run's first level.

    Attributes
    ----------
    names : list of str
        ``"sigmasquared"`` and ``"<contrast>:<stat>"`` (see
        :func:`processing.firstlevel.fit.contrast_maps`).
    maps : ndarray, shape (len(names), z, y, x), float32
        0 outside the mask.
    dof : float
        Residual degrees of freedom of the run.
    undefined : dict
        Contrasts undefined in this run, with the reason.
    """

    names: list[str]
    maps: NDArray[np.float32]
    dof: float
    undefined: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> NDArray[np.float32]:
        """The map called ``name`` (e.g. ``"P40vsP0:z"``)."""
        if name not in self.names:
            raise KeyError(f"no map {name!r}; this run has {self.names}")
        return self.maps[self.names.index(name)]


def fit_run(
    bold: ArrayLike,
    mask: ArrayLike,
    affine: ArrayLike,
    design: ArrayLike,
    columns: Sequence[str],
    contrasts: Sequence[Contrast],
    noise_model: str = "film",
    *,
    dropped: Mapping[str, str] | None = None,
    highpass_sigma: float | None = None,
    bias_correction: bool = True,
    autocorr_fwhm_mm: float = AUTOCORR_FWHM_MM,
    threads: int | None = None,
) -> RunMaps:
    """Fit one run's GLM and compute every contrast map, in memory.

    Parameters
    ----------
    bold : array_like, shape (N, z, y, x)
        Preprocessed (filtered) run, time first.
    mask : array_like of bool, shape (z, y, x)
        Brain mask; only these voxels are fitted.
    affine : array_like, shape (4, 4)
        Voxel (x, y, z order of NIfTI) to world mm; sets the autocorrelation smoothing kernel.
    design : array_like, shape (N, p)
        The run's design (filtered, demeaned; :func:`processing.firstlevel.design.build_design`).
    columns : sequence of str
        Names of the design columns.
    contrasts : sequence of Contrast
    noise_model : {"film", "ar1", "ols"}
    dropped : mapping, optional
        Conditions dropped from this run (contrasts needing them become undefined).
    highpass_sigma : float, optional
        High-pass sigma in volumes applied to the data (enters the bias correction).
    bias_correction : bool
        See :func:`processing.firstlevel.fit.fit_noise_model`.
    autocorr_fwhm_mm : float
        FWHM of the spatial smoothing of the autocorrelation (FILM; ar1 with the bias
        correction), in mm.
    threads : int, optional
        Voxel batches fitted at once (default: one per core; numpy releases the GIL).

    Returns
    -------
    RunMaps
    """
    data = np.asarray(bold)
    brain = np.asarray(mask, dtype=bool)
    if data.ndim != 4 or data.shape[1:] != brain.shape:
        raise ValueError(
            f"bold must be (N, z, y, x) on the mask's grid {brain.shape}, got shape {data.shape}"
        )
    x = np.asarray(design, dtype=np.float64)
    inside = np.flatnonzero(brain.ravel())
    series = data.reshape(data.shape[0], -1)
    n_scans, n_voxels = data.shape[0], inside.size

    def voxels(cols: slice) -> NDArray:
        # gathered per batch: no whole (N, V) copy to page in, and np.take beats data[:, mask]
        return np.take(series, inside[cols], axis=1)

    batches = [
        slice(start, min(start + _VOXELS_PER_BATCH, n_voxels))
        for start in range(0, n_voxels, _VOXELS_PER_BATCH)
    ]
    workers = max(1, min(threads or os.cpu_count() or 1, len(batches)))
    # one BLAS thread per batch thread: nested BLAS threads oversubscribe the cores
    blas = threadpool_limits(1, user_api="blas") if workers > 1 else contextlib.nullcontext()
    with blas, ThreadPoolExecutor(workers) as pool:
        acf = None
        if uses_autocorrelation(noise_model, bias_correction):
            raw = np.zeros((film_lags(n_scans), n_voxels))
            pinv = np.linalg.pinv(x)

            def autocorrelation_batch(cols: slice) -> None:
                raw[:, cols] = _ols_autocorrelation(voxels(cols), x, pinv, raw.shape[0])

            list(pool.map(autocorrelation_batch, batches))
            acf = _smooth_within_mask(raw, brain, affine, autocorr_fwhm_mm)

        def fit_batch(cols: slice) -> tuple[list[str], NDArray[np.float64], float, dict]:
            fit = fit_noise_model(
                noise_model,
                voxels(cols),
                x,
                None if acf is None else acf[:, cols],
                highpass_sigma=highpass_sigma,
                bias_correction=bias_correction,
            )
            names, maps, undefined = contrast_maps(fit, contrasts, columns, dropped or {})
            return names, np.stack(maps), float(fit.dof), undefined

        results = list(pool.map(fit_batch, batches))
    names: list[str] = results[0][0] if results else []
    dof = results[0][2] if results else float(x.shape[0])
    undefined = results[0][3] if results else {}
    values = [r[1] for r in results]
    out = np.zeros((len(names), *brain.shape), dtype=np.float32)
    if values:
        out.reshape(len(names), -1)[:, inside] = np.concatenate(values, axis=1)
    return RunMaps(names, out, dof, undefined)


def _ols_autocorrelation(
    y: NDArray, x: NDArray[np.float64], pinv: NDArray[np.float64], n_lags: int
) -> NDArray[np.float64]:
    """Raw autocorrelation (lags 1..n_lags) of the demeaned OLS residuals of ``y`` (N, B)."""
    block = y.astype(np.float64)
    if not np.all(np.isfinite(block)):
        raise ValueError("the run holds NaN or inf inside the mask; fix the filtered data")
    block -= block.mean(axis=0)
    block -= x @ (pinv @ block)
    return residual_autocorrelation(block, n_lags)


def _smooth_within_mask(
    raw: NDArray[np.float64], mask: NDArray[np.bool_], affine: ArrayLike, fwhm: float
) -> NDArray[np.float32]:
    """Raw in-mask autocorrelation (M, V) smoothed spatially within the mask: (M, V)."""
    maps = np.zeros((raw.shape[0], *mask.shape), dtype=np.float32)
    maps[:, mask] = raw
    return smooth_autocorrelation(maps, mask, affine, fwhm)[:, mask]
