"""Spherical ROIs and featquery-style percent signal change.

Grids are 3-D in NIfTI voxel order (i, j, k) with an ``affine`` mapping voxel indices to mm.

Percent signal change (featquery's definition)
    ``PSC = 100 * effect * peak_height / mean_func`` per voxel, where ``effect`` is the parameter
    or contrast estimate (COPE, in data units per unit regressor), ``peak_height`` the
    regressor's peak-to-peak height in the design (FEAT: max - min of the convolved, filtered
    regressor; for a contrast, of the contrast-weighted regressors) and ``mean_func`` the mean
    functional image in the same space. The ROI value is the mean of the voxelwise PSC over the
    ROI's voxels (voxels where ``mean_func <= 0`` or any input is not finite are left out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.geometry import apply_affine

__all__ = ["percent_signal_change", "roi_mean", "roi_psc", "sphere_mask", "sphere_masks"]


def sphere_mask(
    center_mm: ArrayLike,
    affine: ArrayLike,
    shape: tuple[int, int, int],
    diameter_mm: float = 4.0,
    *,
    snap: bool = True,
    mask: ArrayLike | None = None,
) -> NDArray[np.bool_]:
    """Voxels whose centres lie within ``diameter_mm / 2`` of a centre.

    Parameters
    ----------
    center_mm : array_like, shape (3,)
        Centre in mm (e.g. a cluster's peak, MNI mm).
    affine : array_like, shape (4, 4)
    shape : tuple of int
        Grid shape.
    diameter_mm : float
        Sphere diameter (4 mm in the reference study: on a 2 mm grid, the peak voxel and its 6
        face neighbours).
    snap : bool
        Move the centre to the nearest voxel centre first (as spheres drawn on a peak voxel).
    mask : array_like of bool, optional
        Intersect with this mask (e.g. the group mask).

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    aff = np.asarray(affine, dtype=np.float64)
    center = np.asarray(center_mm, dtype=np.float64)
    vox = apply_affine(np.linalg.inv(aff), center)
    if snap:
        vox = np.rint(vox)
        center = apply_affine(aff, vox)
    if not np.all((vox > -0.5) & (vox < np.asarray(shape) - 0.5)):
        raise ValueError(
            f"ROI centre {center_mm} (voxel {vox.round(2).tolist()}) is outside the grid {shape}"
        )
    radius = diameter_mm / 2.0
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    dist = np.linalg.norm(apply_affine(aff, idx) - center, axis=1)
    out = (dist <= radius + 1e-6).reshape(shape)
    if mask is not None:
        out &= np.asarray(mask, dtype=bool)
    if not out.any():
        raise ValueError(f"ROI at {center_mm} mm with diameter {diameter_mm} mm holds no voxel")
    return out


def sphere_masks(
    centers: Mapping[str, ArrayLike],
    affine: ArrayLike,
    shape: tuple[int, int, int],
    diameter_mm: float = 4.0,
    **kwargs,
) -> dict[str, NDArray[np.bool_]]:
    """:func:`sphere_mask` for each named centre."""
    return {
        name: sphere_mask(c, affine, shape, diameter_mm, **kwargs) for name, c in centers.items()
    }


def percent_signal_change(
    effect: ArrayLike, mean_func: ArrayLike, peak_height: ArrayLike
) -> NDArray[np.float64]:
    """``100 * effect * peak_height / mean_func`` (featquery); NaN where ``mean_func <= 0``.

    Parameters
    ----------
    effect : array_like
        COPE/PE map(s), data units per unit regressor.
    mean_func : array_like
        Mean functional image(s), broadcastable against ``effect``.
    peak_height : array_like
        Regressor peak height(s), broadcastable (e.g. shape (n, 1, 1, 1) for n maps).

    Returns
    -------
    ndarray of float64
        Percent signal change.
    """
    e = np.asarray(effect, dtype=np.float64)
    m = np.asarray(mean_func, dtype=np.float64)
    ph = np.asarray(peak_height, dtype=np.float64)
    ok = np.isfinite(m) & (m > 0)
    return np.where(ok, 100.0 * e * ph / np.where(ok, m, 1.0), np.nan)


def roi_mean(maps: ArrayLike, roi: ArrayLike) -> NDArray[np.float64]:
    """Mean of each map over an ROI's finite voxels.

    Parameters
    ----------
    maps : array_like, shape (n, X, Y, Z) or (X, Y, Z)
    roi : array_like of bool, shape (X, Y, Z)

    Returns
    -------
    ndarray, shape (n,) (NaN for a map without finite ROI voxels)
    """
    m = np.asarray(maps, dtype=np.float64)
    r = np.asarray(roi, dtype=bool)
    if m.ndim == 3:
        m = m[None]
    if m.shape[1:] != r.shape:
        raise ValueError(f"maps on grid {m.shape[1:]} but ROI on {r.shape}; resample first")
    vals = m[:, r]
    ok = np.isfinite(vals)
    count = ok.sum(1)
    total = np.where(ok, vals, 0.0).sum(1)
    return np.divide(total, count, out=np.full(m.shape[0], np.nan), where=count > 0)


def roi_psc(
    effects: ArrayLike, mean_funcs: ArrayLike, peak_heights: ArrayLike, roi: ArrayLike
) -> NDArray[np.float64]:
    """Mean percent signal change in an ROI per map (featquery, module docstring).

    Parameters
    ----------
    effects : array_like, shape (n, X, Y, Z)
        One effect map per subject/session.
    mean_funcs : array_like, shape (n, X, Y, Z) or (X, Y, Z)
        Matching mean functional images.
    peak_heights : array_like, shape (n,) or scalar
        Regressor peak height of each map's design.
    roi : array_like of bool, shape (X, Y, Z)

    Returns
    -------
    ndarray, shape (n,)
    """
    e = np.asarray(effects, dtype=np.float64)
    if e.ndim == 3:
        e = e[None]
    ph = np.broadcast_to(np.asarray(peak_heights, dtype=np.float64), (e.shape[0],))
    psc = percent_signal_change(e, mean_funcs, ph[:, None, None, None])
    return roi_mean(psc, roi)
