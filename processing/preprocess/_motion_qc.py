"""Displacement summaries of motion parameters: FD, RMS, exclusion verdict, confounds, plot.

Public names are re-exported by :mod:`processing.preprocess.motion`. Parameters are ``(n, 6)``
rows in the :mod:`processing.geometry` convention (mm, radians, rotation about the volume centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from processing.geometry import rigid_matrix, rms_displacement

PARAM_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


class MotionInputError(ValueError):
    """Input that motion correction cannot use; the message says what is wrong and how to fix it."""


def _check_params(params: ArrayLike) -> NDArray[np.float64]:
    par = np.asarray(params, dtype=np.float64)
    if par.ndim != 2 or par.shape[1] != 6 or par.shape[0] < 1:
        raise MotionInputError(f"params must have shape (n, 6) with n >= 1, got {par.shape}")
    if not np.isfinite(par).all():
        raise MotionInputError("params contain NaN or infinite values; re-estimate the motion")
    return par


def _check_radius(radius_mm: float) -> float:
    if not radius_mm > 0:
        raise MotionInputError(f"radius_mm must be a positive number of mm, got {radius_mm}")
    return float(radius_mm)


def framewise_displacement(params: ArrayLike, radius_mm: float = 50.0) -> NDArray[np.float64]:
    """Framewise displacement (Power et al. 2012).

    ``FD_t = sum |d trans| + radius_mm * sum |d rot|`` between volumes ``t - 1`` and ``t``.

    Parameters
    ----------
    params : array_like, shape (n, 6)
        Motion parameters (mm, radians).
    radius_mm : float
        Head radius converting radians to mm (50 mm as in Power 2012 and fMRIPrep).

    Returns
    -------
    ndarray, shape (n,)
        FD in mm; ``FD_0 = 0``.
    """
    par = _check_params(params)
    radius = _check_radius(radius_mm)
    step = np.abs(np.diff(par, axis=0))
    fd = np.zeros(par.shape[0])
    fd[1:] = step[:, :3].sum(axis=1) + radius * step[:, 3:].sum(axis=1)
    return fd


def rms_displacement_series(
    params: ArrayLike, radius_mm: float = 80.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Absolute and relative RMS displacement (MCFLIRT's ``_abs.rms`` and ``_rel.rms``).

    The RMS displacement over a sphere of radius ``radius_mm`` centred at the rotation centre
    (the volume centre; Jenkinson 1999), via :func:`processing.geometry.rms_displacement`.
    Absolute: of ``M_t`` against the reference (identity). Relative: of ``M_t inv(M_{t-1})``.
    Only the parameters are needed because the sphere and the rotation share the same centre.

    Parameters
    ----------
    params : array_like, shape (n, 6)
        Motion parameters (mm, radians).
    radius_mm : float
        Sphere radius (80 mm in MCFLIRT and rmsdiff).

    Returns
    -------
    absolute, relative : ndarray, shape (n,)
        RMS displacements in mm; ``relative[0] = 0``.
    """
    par = _check_params(params)
    radius = _check_radius(radius_mm)
    center = np.zeros(3)
    mats = rigid_matrix(par, center)
    absolute = rms_displacement(np.eye(4), mats, center, radius)
    relative = np.zeros(par.shape[0])
    relative[1:] = rms_displacement(mats[:-1], mats[1:], center, radius)
    return absolute, relative


def _fmt_mm(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


@dataclass(frozen=True)
class MotionVerdict:
    """Whether a run is excluded for head motion.

    Attributes
    ----------
    excluded : bool
        True when some TR-to-TR displacement exceeds the threshold.
    volume : int or None
        Index of the largest TR-to-TR displacement when excluded, else None.
    max_mm : float
        Largest TR-to-TR displacement (mm).
    threshold_mm : float
        The threshold used (mm).
    reason : str
        Human-readable explanation.
    """

    excluded: bool
    volume: int | None
    max_mm: float
    threshold_mm: float
    reason: str


def motion_exclusion(relative_rms_mm: ArrayLike, threshold_mm: float) -> MotionVerdict:
    """Exclude a run whose largest TR-to-TR displacement exceeds a threshold.

    Parameters
    ----------
    relative_rms_mm : array_like, shape (n,)
        TR-to-TR displacement per volume (mm), e.g. the relative RMS of
        :func:`rms_displacement_series`.
    threshold_mm : float
        Exclusion threshold (mm); a run is excluded when its maximum is strictly above it.

    Returns
    -------
    MotionVerdict
    """
    rel = np.asarray(relative_rms_mm, dtype=np.float64)
    if rel.ndim != 1 or rel.size == 0:
        raise MotionInputError(
            f"relative_rms_mm must be a non-empty 1-D series, got shape {rel.shape}"
        )
    if not np.isfinite(rel).all() or (rel < 0).any():
        bad = int(np.flatnonzero(~np.isfinite(rel) | (rel < 0))[0])
        raise MotionInputError(f"relative_rms_mm[{bad}] = {rel[bad]} is not a finite distance >= 0")
    if not threshold_mm > 0:
        raise MotionInputError(f"threshold_mm must be a positive number of mm, got {threshold_mm}")
    worst = int(np.argmax(rel))
    peak, limit = float(rel[worst]), _fmt_mm(float(threshold_mm))
    if peak > threshold_mm:
        reason = f"TR-to-TR displacement {peak:.2f} mm at volume {worst} exceeds {limit} mm"
        return MotionVerdict(True, worst, peak, float(threshold_mm), reason)
    reason = f"largest TR-to-TR displacement {peak:.2f} mm (volume {worst}) is within {limit} mm"
    return MotionVerdict(False, None, peak, float(threshold_mm), reason)


def confounds_table(
    params: ArrayLike, fd_radius_mm: float = 50.0, rms_radius_mm: float = 80.0
) -> pd.DataFrame:
    """BIDS/fMRIPrep-style motion confounds.

    Parameters
    ----------
    params : array_like, shape (n, 6)
        Motion parameters (mm, radians).
    fd_radius_mm, rms_radius_mm : float
        Radii for :func:`framewise_displacement` and the relative RMS.

    Returns
    -------
    pandas.DataFrame, n rows
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad),
        ``framewise_displacement`` (mm) and ``rmsd`` (relative RMS, mm); both 0 at row 0.
    """
    par = _check_params(params)
    table = pd.DataFrame(par, columns=list(PARAM_COLUMNS))
    table["framewise_displacement"] = framewise_displacement(par, fd_radius_mm)
    table["rmsd"] = rms_displacement_series(par, rms_radius_mm)[1]
    return table


def plot_motion(
    params: ArrayLike,
    fd: ArrayLike,
    rel_rms: ArrayLike,
    threshold_mm: float,
    path: str | Path,
) -> Path:
    """Write a PNG of translations, rotations and displacement with the exclusion threshold.

    Parameters
    ----------
    params : array_like, shape (n, 6)
        Motion parameters (mm, radians; rotations are drawn in degrees).
    fd, rel_rms : array_like, shape (n,)
        Framewise displacement and relative RMS (mm).
    threshold_mm : float
        Exclusion threshold drawn as a horizontal line (mm).
    path : str or Path
        Output PNG file.

    Returns
    -------
    Path
        The written file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    par = _check_params(params)
    fd_arr, rel_arr = np.asarray(fd, dtype=float), np.asarray(rel_rms, dtype=float)
    if fd_arr.shape != (par.shape[0],) or rel_arr.shape != (par.shape[0],):
        raise MotionInputError(
            f"fd and rel_rms must have shape ({par.shape[0]},) like params, got "
            f"{fd_arr.shape} and {rel_arr.shape}"
        )
    fig = Figure(figsize=(9, 7), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_r, ax_d = fig.subplots(3, 1, sharex=True)
    for col in range(3):
        ax_t.plot(par[:, col], label=PARAM_COLUMNS[col])
        ax_r.plot(np.rad2deg(par[:, 3 + col]), label=PARAM_COLUMNS[3 + col])
    ax_d.plot(fd_arr, label="framewise displacement")
    ax_d.plot(rel_arr, label="relative RMS")
    ax_d.axhline(threshold_mm, color="red", linestyle="--", label=f"threshold {threshold_mm} mm")
    for ax, unit in ((ax_t, "mm"), (ax_r, "degrees"), (ax_d, "mm")):
        ax.set_ylabel(unit)
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax_d.set_xlabel("volume")
    ax_t.set_title("Head motion")
    out = Path(path)
    fig.savefig(out, format="png")
    return out
