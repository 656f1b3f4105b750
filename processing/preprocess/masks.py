"""Brain masks of a mean EPI or a T1w image, robust to smooth intensity bias.

Both masks run the same pipeline with different tuning (:class:`MaskTuning`):

1. **Head.** Otsu threshold on log intensities (a multiplicative bias is an additive shift in
   log space, so the background/head split survives a strong bias); the largest connected part,
   with holes filled, is the head.
2. **Bias.** A low-order polynomial (degree 2 by default) in the mm coordinates is fitted by
   least squares to log intensity over the current brain estimate (first: the head shrunk by
   ``core_mm``), using only voxels within 0.5-2 times its median (drops dark non-brain and
   bright vessels), and divided out, so brain tissue sits near 1 everywhere. The field is
   clipped to the range it takes where it was fitted (no wild polynomial extrapolation).
   Repeated ``bias_iterations`` times, each fit on the previous iteration's brain mask.
3. **Threshold.** Otsu's threshold on the bias-corrected head intensities, clamped to
   ``threshold_range`` (fractions of the brain level), separates brain from dim scalp, skull,
   gap and background.
4. **Morphology in mm** (exact Euclidean distances, so anisotropic voxels are handled):
   erosion by ``erode_mm`` to cut thin bridges to the scalp, the largest connected component,
   dilation back by ``erode_mm`` within the thresholded voxels, closing by ``close_mm``, holes
   filled in every axial slice and in 3-D, and the largest component again (one piece).

The EPI tuning keeps the erosion light (voxels are 2-4 mm; scalp is faint after fat
suppression); the T1w tuning erodes more (bright scalp fat sits a few mm from the brain) and
closes more (dark sulcal CSF). Not a full skull stripper: meant for mean EPIs and for
defaced-or-not T1w images with a visible dark gap (CSF/skull) between brain and scalp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.preprocess.smoothing import voxel_sizes_zyx

__all__ = [
    "EPI_TUNING",
    "T1_TUNING",
    "MaskTuning",
    "brain_mask",
    "epi_brain_mask",
    "otsu_threshold",
    "polynomial_bias",
    "t1_brain_mask",
]

_MAX_FIT_VOXELS = 200_000


@dataclass(frozen=True)
class MaskTuning:
    """Parameters of :func:`brain_mask` (lengths in mm, intensities relative to brain = 1)."""

    poly_degree: int = 2
    bias_iterations: int = 2
    core_mm: float = 10.0
    threshold_range: tuple[float, float] = (0.25, 0.6)
    erode_mm: float = 4.0
    close_mm: float = 6.0


EPI_TUNING = MaskTuning()
T1_TUNING = MaskTuning(threshold_range=(0.3, 0.6), erode_mm=6.0, close_mm=10.0)


def otsu_threshold(values: ArrayLike, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of a set of values.

    Parameters
    ----------
    values : array_like
        Intensities (any shape), finite.
    bins : int
        Histogram bins between the minimum and maximum.

    Returns
    -------
    float
        Threshold; values above it form the bright class.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        raise ValueError("cannot compute an Otsu threshold of no values")
    counts, edges = np.histogram(flat, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_lo = np.cumsum(counts)[:-1].astype(np.float64)
    weight_hi = flat.size - weight_lo
    sum_lo = np.cumsum(counts * centres)[:-1]
    mean_lo = sum_lo / np.maximum(weight_lo, 1)
    mean_hi = (np.sum(counts * centres) - sum_lo) / np.maximum(weight_hi, 1)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    if not np.any(between > 0):  # one distinct value: no split
        return float(centres[0])
    return float(edges[1 + int(np.argmax(between))])


def _coordinates(shape: tuple[int, ...], sizes: NDArray) -> list[NDArray[np.float64]]:
    """Per-axis coordinates in mm, centred and scaled to about [-1, 1] (broadcastable)."""
    axes = []
    extent = max(float(n * s) for n, s in zip(shape, sizes, strict=True)) / 2.0
    for axis, (n, size) in enumerate(zip(shape, sizes, strict=True)):
        coord = (np.arange(n) - (n - 1) / 2.0) * size / extent
        view = [1, 1, 1]
        view[axis] = n
        axes.append(coord.reshape(view))
    return axes


def _exponents(degree: int) -> list[tuple[int, int, int]]:
    """All monomial exponents (a, b, c) with a + b + c <= degree."""
    return [
        (a, b, c)
        for a in range(degree + 1)
        for b in range(degree + 1 - a)
        for c in range(degree + 1 - a - b)
    ]


def polynomial_bias(
    image: ArrayLike, affine: ArrayLike, mask: ArrayLike, degree: int = 2
) -> NDArray[np.float64]:
    """Smooth multiplicative bias: ``exp`` of a polynomial fitted to log intensity in ``mask``.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Positive intensities inside ``mask``.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine (coordinates are in mm, so the fit is geometry-aware).
    mask : array_like of bool, shape (z, y, x)
        Voxels of one tissue class or the brain, used for the fit.
    degree : int
        Total polynomial degree (0 = a constant; 2 has 10 terms).

    Returns
    -------
    ndarray, shape (z, y, x), float64
        The bias field, clipped to the range it takes at the fitted voxels; ``image / bias`` has
        a geometric mean near 1 in ``mask``.
    """
    img = np.asarray(image, dtype=np.float64)
    inside = np.asarray(mask, dtype=bool) & (img > 0)
    if inside.sum() < 10 * len(_exponents(degree)):
        raise ValueError(f"too few positive voxels ({inside.sum()}) to fit a degree-{degree} bias")
    axes = _coordinates(img.shape, voxel_sizes_zyx(affine))
    index = np.flatnonzero(inside)
    step = max(1, index.size // _MAX_FIT_VOXELS)
    index = index[::step]
    pos = np.unravel_index(index, img.shape)
    terms = _exponents(degree)
    design = np.column_stack(
        [
            axes[0].ravel()[pos[0]] ** a
            * axes[1].ravel()[pos[1]] ** b
            * axes[2].ravel()[pos[2]] ** c
            for a, b, c in terms
        ]
    )
    coef, *_ = np.linalg.lstsq(design, np.log(img.ravel()[index]), rcond=None)
    fitted = design @ coef
    log_bias = np.zeros(img.shape)
    for weight, (a, b, c) in zip(coef, terms, strict=True):
        log_bias += weight * (axes[0] ** a * axes[1] ** b * axes[2] ** c)
    # never extrapolate beyond the range seen where the fit had data
    return np.exp(np.clip(log_bias, fitted.min(), fitted.max()))


def _erode(mask: NDArray[np.bool_], radius_mm: float, sizes: NDArray) -> NDArray[np.bool_]:
    """Erosion by a ball of ``radius_mm`` (outside the field of view counts as inside)."""
    if radius_mm <= 0 or not mask.any() or mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(mask, sampling=sizes) > radius_mm


def _dilate(mask: NDArray[np.bool_], radius_mm: float, sizes: NDArray) -> NDArray[np.bool_]:
    """Dilation by a ball of ``radius_mm``."""
    if radius_mm <= 0 or not mask.any() or mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=sizes) <= radius_mm


def _close(mask: NDArray[np.bool_], radius_mm: float, sizes: NDArray) -> NDArray[np.bool_]:
    """Closing by a ball of ``radius_mm``; outside the field of view counts as background."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    pad = [(int(np.ceil(radius_mm / size)) + 1,) * 2 for size in sizes]
    padded = np.pad(mask, pad)
    closed = _erode(_dilate(padded, radius_mm, sizes), radius_mm, sizes)
    return closed[tuple(slice(lo, -hi) for lo, hi in pad)]


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest 6-connected component (empty stays empty)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_holes(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Fill holes in every axial (z) slice, then in 3-D."""
    filled = np.stack([ndimage.binary_fill_holes(plane) for plane in mask])
    return ndimage.binary_fill_holes(filled)


def _head_mask(image: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Rough head: Otsu on log intensity of positive voxels, largest component, filled."""
    positive = image > 0
    if positive.sum() < 100:
        raise ValueError(
            f"image has only {int(positive.sum())} positive voxels; pass a mean EPI/T1w volume"
        )
    logs = np.log(image[positive])
    floor = np.percentile(logs, 1.0)
    head = np.zeros(image.shape, dtype=bool)
    head[positive] = logs > otsu_threshold(logs[logs >= floor])
    return _fill_holes(_largest_component(head))


def _validate(image: ArrayLike, affine: ArrayLike) -> tuple[NDArray[np.float64], NDArray]:
    """Return the image as float64 and the voxel sizes, or raise naming the problem."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"image must be a 3-D (z, y, x) volume, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image holds NaN or inf; replace non-finite voxels before masking")
    return np.clip(img, 0.0, None), voxel_sizes_zyx(affine)


def brain_mask(
    image: ArrayLike, affine: ArrayLike, tuning: MaskTuning = EPI_TUNING
) -> NDArray[np.bool_]:
    """Brain mask by bias correction, Otsu threshold and morphology in mm (module docstring).

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Mean EPI or T1w volume; finite, non-negative (negatives are clipped to 0).
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.
    tuning : MaskTuning
        Pipeline parameters (:data:`EPI_TUNING`, :data:`T1_TUNING` or your own).

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        One 6-connected component with holes filled.
    """
    full, sizes = _validate(image, affine)
    full_head = _head_mask(full)
    if not full_head.any():
        raise ValueError("no head found: the image has no contrast between background and head")
    box = _bounding_box(full_head)
    img, head = full[box], full_head[box]
    brain = _erode(head, tuning.core_mm, sizes)
    if brain.sum() < max(100, 0.05 * head.sum()):  # tiny head: fit over all of it
        brain = head
    corrected = img
    for _ in range(max(1, tuning.bias_iterations)):
        level = np.median(corrected[brain])
        fit = brain & (corrected > 0.5 * level) & (corrected < 2.0 * level)
        corrected = img / polynomial_bias(img, affine, fit, tuning.poly_degree)
        brain = _threshold_and_clean(corrected, head, brain, sizes, tuning)
    out = np.zeros(full.shape, dtype=bool)
    out[box] = brain
    return out


def _bounding_box(mask: NDArray[np.bool_], margin: int = 1) -> tuple[slice, ...]:
    """Slices of the mask's bounding box grown by ``margin`` voxels (within the array)."""
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(present[0] - margin, 0), present[-1] + margin + 1))
    return tuple(box)


def _threshold_and_clean(
    corrected: NDArray[np.float64],
    head: NDArray[np.bool_],
    previous: NDArray[np.bool_],
    sizes: NDArray,
    tuning: MaskTuning,
) -> NDArray[np.bool_]:
    """Threshold the bias-corrected head relative to the brain level, then morphology."""
    level = np.median(corrected[previous])
    lo, hi = tuning.threshold_range
    clipped = np.clip(corrected[head] / level, 0.0, 2.0)
    cut = float(np.clip(otsu_threshold(clipped), lo, hi)) * level
    candidate = head & (corrected > cut)
    core = _largest_component(_erode(candidate, tuning.erode_mm, sizes))
    brain = _dilate(core, tuning.erode_mm, sizes) & candidate
    brain = _close(brain, tuning.close_mm, sizes)
    return _largest_component(_fill_holes(brain))


def epi_brain_mask(mean_epi: ArrayLike, affine: ArrayLike) -> NDArray[np.bool_]:
    """Brain mask of a mean EPI, robust to strong smooth bias fields.

    Head by Otsu on log intensity; degree-2 polynomial bias fitted in log space over the brain
    and divided out (two rounds); Otsu threshold on the corrected head (clamped to 25-60 % of
    the brain level); erosion by 4 mm, largest connected component, dilation back, closing by
    6 mm, holes filled slice-wise and in 3-D, largest component.

    Parameters
    ----------
    mean_epi : array_like, shape (z, y, x)
        Temporal mean of a (motion-corrected) run.
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        Brain mask, one connected component.
    """
    return brain_mask(mean_epi, affine, EPI_TUNING)


def t1_brain_mask(t1: ArrayLike, affine: ArrayLike) -> NDArray[np.bool_]:
    """Brain mask of a T1w image (same pipeline as :func:`epi_brain_mask`, T1w tuning).

    Erodes by 6 mm before taking the largest component (bright scalp fat lies a few mm from the
    brain) and closes by 10 mm (dark sulcal CSF); ventricles are filled as holes.

    Parameters
    ----------
    t1 : array_like, shape (z, y, x)
        T1-weighted volume (WM > GM > CSF).
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
        Brain mask, one connected component.
    """
    return brain_mask(t1, affine, T1_TUNING)
