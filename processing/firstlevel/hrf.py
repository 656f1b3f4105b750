"""FSL FEAT's double-gamma haemodynamic response function and event convolution.

FEAT ("Double-Gamma HRF") uses ``hrf(t) = G(t; 6 s, 2.449 s) - G(t; 16 s, 4 s) / 6`` where
``G(t; mean, sd)`` is a gamma pdf with shape ``mean^2 / sd^2`` and scale ``sd^2 / mean``. This is
numerically SPM's canonical HRF (nilearn's ``"spm"`` model). FEAT convolves on a 0.05 s grid with
a 36 s kernel, normalised so that a long unit boxcar plateaus at 1, and samples every volume at
its middle, time ``(k + 0.5) * TR``.

Two further kernels share the same grid and the same :func:`convolve_events` path:
:func:`glover_hrf` (Glover 1999 with nilearn's parameterisation) and :func:`fir_kernel` (one
TR-wide window per finite-impulse-response delay, as nilearn's ``"fir"`` model).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = ["convolve_events", "double_gamma_hrf", "fir_kernel", "glover_hrf"]

PEAK_MEAN_S = 6.0
PEAK_SD_S = 2.449
UNDERSHOOT_MEAN_S = 16.0
UNDERSHOOT_SD_S = 4.0
UNDERSHOOT_RATIO = 1.0 / 6.0

GLOVER_PEAK_DELAY_S = 6.0
GLOVER_UNDERSHOOT_DELAY_S = 12.0
GLOVER_DISPERSION_S = 0.9
GLOVER_UNDERSHOOT_RATIO = 0.48


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
    t = _check_grid(dt, length)
    peak = _gamma_pdf(t, PEAK_MEAN_S, PEAK_SD_S)
    undershoot = _gamma_pdf(t, UNDERSHOOT_MEAN_S, UNDERSHOOT_SD_S)
    return peak - UNDERSHOOT_RATIO * undershoot


def _check_grid(dt: float, length: float) -> NDArray[np.float64]:
    """Kernel times ``k * dt`` for ``k = 0 .. round(length / dt) - 1``, after validation."""
    if not dt > 0:
        raise ValueError(f"dt must be a positive number of seconds, got {dt}")
    if not length > dt:
        raise ValueError(f"length must exceed dt ({dt} s), got {length}")
    return np.arange(round(length / dt)) * dt


def glover_hrf(dt: float = 0.05, length: float = 36.0) -> NDArray[np.float64]:
    """Glover's (1999) HRF as nilearn parameterises it, sampled on a regular grid.

    ``hrf(t) = g(t; 6/0.9, 0.9) - 0.48 g(t; 12/0.9, 0.9)`` where ``g(t; shape, scale)`` is a
    gamma pdf (delays 6 s and 12 s, dispersion 0.9 s). Glover's published form
    ``(t/d1)^a1 exp(-(t-d1)/b1) - c (t/d2)^a2 exp(-(t-d2)/b2)`` (``a1 = 6, a2 = 12,
    b = 0.9 s, c = 0.35``) peaks about 0.25 s later; nilearn's variant is used so that results
    compare with nilearn's ``"glover"`` model.

    Parameters
    ----------
    dt : float
        Sampling step in seconds (FEAT grid: 0.05 s).
    length : float
        Kernel length in seconds (36 s, as for the double gamma).

    Returns
    -------
    ndarray, shape (round(length / dt),)
        ``hrf(k * dt)``; unnormalised (:func:`convolve_events` divides by the sum).
    """
    t = _check_grid(dt, length)
    scale = GLOVER_DISPERSION_S
    peak = stats.gamma.pdf(t, a=GLOVER_PEAK_DELAY_S / scale, scale=scale)
    undershoot = stats.gamma.pdf(t, a=GLOVER_UNDERSHOOT_DELAY_S / scale, scale=scale)
    return peak - GLOVER_UNDERSHOOT_RATIO * undershoot


def fir_kernel(delay: int, tr: float, dt: float = 0.05) -> NDArray[np.float64]:
    """Finite-impulse-response kernel: a window one TR wide starting ``delay`` TRs after onset.

    Bin ``[k dt, (k+1) dt)`` holds the fraction of it inside ``[delay * tr, (delay + 1) * tr)``,
    so after :func:`convolve_events`' sum normalisation a regressor is the fraction of that
    window covered by the (unconvolved) events: 1 on a long block, ``dt / tr`` per impulse.
    Sampled at the mid-volume time ``(j + 0.5) * tr``, delay ``k`` of volume ``j`` covers the
    stimulus in ``((j - k - 0.5) tr, (j - k + 0.5) tr]``.

    Parameters
    ----------
    delay : int
        Delay in volumes (>= 0).
    tr : float
        Repetition time in seconds.
    dt : float
        Grid step in seconds (<= tr).

    Returns
    -------
    ndarray, shape (ceil((delay + 1) * tr / dt),)
        Window weights in [0, 1].
    """
    if int(delay) != delay or delay < 0:
        raise ValueError(f"FIR delay must be a whole number of volumes >= 0, got {delay}")
    if not 0 < dt <= tr:
        raise ValueError(f"dt must be in (0, tr={tr}] seconds, got {dt}")
    start, stop = delay * tr, (delay + 1) * tr
    lo = np.arange(math.ceil(stop / dt - 1e-9)) * dt
    cover = np.minimum(lo + dt, stop) - np.maximum(lo, start)
    return np.clip(cover, 0.0, None) / dt


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
