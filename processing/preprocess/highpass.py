"""FSL's temporal high-pass filter (``fslmaths -bptf <hp_sigma> -1``), vectorised.

FSL's "Gaussian-weighted running line" filter: for every time point ``t`` a straight line is
fitted by weighted least squares to the samples ``t - W .. t + W`` (truncated at the run ends),
with weights ``exp(-tau^2 / (2 sigma^2))`` of the lag ``tau``, where ``W = floor(3 sigma)``; the
line's value at ``t`` is subtracted from the sample. FEAT uses ``sigma = (cutoff / 2) / TR``
volumes (not ``cutoff / 2.355``) and adds the temporal mean back afterwards.

The fitted value at ``t`` is a fixed linear combination of the samples, so the whole filter is one
``(n, n)`` matrix ``H = I - L`` that depends only on ``n`` and ``sigma``. It is built once
(:func:`highpass_matrix`) and applied as a matrix product to a ``(n, voxels)`` matrix, block by
block. The same call filters a design matrix ``(n_scans, n_columns)`` with ``add_mean=False``,
as FEAT does to every regressor.

Degenerate case (a deliberate, documented choice): when ``W == 0`` (``sigma < 1/3`` volume) a line
through a single sample is undetermined (singular normal equations); the sample is then left
unchanged rather than set to zero. ``W >= n`` simply makes every window the whole run.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["highpass_fsl", "highpass_matrix", "highpass_sigma_volumes"]

_BLOCK_COLUMNS = 1 << 15  # columns filtered per matrix product (bounds float64 temporaries)


def highpass_sigma_volumes(tr_s: float, cutoff_s: float) -> float:
    """FEAT's filter width in volumes: ``sigma = (cutoff_s / 2) / tr_s``.

    Parameters
    ----------
    tr_s : float
        Repetition time in seconds (> 0).
    cutoff_s : float
        High-pass cutoff period in seconds (> 0), FEAT's default is 100 s.

    Returns
    -------
    float
        Gaussian sigma of the running-line weights, in volumes (39.06 for TR 1.28 s, 100 s).
    """
    if not (math.isfinite(tr_s) and tr_s > 0):
        raise ValueError(f"tr_s must be a positive number of seconds, got {tr_s!r}")
    if not (cutoff_s > 0):
        raise ValueError(
            f"cutoff_s must be > 0 seconds, got {cutoff_s!r}; pass None or inf for no filtering"
        )
    return (cutoff_s / 2.0) / tr_s


def highpass_matrix(n: int, sigma: float) -> NDArray[np.float64]:
    """The ``(n, n)`` matrix ``H`` with ``highpassed = H @ x`` for a series ``x`` of length n.

    Row ``t`` of the smoother ``L = I - H`` holds the weights that give the value at ``t`` of the
    Gaussian-weighted least-squares line over ``max(0, t - W) .. min(n - 1, t + W)``,
    ``W = floor(3 sigma)``. With lag ``tau = s - t``, weights ``w``, ``S_k = sum w tau^k`` and
    ``D = S_0 S_2 - S_1^2``, the line's intercept at ``tau = 0`` is
    ``sum_s w_s (S_2 - S_1 tau_s) / D * x_s``.

    Parameters
    ----------
    n : int
        Number of time points (>= 1).
    sigma : float
        Gaussian sigma in volumes (> 0).

    Returns
    -------
    ndarray, shape (n, n), float64
        The high-pass operator (no mean added back). Rows sum to 0 and ``H @ (a + b t) = 0``.
    """
    if n < 1:
        raise ValueError(f"need at least one time point, got n={n}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number of volumes, got {sigma!r}")
    half = min(math.floor(3.0 * sigma), n - 1)
    steps = np.arange(n, dtype=np.float64)
    tau = steps[None, :] - steps[:, None]  # tau[t, s] = s - t
    weights = np.exp(-(tau**2) / (2.0 * sigma**2))
    weights[np.abs(tau) > half] = 0.0
    s0 = weights.sum(axis=1, keepdims=True)
    s1 = (weights * tau).sum(axis=1, keepdims=True)
    s2 = (weights * tau**2).sum(axis=1, keepdims=True)
    denom = s0 * s2 - s1**2
    singular = denom <= 1e-12 * np.maximum(s0 * s2, 1e-300)
    safe = np.where(singular, 1.0, denom)
    smoother = np.where(singular, 0.0, weights * (s2 - s1 * tau) / safe)
    return np.eye(n) - smoother


def _check_finite_block(block: NDArray, start: int) -> None:
    """Raise if a block of columns holds NaN or inf (names the first bad column)."""
    bad = ~np.isfinite(block)
    if bad.any():
        column = start + int(np.argwhere(bad.any(axis=0))[0, 0])
        raise ValueError(
            f"data holds NaN or inf (first in flattened column {column}); "
            "remove or mask non-finite voxels before filtering"
        )


def highpass_fsl(
    data: ArrayLike,
    tr_s: float,
    cutoff_s: float | None = 100.0,
    axis: int = 0,
    add_mean: bool = True,
) -> NDArray[np.floating]:
    """High-pass filter along time exactly as ``fslmaths -bptf (cutoff/2/TR) -1`` (FEAT).

    Parameters
    ----------
    data : array_like, shape (..., n, ...)
        Time series with time along ``axis``: a run ``(t, z, y, x)``, a ``(t, voxels)`` matrix or
        a design matrix ``(n_scans, n_columns)``. Must be finite.
    tr_s : float
        Repetition time in seconds.
    cutoff_s : float or None
        Cutoff period in seconds (FEAT default 100 s). ``None`` or ``inf`` returns the data
        unchanged (as float).
    axis : int
        Time axis.
    add_mean : bool
        Add each series' temporal mean back after filtering (FEAT does this for data; use
        ``False`` for design matrices).

    Returns
    -------
    ndarray, same shape as ``data``
        float64 when ``data`` is float64, else float32. Computed in float64.
    """
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ValueError("data must have at least one (time) axis, got a scalar")
    axis = _normalise_axis(axis, arr.ndim)
    out_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    if cutoff_s is None or cutoff_s == math.inf:
        highpass_sigma_volumes(tr_s, 1.0)  # still validates the TR
        if not np.all(np.isfinite(arr)):
            raise ValueError("data holds NaN or inf; remove or mask non-finite voxels first")
        return arr.astype(out_dtype, copy=True)
    sigma = highpass_sigma_volumes(tr_s, cutoff_s)
    moved = np.moveaxis(arr, axis, 0)
    n = moved.shape[0]
    matrix = moved.reshape(n, -1)
    operator = highpass_matrix(n, sigma)
    result = np.empty(matrix.shape, dtype=out_dtype)
    for start in range(0, matrix.shape[1], _BLOCK_COLUMNS):
        block = matrix[:, start : start + _BLOCK_COLUMNS].astype(np.float64)
        _check_finite_block(block, start)
        filtered = operator @ block
        if add_mean:
            filtered += block.mean(axis=0, keepdims=True)
        result[:, start : start + _BLOCK_COLUMNS] = filtered
    return np.ascontiguousarray(np.moveaxis(result.reshape(moved.shape), 0, axis))


def _normalise_axis(axis: int, ndim: int) -> int:
    """Turn a possibly negative axis into a valid index, or raise naming the bad axis."""
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for data with {ndim} dimensions")
    return axis % ndim
