"""FSL FEAT's double-gamma haemodynamic response function and event convolution.

FEAT ("Double-Gamma HRF") uses ``hrf(t) = G(t; 6 s, 2.449 s) - G(t; 16 s, 4 s) / 6`` where
``G(t; mean, sd)`` is a gamma pdf with shape ``mean^2 / sd^2`` and scale ``sd^2 / mean``. This is
numerically SPM's canonical HRF (nilearn's ``"spm"`` model). FEAT convolves on a 0.05 s grid with
a 36 s kernel, normalised so that a long unit boxcar plateaus at 1, and samples every volume at
its middle, time ``(k + 0.5) * TR``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["convolve_events", "double_gamma_hrf"]

PEAK_MEAN_S = 6.0
PEAK_SD_S = 2.449
UNDERSHOOT_MEAN_S = 16.0
UNDERSHOOT_SD_S = 4.0
UNDERSHOOT_RATIO = 1.0 / 6.0


def _gamma_pdf(t: NDArray[np.float64], mean: float, sd: float) -> NDArray[np.float64]:
    """Gamma pdf parameterised by its mean and standard deviation (seconds)."""
    return stats.gamma.pdf(t, a=mean**2 / sd**2, scale=sd**2 / mean)


def double_gamma_hrf(dt: float = 0.05, length: float = 36.0) -> NDArray[np.float64]:
    """FSL's double-gamma HRF sampled on a regular grid.

    Parameters
    ----------
    dt : float
        Sampling step in seconds (FEAT: 0.05 s).
    length : float
        Kernel length in seconds (FEAT: 36 s).

    Returns
    -------
    ndarray, shape (round(length / dt),)
        ``hrf(k * dt)`` for ``k = 0, 1, ...``; unnormalised (peak about 0.175 at t = 5 s).
    """
    if not dt > 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    if not length > dt:
        raise ValueError(f"length must exceed dt ({dt} s), got {length}")
    t = np.arange(round(length / dt)) * dt
    peak = _gamma_pdf(t, PEAK_MEAN_S, PEAK_SD_S)
    undershoot = _gamma_pdf(t, UNDERSHOOT_MEAN_S, UNDERSHOOT_SD_S)
    return peak - UNDERSHOOT_RATIO * undershoot


def _check_events(
    onsets: ArrayLike, durations: ArrayLike, amplitudes: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Validate and broadcast event arrays to a common 1-D shape."""
    on = np.atleast_1d(np.asarray(onsets, dtype=np.float64))
    dur = np.atleast_1d(np.asarray(durations, dtype=np.float64))
    amp = np.atleast_1d(np.asarray(amplitudes, dtype=np.float64))
    try:
        on, dur, amp = np.broadcast_arrays(on, dur, amp)
    except ValueError as err:
        raise ValueError(
            f"onsets ({on.size}), durations ({dur.size}) and amplitudes ({amp.size}) must have "
            "the same length (or length 1)"
        ) from err
    if on.ndim != 1:
        raise ValueError(f"events must be 1-D arrays, got shape {on.shape}")
    bad = ~np.isfinite(on) | ~np.isfinite(dur) | ~np.isfinite(amp)
    if bad.any():
        raise ValueError(f"event {int(np.flatnonzero(bad)[0])} has a non-finite value; drop it")
    if (dur < 0).any():
        raise ValueError(f"durations must be >= 0 s, got {dur[dur < 0][0]}")
    return on, dur, amp


def _boxcar(
    onsets: NDArray[np.float64],
    durations: NDArray[np.float64],
    amplitudes: NDArray[np.float64],
    n_grid: int,
    dt: float,
) -> NDArray[np.float64]:
    """Events as a stimulus function on bins ``[k dt, (k+1) dt)``, with fractional cover."""
    box = np.zeros(n_grid)
    edges = np.arange(n_grid + 1) * dt
    for onset, duration, amplitude in zip(onsets, durations, amplitudes, strict=True):
        end = onset + duration
        first = max(math.floor(onset / dt), 0)
        if first >= n_grid or end < 0:
            continue
        if duration == 0:
            box[first] += amplitude
            continue
        last = min(math.ceil(end / dt), n_grid)
        lo = np.maximum(edges[first:last], onset)
        hi = np.minimum(edges[first + 1 : last + 1], end)
        box[first:last] += amplitude * np.clip(hi - lo, 0.0, None) / dt
    return box


def convolve_events(
    onsets: ArrayLike,
    durations: ArrayLike,
    amplitudes: ArrayLike,
    n_scans: int,
    tr: float,
    dt: float = 0.05,
    hrf: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Convolve a set of events with the HRF and sample at the middle of each volume.

    The events become a stimulus function on a ``dt`` grid (each bin ``[k dt, (k+1) dt)`` gets
    the covered fraction times the amplitude; a zero-duration event fills one bin). It is
    convolved with ``hrf / hrf.sum()``, so a long unit boxcar plateaus at 1, and sampled by
    linear interpolation at ``(k + 0.5) * tr``.

    Parameters
    ----------
    onsets, durations : array_like, shape (n_events,)
        Event onsets and durations in seconds from the start of the first volume.
    amplitudes : array_like, shape (n_events,) or scalar
        Event heights (1 for a plain boxcar).
    n_scans : int
        Number of volumes.
    tr : float
        Repetition time in seconds.
    dt : float
        Convolution grid step in seconds (FEAT: 0.05 s).
    hrf : array_like, shape (n_kernel,), optional
        Kernel sampled every ``dt`` seconds; defaults to :func:`double_gamma_hrf` (36 s).

    Returns
    -------
    ndarray, shape (n_scans,)
        The regressor, in units of the amplitudes.
    """
    if int(n_scans) != n_scans or n_scans < 1:
        raise ValueError(f"n_scans must be a positive integer, got {n_scans}")
    if not tr > 0:
        raise ValueError(f"tr must be a positive number of seconds, got {tr}")
    if not 0 < dt <= tr:
        raise ValueError(f"dt must be in (0, tr={tr}] seconds, got {dt}")
    on, dur, amp = _check_events(onsets, durations, amplitudes)
    kernel = double_gamma_hrf(dt) if hrf is None else np.asarray(hrf, dtype=np.float64)
    if kernel.ndim != 1 or kernel.size == 0 or kernel.sum() == 0:
        raise ValueError("hrf must be a non-empty 1-D kernel with a non-zero sum")
    n_grid = math.ceil(n_scans * tr / dt) + 1
    box = _boxcar(on, dur, amp, n_grid, dt)
    response = np.convolve(box, kernel / kernel.sum())[:n_grid]
    times = (np.arange(int(n_scans)) + 0.5) * tr
    return np.interp(times, np.arange(n_grid) * dt, response)
