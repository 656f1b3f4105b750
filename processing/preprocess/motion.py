"""Rigid head-motion correction of BOLD runs (the job of FSL's MCFLIRT).

Conventions
-----------
* Runs are ``(t, z, y, x)`` arrays with the NIfTI affine mapping voxel indices
  ``(i, j, k) = (x, y, z)`` to world mm; single volumes are ``(z, y, x)``.
* Parameters follow :mod:`processing.geometry`: ``(n, 6)`` rows of ``trans_x, trans_y, trans_z``
  (mm) and ``rot_x, rot_y, rot_z`` (radians), ``M(x) = R (x - c) + c + t`` with ``R = Rz Ry Rx``
  about the volume centre ``c``. Row ``t`` is the map from *reference* world coordinates to
  volume ``t``'s world coordinates: the corrected volume ``t`` is volume ``t`` sampled at
  ``M_t(x)`` for every reference-grid point ``x``. The reference volume has zero parameters.
* Estimation minimises ``sum (a V_t(M_t x) + b - F(x))^2`` (least squares after a per-volume
  intensity gain and offset) with trilinear interpolation, over a 4-2-1 voxel pyramid, by
  inverse-compositional Gauss-Newton with Levenberg-Marquardt damping (see ``_rigid_gn``).
* Displacement summaries (FD, RMS, verdict, confounds, plot) live in ``_motion_qc`` and are
  re-exported here.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import rigid_matrix, rigid_params, volume_center_mm
from processing.preprocess import _rigid_gn
from processing.preprocess._motion_qc import (
    MotionInputError,
    MotionVerdict,
    confounds_table,
    framewise_displacement,
    motion_exclusion,
    plot_motion,
    rms_displacement_series,
)
from processing.spline import cubic_coefficients, resample_cubic

__all__ = [
    "MIN_VOLUMES",
    "MotionInputError",
    "MotionVerdict",
    "apply_motion",
    "confounds_table",
    "estimate_motion",
    "framewise_displacement",
    "motion_exclusion",
    "plot_motion",
    "reference_index",
    "rms_displacement_series",
    "select_reference",
]

MIN_VOLUMES = 10
_SWAP = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k) <-> (z, y, x) index order


def _check_affine(affine: ArrayLike) -> NDArray[np.float64]:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise MotionInputError(
            f"affine must be the 4 x 4 voxel -> mm matrix of the run, got shape {aff.shape}; "
            "pass the NIfTI image's .affine"
        )
    if not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise MotionInputError(f"affine must be finite and invertible, got\n{aff}")
    return aff


def _check_volume(volume: NDArray, what: str) -> None:
    """Raise if a (z, y, x) volume holds NaN/inf or only zeros."""
    if not np.isfinite(volume).all():
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        raise MotionInputError(
            f"{what} contains {bad} NaN or infinite values; fix or mask them before motion "
            "correction (e.g. np.nan_to_num)"
        )
    if not volume.any():
        raise MotionInputError(
            f"{what} is all zeros (dropped or empty acquisition?); remove it from the run"
        )


def _check_run(volumes: ArrayLike, min_volumes: int = 1) -> NDArray:
    vols = np.asarray(volumes)
    if vols.ndim != 4:
        raise MotionInputError(
            f"volumes must be 4-D (t, z, y, x), got shape {vols.shape}; "
            "transpose a nibabel (x, y, z, t) array with .T"
        )
    if vols.shape[0] < min_volumes:
        raise MotionInputError(
            f"a run needs at least {min_volumes} volumes for motion correction, got "
            f"{vols.shape[0]}; check that the whole run was loaded"
        )
    if not np.issubdtype(vols.dtype, np.number) or np.iscomplexobj(vols):
        raise MotionInputError(f"volumes must be real numbers, got dtype {vols.dtype}")
    for t, vol in enumerate(vols):
        _check_volume(vol, f"volume {t}")
    return vols


def reference_index(n_volumes: int, how: Literal["middle", "mean"] | int = "middle") -> int | None:
    """Index of the reference volume, or None for the temporal mean.

    Lets a caller read one volume instead of the whole run; same rules as
    :func:`select_reference` (at least ``MIN_VOLUMES`` volumes, index in ``0 .. n - 1``).
    """
    if n_volumes < MIN_VOLUMES:
        raise MotionInputError(
            f"run has {n_volumes} volumes; motion correction needs at least {MIN_VOLUMES}. "
            "Is this a BOLD run? Exclude it from the study otherwise."
        )
    if how == "mean":
        return None
    if how == "middle":
        return n_volumes // 2
    if isinstance(how, bool) or not isinstance(how, int | np.integer):
        raise MotionInputError(f"how must be 'middle', 'mean' or a volume index, got {how!r}")
    if not 0 <= how < n_volumes:
        raise MotionInputError(
            f"reference volume index {how} is out of range; valid indices are 0 to "
            f"{n_volumes - 1}. Fix preprocessing.reference_volume in the study file."
        )
    return int(how)


def select_reference(
    volumes: ArrayLike, how: Literal["middle", "mean"] | int = "middle"
) -> NDArray[np.float32]:
    """The reference image of a run.

    Parameters
    ----------
    volumes : array_like, shape (t, z, y, x)
        The whole run (at least ``MIN_VOLUMES`` = 10 volumes).
    how : {"middle", "mean"} or int
        ``"middle"``: volume ``t // 2`` (MCFLIRT's default); ``"mean"``: the temporal mean;
        an int: that volume index, in ``0 .. t - 1``.

    Returns
    -------
    ndarray, shape (z, y, x), float32
    """
    vols = _check_run(volumes, MIN_VOLUMES)
    n = vols.shape[0]
    if isinstance(how, bool) or not isinstance(how, str | int | np.integer):
        raise MotionInputError(f"how must be 'middle', 'mean' or a volume index, got {how!r}")
    if isinstance(how, str):
        if how == "middle":
            return vols[n // 2].astype(np.float32)
        if how == "mean":
            return vols.mean(axis=0, dtype=np.float64).astype(np.float32)
        raise MotionInputError(f"how must be 'middle', 'mean' or a volume index, got {how!r}")
    if not 0 <= how < n:
        raise MotionInputError(
            f"reference volume index {how} is out of range; valid indices are 0 to {n - 1}"
        )
    return vols[int(how)].astype(np.float32)


def _auto_mask(reference: NDArray) -> NDArray[np.bool_]:
    """Head mask: smoothed reference above 10 % of its robust (2-98 %) range, holes filled."""
    smooth = ndimage.gaussian_filter(reference.astype(np.float32), 1.0)
    low, high = np.percentile(smooth, [2.0, 98.0])
    return ndimage.binary_fill_holes(smooth > low + 0.1 * (high - low))


def _check_levels(levels: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels or any(isinstance(f, bool) or int(f) != f or f < 1 for f in levels):
        raise MotionInputError(
            f"levels must be positive integer down-sampling factors such as (4, 2, 1), got {levels}"
        )
    for factor in levels:
        if min(shape) // factor < 4:
            raise MotionInputError(
                f"level {factor} leaves fewer than 4 voxels along an axis of a {shape} volume; "
                "use smaller factors"
            )
    return tuple(int(f) for f in levels)


def _check_mask(mask: ArrayLike | None, reference: NDArray, margin: int) -> NDArray[np.bool_]:
    msk = _auto_mask(reference) if mask is None else np.asarray(mask)
    if msk.shape != reference.shape:
        raise MotionInputError(
            f"mask shape {msk.shape} differs from the reference shape {reference.shape}; "
            "pass a (z, y, x) mask on the reference grid"
        )
    msk = msk.astype(bool)
    if msk.sum() < 100:
        what = "the automatic head mask" if mask is None else "mask"
        raise MotionInputError(
            f"{what} has {int(msk.sum())} voxels; at least 100 are needed (is the reference "
            "a flat image? pass a head mask)"
        )
    return ndimage.binary_dilation(msk, iterations=margin) if margin > 0 else msk


def estimate_motion(
    volumes: ArrayLike,
    reference: ArrayLike,
    affine: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    mask_margin: int = 2,
    levels: tuple[int, ...] = (4, 2, 1),
    max_iter: int = 30,
    tol_mm: float = 0.002,
    max_points: int = 20_000,
    fine_sigma: float = 0.5,
    init: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Rigid motion of each volume relative to the reference (MCFLIRT's estimation).

    Works on any contiguous chunk of a run: each volume starts from the previous volume's
    estimate (the first from ``init``).

    Parameters
    ----------
    volumes : array_like, shape (n, z, y, x)
        Volumes to register (any real dtype; converted to float32 one volume at a time).
    reference : array_like, shape (z, y, x)
        Reference image (see :func:`select_reference`).
    affine : array_like, shape (4, 4)
        Voxel (i, j, k) = (x, y, z) -> world mm affine shared by the run.
    mask : array_like of bool, shape (z, y, x), optional
        Brain or head mask on the reference grid. Default: the smoothed reference above 10 % of
        its robust (2-98 %) range, holes filled.
    mask_margin : int
        The cost is evaluated inside the mask dilated by this many voxels, so that the strong
        gradients at the brain edge count.
    levels : tuple of int
        Down-sampling factors (voxels), coarse to fine; 1 is the native grid.
    max_iter : int
        Most Gauss-Newton iterations per level and volume.
    tol_mm : float
        Stop when a step moves points by less than this (translation norm + 50 mm x rotation
        norm), in mm.
    max_points : int
        Most voxels per level: beyond it, half the points with the strongest reference gradient
        and an even spread of the rest.
    fine_sigma : float
        Gaussian smoothing (native voxels) of reference and volumes at level 1.
    init : array_like, shape (6,), optional
        Starting parameters of the first volume (default zero).

    Returns
    -------
    ndarray, shape (n, 6), float64
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad) mapping reference world
        coordinates to each volume's world coordinates.
    """
    vols = _check_run(volumes)
    ref = np.asarray(reference)
    if ref.shape != vols.shape[1:]:
        raise MotionInputError(
            f"reference shape {ref.shape} differs from the volume shape {vols.shape[1:]}; "
            "both must be on the same (z, y, x) grid"
        )
    _check_volume(ref, "reference")
    aff = _check_affine(affine)
    levels = _check_levels(levels, ref.shape)
    if max_iter < 1 or tol_mm <= 0 or max_points < 100 or mask_margin < 0:
        raise MotionInputError(
            "need max_iter >= 1, tol_mm > 0, max_points >= 100, mask_margin >= 0; got "
            f"{max_iter}, {tol_mm}, {max_points}, {mask_margin}"
        )
    start = np.zeros(6) if init is None else np.asarray(init, dtype=np.float64)
    if start.shape != (6,) or not np.isfinite(start).all():
        raise MotionInputError(f"init must be 6 finite parameters, got {init!r}")
    center = volume_center_mm(aff, ref.shape[::-1])
    pyramid = _rigid_gn.build_reference(
        ref, aff, _check_mask(mask, ref, int(mask_margin)), center, levels, fine_sigma, max_points
    )
    matrix = rigid_matrix(start, center)
    out = np.empty((vols.shape[0], 6))
    for t, vol in enumerate(vols):
        matrix = _rigid_gn.register_volume(vol, pyramid, matrix, center, max_iter, tol_mm)
        out[t] = rigid_params(matrix, center)
    return out


def apply_motion(
    volumes: ArrayLike,
    params: ArrayLike,
    affine: ArrayLike,
    *,
    order: Literal[1, 3] = 1,
    mode: str = "nearest",
    out: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Resample each volume onto the reference grid, undoing its motion (one interpolation).

    Parameters
    ----------
    volumes : array_like, shape (n, z, y, x)
        Volumes, in the order of ``params``.
    params : array_like, shape (n, 6)
        Motion parameters from :func:`estimate_motion`.
    affine : array_like, shape (4, 4)
        Voxel -> world mm affine of the run.
    order : {1, 3}
        1: trilinear (MCFLIRT's own default); 3: cubic B-spline (FEAT's ``-spline_final``,
        the engine's default: trilinear blurs each volume by an amount that depends on its
        displacement, which at the brain edge correlates with the task).
    mode : str
        How :func:`scipy.ndimage.affine_transform` fills samples from outside the field of
        view; ``"nearest"`` repeats the edge voxel, ``"constant"`` writes 0. Cubic
        resampling in modes ``"nearest"`` and ``"grid-constant"`` runs in
        :func:`processing.spline.resample_cubic` (scipy's result, 3-4x faster).
    out : ndarray, shape (n, z, y, x), float32, optional
        Where to write the result (e.g. a memory-mapped output chunk); allocated if omitted.

    Returns
    -------
    ndarray, shape (n, z, y, x), float32
        ``out[t](x) = volumes[t](M_t x)`` on the reference grid.
    """
    vols = np.asarray(volumes)
    if vols.ndim != 4:
        raise MotionInputError(f"volumes must be 4-D (t, z, y, x), got shape {vols.shape}")
    par = np.asarray(params, dtype=np.float64)
    if par.shape != (vols.shape[0], 6) or not np.isfinite(par).all():
        raise MotionInputError(
            f"params must be finite with shape ({vols.shape[0]}, 6) to match the volumes, "
            f"got shape {par.shape}"
        )
    if order not in (1, 3):
        raise MotionInputError(f"order must be 1 (trilinear) or 3 (cubic spline), got {order!r}")
    aff = _check_affine(affine)
    center = volume_center_mm(aff, vols.shape[1:][::-1])
    to_index = _SWAP @ np.linalg.inv(aff)
    from_index = aff @ _SWAP
    if out is None:
        out = np.empty(vols.shape, dtype=np.float32)
    elif out.shape != vols.shape or out.dtype != np.float32:
        raise MotionInputError(
            f"out must be float32 with shape {vols.shape}, got {out.dtype} {out.shape}"
        )
    for t, (vol, mat) in enumerate(zip(vols, rigid_matrix(par, center), strict=True)):
        pull = to_index @ mat @ from_index
        if order == 3 and mode in ("nearest", "grid-constant"):
            resample_cubic(cubic_coefficients(vol, mode), pull[:3, :3], pull[:3, 3], out[t])
            continue
        ndimage.affine_transform(
            vol.astype(np.float32, copy=False),
            pull[:3, :3],
            pull[:3, 3],
            output=out[t],
            order=order,
            mode=mode,
        )
    return out
