"""Gaussian spatial smoothing in millimetres, optionally restricted to a brain mask.

Arrays are ``(..., z, y, x)`` in C order with the NIfTI affine mapping voxel indices
``(i, j, k) = (x, y, z)`` to world mm, so the voxel sizes in array-axis order ``(z, y, x)`` are
the affine's column norms reversed (correct for oblique affines without shear).

The kernel is a sampled Gaussian (``scipy.ndimage.gaussian_filter``, truncated at 4 sigma) with
``sigma_vox = fwhm_mm / (2 sqrt(2 ln 2)) / voxel_size_mm`` per axis. Smoothing is a *normalised
convolution*: ``smooth(data * mask) / smooth(mask)`` inside the mask and zero outside, so a
constant image stays constant right up to the mask edge instead of fading into the zeros around
it. Without a mask the whole field of view is the mask, which likewise avoids darkening the
edges of the field of view. FSL's ``fslmaths -s`` has no such renormalisation (SUSAN's
``usan`` does something similar within the brain).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = ["FWHM_TO_SIGMA", "fwhm_to_sigma_voxels", "smooth_mm", "voxel_sizes_zyx"]

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # 1 / 2.3548
_BLOCK_VOLUMES = 16  # volumes smoothed per call (bounds float32 temporaries)


def voxel_sizes_zyx(affine: ArrayLike) -> NDArray[np.float64]:
    """Voxel sizes in mm for array axes ``(z, y, x)``.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Voxel ``(i, j, k) = (x, y, z)`` -> world mm affine.

    Returns
    -------
    ndarray, shape (3,)
        Column norms of ``affine[:3, :3]``, reversed to ``(z, y, x)``, in mm.
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4 x 4 matrix, got shape {aff.shape}")
    sizes = np.linalg.norm(aff[:3, :3], axis=0)[::-1]
    if np.any(sizes <= 0):
        raise ValueError(f"affine has a zero-length voxel axis (sizes x, y, z = {sizes[::-1]})")
    return sizes


def fwhm_to_sigma_voxels(fwhm_mm: float, affine: ArrayLike) -> NDArray[np.float64]:
    """Gaussian sigma per array axis ``(z, y, x)`` in voxels for a FWHM in mm.

    Parameters
    ----------
    fwhm_mm : float
        Full width at half maximum in mm (>= 0).
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.

    Returns
    -------
    ndarray, shape (3,)
        ``fwhm_mm / (2 sqrt(2 ln 2)) / voxel_size_mm`` for ``(z, y, x)``.
    """
    if not (math.isfinite(fwhm_mm) and fwhm_mm >= 0):
        raise ValueError(f"fwhm_mm must be a finite number >= 0 mm, got {fwhm_mm!r}")
    return fwhm_mm * FWHM_TO_SIGMA / voxel_sizes_zyx(affine)


def _check_inputs(arr: NDArray, mask: ArrayLike | None) -> NDArray[np.bool_]:
    """Validate data and mask; return a boolean ``(z, y, x)`` mask (all True when None)."""
    if arr.ndim < 3:
        raise ValueError(f"data must be (..., z, y, x) with at least 3 dimensions, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            "data holds NaN or inf; replace non-finite voxels (e.g. np.nan_to_num) before smoothing"
        )
    if mask is None:
        return np.ones(arr.shape[-3:], dtype=bool)
    mask_arr = np.asarray(mask)
    if mask_arr.shape != arr.shape[-3:]:
        raise ValueError(
            f"mask shape {mask_arr.shape} does not match the data's spatial shape "
            f"{arr.shape[-3:]}; pass a (z, y, x) mask of the same grid"
        )
    return mask_arr.astype(bool)


def smooth_mm(
    data: ArrayLike,
    affine: ArrayLike,
    fwhm_mm: float,
    mask: ArrayLike | None = None,
) -> NDArray[np.float32]:
    """Smooth volumes with a Gaussian of the given FWHM in mm (normalised within the mask).

    Parameters
    ----------
    data : array_like, shape (..., z, y, x)
        One volume or a stack of volumes (e.g. a run ``(t, z, y, x)``); must be finite.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine; sets the per-axis sigma (anisotropic voxels are handled).
    fwhm_mm : float
        Kernel FWHM in mm (>= 0; 0 returns the data, masked).
    mask : array_like of bool, shape (z, y, x), optional
        Brain mask. Values outside it do not leak in and the output is 0 outside.

    Returns
    -------
    ndarray, shape like ``data``, float32
        ``smooth(data * mask) / smooth(mask)`` inside the mask, 0 outside.
    """
    arr = np.asarray(data)
    sigma = fwhm_to_sigma_voxels(fwhm_mm, affine)
    inside = _check_inputs(arr, mask)
    volumes = arr.reshape((-1, *arr.shape[-3:]))
    out = np.zeros(volumes.shape, dtype=np.float32)
    weight = inside.astype(np.float32)
    if fwhm_mm > 0:
        norm = ndimage.gaussian_filter(weight, sigma, mode="constant")
        norm = np.where(inside, norm, 1.0).astype(np.float32)
    for start in range(0, volumes.shape[0], _BLOCK_VOLUMES):
        block = volumes[start : start + _BLOCK_VOLUMES].astype(np.float32) * weight
        if fwhm_mm > 0:
            block = ndimage.gaussian_filter(block, (0.0, *sigma), mode="constant")
            block /= norm
        out[start : start + _BLOCK_VOLUMES] = np.where(inside, block, 0.0)
    return out.reshape(arr.shape)
