"""Slice montages: rows of axial, coronal and sagittal slices of a background image, with
outlines (contours) and an optional thresholded statistic drawn on top (Agg backend).

One helper serves the QC figures (a brain-mask outline over the mean EPI, a registered image's
edges over the template) and the group report (z maps over the template).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ORIENTATIONS", "Outline", "pick_slices", "save_slice_montage"]

# name, (z, y, x) array axis, world axis letter
ORIENTATIONS: dict[str, tuple[int, str]] = {"axial": (0, "z"), "coronal": (1, "y"),
                                            "sagittal": (2, "x")}  # fmt: skip


@dataclass(frozen=True)
class Outline:
    """A contour to draw: where ``image`` crosses ``level``.

    Attributes
    ----------
    image : ndarray, shape (z, y, x)
        Image on the background's grid (a mask as float, or a smoothed image).
    level : float
        Contour level (0.5 for a mask).
    color : str
        Matplotlib colour.
    width : float
        Line width in points.
    """

    image: NDArray
    level: float
    color: str = "red"
    width: float = 1.0


def pick_slices(extent: ArrayLike, axis: int, count: int) -> list[int]:
    """Evenly spaced slice indices through the extent of a mask along one axis.

    Parameters
    ----------
    extent : array_like of bool, shape (z, y, x)
        Where the object is; the first and last slices holding it bound the choice (the whole
        axis when it is empty).
    axis : int
        Array axis (0 = axial, 1 = coronal, 2 = sagittal for (z, y, x) arrays).
    count : int
        Number of slices; the extent's end slices themselves are not chosen.

    Returns
    -------
    list of int
    """
    inside = np.asarray(extent, dtype=bool)
    others = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(inside.any(axis=others))
    if present.size == 0:
        present = np.arange(inside.shape[axis])
    return [int(i) for i in np.linspace(present[0], present[-1], count + 2)[1:-1].round()]


def _label(name: str, axis: int, index: int, affine: NDArray | None) -> str:
    if affine is None:
        return f"{name} {index}"
    world = affine[2 - axis, 2 - axis] * index + affine[2 - axis, 3]
    return f"{name} {ORIENTATIONS[name][1]} = {world:.0f} mm"


def save_slice_montage(
    background: ArrayLike,
    path: str | Path,
    *,
    extent: ArrayLike | None = None,
    outlines: Sequence[Outline] = (),
    overlay: ArrayLike | None = None,
    threshold: float = 0.0,
    affine: ArrayLike | None = None,
    orientations: Sequence[str] = ("axial", "coronal", "sagittal"),
    n_slices: int = 5,
    title: str = "",
    overlay_label: str = "statistic",
) -> Path:
    """Save a montage: one row per orientation, ``n_slices`` slices each.

    Parameters
    ----------
    background : array_like, shape (z, y, x)
        Grey-scale image (1st-99.5th percentile window).
    path : str or Path
        Output PNG (parent folders created).
    extent : array_like of bool, shape (z, y, x), optional
        Where slices are taken (default: background above 20 % of its maximum).
    outlines : sequence of Outline
        Contours drawn on every slice where the image crosses the level.
    overlay : array_like, shape (z, y, x), optional
        Statistic drawn where ``|overlay| > threshold`` (positive red-yellow, negative blue),
        with a colour bar.
    threshold : float
        Overlay threshold.
    affine : array_like, shape (4, 4), optional
        Voxel (x, y, z) -> mm: true proportions and slice positions in mm.
    orientations : sequence of str
        Rows, from ``"axial"``, ``"coronal"``, ``"sagittal"``.
    n_slices : int
        Slices per row.
    title : str
        Figure title.
    overlay_label : str
        Colour bar label.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bg = np.asarray(background, dtype=np.float32)
    stat = None if overlay is None else np.asarray(overlay, dtype=np.float32)
    shapes = [o.image.shape for o in outlines] + ([] if stat is None else [stat.shape])
    if bg.ndim != 3 or any(s != bg.shape for s in shapes):
        raise ValueError(f"need 3-D images of one shape; background {bg.shape}, others {shapes}")
    unknown = [o for o in orientations if o not in ORIENTATIONS]
    if unknown:
        raise ValueError(f"unknown orientations {unknown}; use {list(ORIENTATIONS)}")
    inside = bg > 0.2 * bg.max() if extent is None else np.asarray(extent, dtype=bool)
    aff = None if affine is None else np.asarray(affine, dtype=np.float64)
    size_zyx = (np.ones(3) if aff is None else np.linalg.norm(aff[:3, :3], axis=0))[::-1]
    low, high = np.percentile(bg, [1.0, 99.5])
    limit = None if stat is None else max(float(np.nanmax(np.abs(stat))), threshold + 1e-3)
    rows = len(orientations)
    size = (2.4 * n_slices + (1.0 if stat is not None else 0.0), 2.5 * rows)
    fig, axes = plt.subplots(rows, n_slices, figsize=size, squeeze=False)
    shown = None
    for row, name in enumerate(orientations):
        axis = ORIENTATIONS[name][0]
        others = [a for a in range(3) if a != axis]
        aspect = float(size_zyx[others[0]] / size_zyx[others[1]])
        for col, index in enumerate(pick_slices(inside, axis, n_slices)):
            ax = axes[row, col]
            ax.imshow(np.take(bg, index, axis), cmap="gray", vmin=low, vmax=high,
                      origin="lower", aspect=aspect)  # fmt: skip
            if stat is not None:
                plane = np.take(stat, index, axis)
                masked = np.ma.masked_where(~(np.abs(plane) > threshold), plane)
                shown = ax.imshow(masked, cmap="RdYlBu_r", vmin=-limit, vmax=limit,
                                  origin="lower", aspect=aspect)  # fmt: skip
            for outline in outlines:
                edges = np.take(outline.image, index, axis)
                if edges.min() < outline.level < edges.max():
                    ax.contour(edges, levels=[outline.level], colors=outline.color,
                               linewidths=outline.width)  # fmt: skip
            ax.set_title(_label(name, axis, index, aff), fontsize=8)
            ax.set_axis_off()
    if shown is not None:  # fixed layout: tight/constrained layout cost seconds per figure
        fig.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.9, wspace=0.05, hspace=0.2)
        fig.colorbar(shown, cax=fig.add_axes((0.92, 0.2, 0.012, 0.6)), label=overlay_label)
    else:
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.96))
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
