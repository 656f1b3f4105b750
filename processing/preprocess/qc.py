"""Quality-control measures and figures: tSNR, mask volume, mask overlay PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.figures.montage import Outline, save_slice_montage

__all__ = ["mask_volume_ml", "save_mask_overlay_png", "tsnr"]


def tsnr(data: ArrayLike) -> NDArray[np.float32]:
    """Temporal signal-to-noise ratio: temporal mean / temporal standard deviation.

    Parameters
    ----------
    data : array_like, shape (t, z, y, x)
        A run (t >= 2), finite.

    Returns
    -------
    ndarray, shape (z, y, x), float32
        ``mean / std`` over time (population std, ``ddof=0``); 0 where ``std == 0``.
    """
    arr = np.asarray(data)
    if arr.ndim != 4 or arr.shape[0] < 2:
        raise ValueError(f"data must be a run (t, z, y, x) with t >= 2, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("data holds NaN or inf; replace non-finite voxels before computing tSNR")
    mean = arr.mean(axis=0, dtype=np.float64)
    std = arr.std(axis=0, dtype=np.float64)
    ratio = np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)
    return ratio.astype(np.float32)


def mask_volume_ml(mask: ArrayLike, affine: ArrayLike) -> float:
    """Volume of a mask in millilitres.

    Parameters
    ----------
    mask : array_like of bool, shape (z, y, x)
        The mask.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.

    Returns
    -------
    float
        ``count * |det(affine[:3, :3])| / 1000`` (ml = cm^3).
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4 x 4, got shape {aff.shape}")
    voxel_mm3 = abs(float(np.linalg.det(aff[:3, :3])))
    return float(np.count_nonzero(mask)) * voxel_mm3 / 1000.0


def save_mask_overlay_png(
    mean_epi: ArrayLike,
    mask: ArrayLike,
    path: str | Path,
    title: str = "",
    n_slices: int = 4,
    affine: ArrayLike | None = None,
) -> Path:
    """Save axial, coronal and sagittal slices of an image with the mask contour in red.

    Parameters
    ----------
    mean_epi : array_like, shape (z, y, x)
        Background image (e.g. the mean EPI), shown in grey (1st-99.5th percentile window).
    mask : array_like of bool, shape (z, y, x)
        Mask whose outline is drawn; slices are spread over its extent.
    path : str or Path
        Output PNG (parent folders are created).
    title : str
        Figure title.
    n_slices : int
        Slices per orientation (one row each).
    affine : array_like, shape (4, 4), optional
        Voxel -> world (mm) affine; when given, slices are drawn with true mm proportions.

    Returns
    -------
    Path
        The written file.
    """
    image = np.asarray(mean_epi, dtype=np.float32)
    inside = np.asarray(mask).astype(bool)
    if image.ndim != 3 or inside.shape != image.shape:
        raise ValueError(
            f"need a 3-D image and a mask of the same shape, got {image.shape} and {inside.shape}"
        )
    outline = Outline(inside.astype(np.float32), 0.5, "red", 0.8)
    return save_slice_montage(
        image, path, extent=inside, outlines=[outline], affine=affine, n_slices=n_slices,
        title=title,
    )  # fmt: skip
