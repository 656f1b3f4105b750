"""Figures of first-level results: a thresholded statistic map over its background image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["peak_voxel", "save_stat_overlay_png"]


def peak_voxel(stat: ArrayLike, mask: ArrayLike | None = None) -> tuple[int, int, int]:
    """(z, y, x) index of the largest value of ``stat`` (within ``mask`` when given).

    Parameters
    ----------
    stat : array_like, shape (z, y, x)
    mask : array_like of bool, shape (z, y, x), optional

    Returns
    -------
    tuple of int
    """
    values = np.asarray(stat, dtype=np.float64)
    if mask is not None:
        values = np.where(np.asarray(mask, dtype=bool), values, -np.inf)
    if not np.isfinite(values).any():
        raise ValueError("the statistic map has no finite value inside the mask")
    return tuple(int(i) for i in np.unravel_index(np.argmax(values), values.shape))


def save_stat_overlay_png(
    background: ArrayLike,
    stat: ArrayLike,
    path: str | Path,
    threshold: float = 2.3,
    title: str = "",
    affine: ArrayLike | None = None,
) -> Path:
    """Axial, coronal and sagittal slices through the peak, ``|stat| > threshold`` in colour.

    Parameters
    ----------
    background : array_like, shape (z, y, x)
        Grey-scale image (e.g. the mean functional image).
    stat : array_like, shape (z, y, x)
        Statistic (e.g. z); positive values in red-yellow, negative in blue.
    path : str or Path
        Output PNG (parent folders are created).
    threshold : float
        Values with ``|stat| <= threshold`` are not drawn.
    title : str
        Figure title (the peak's voxel and value are appended).
    affine : array_like, shape (4, 4), optional
        Voxel (x, y, z) -> world mm; gives true proportions and the peak in mm.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, values = np.asarray(background, np.float32), np.asarray(stat, np.float32)
    if image.shape != values.shape or image.ndim != 3:
        raise ValueError(f"background {image.shape} and stat {values.shape} must be equal 3-D")
    peak = peak_voxel(np.abs(values))
    sizes = np.ones(3) if affine is None else np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    zyx = sizes[::-1]
    low, high = np.percentile(image, [1.0, 99.5])
    shown = np.ma.masked_where(np.abs(values) <= threshold, values)
    limit = max(float(np.abs(values).max()), threshold + 1e-3)
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    cuts = (
        (image[peak[0]], shown[peak[0]], zyx[1] / zyx[2]),
        (image[:, peak[1]], shown[:, peak[1]], zyx[0] / zyx[2]),
        (image[:, :, peak[2]], shown[:, :, peak[2]], zyx[0] / zyx[1]),
    )
    for ax, (grey, colour, aspect) in zip(axes, cuts, strict=True):
        ax.imshow(grey, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=aspect)
        im = ax.imshow(colour, cmap="RdYlBu_r", vmin=-limit, vmax=limit, origin="lower",
                       aspect=aspect)  # fmt: skip
        ax.set_axis_off()
    where = f"voxel (z,y,x)={peak}"
    if affine is not None:
        mm = np.asarray(affine) @ np.array([peak[2], peak[1], peak[0], 1.0])
        where = f"peak at ({mm[0]:.0f}, {mm[1]:.0f}, {mm[2]:.0f}) mm"
    fig.colorbar(im, ax=axes, shrink=0.7, label="statistic")
    fig.suptitle(f"{title}  {where}, max |stat| {np.abs(values).max():.2f}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
