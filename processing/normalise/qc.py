"""Registration quality: similarity numbers, an automatic "failed" flag, a left-right check, PNGs.

* :func:`dice` and :func:`normalised_mutual_information` (Studholme's
  ``(H(A) + H(B)) / H(A, B)``, 1 = independent, 2 = identical up to a one-to-one intensity
  map; contrast-agnostic, so it serves T1w and EPI alike).
* :func:`registration_qc`: a subject's warped brain mask (drawn from *its own image*, not from
  the template, so it can disagree) against the template mask, and NMI of the warped image
  with the template, give :class:`RegistrationQC` with ``failed`` set when Dice is below
  ``min_dice`` (default 0.85), the brain volume is implausible, or NMI is below ``min_nmi``.
* :func:`lr_flip_check`: the template (MNI152NLin2009aSym) is left-right *symmetric*, so a
  T1w whose left and right were swapped registers to it as well as a correct one; the swap
  shows only against another image of the same head. The check registers the mean EPI rigidly
  to the T1w and to its mirror image and flags the T1w when the mirror fits clearly better.
* :func:`save_registration_overlay_png`: template slices with the registered image's edges
  (its outline and its main tissue boundary) drawn on top in red (Agg backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.figures.montage import Outline, save_slice_montage
from processing.preprocess.masks import otsu_threshold

__all__ = [
    "FlipCheck",
    "RegistrationQC",
    "dice",
    "edge_levels",
    "lr_flip_check",
    "normalised_mutual_information",
    "registration_qc",
    "save_registration_overlay_png",
]

MIN_DICE = 0.85
MIN_NMI = 1.05
BRAIN_ML_RANGE = (700.0, 2500.0)
SCALE_RANGE = (0.75, 1.35)


def dice(a: ArrayLike, b: ArrayLike) -> float:
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of two boolean masks (0 when both are empty)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"masks differ in shape: {x.shape} vs {y.shape}")
    total = int(x.sum()) + int(y.sum())
    return 0.0 if total == 0 else 2.0 * float(np.logical_and(x, y).sum()) / total


def normalised_mutual_information(
    a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None, bins: int = 32
) -> float:
    """Studholme's normalised mutual information ``(H(A) + H(B)) / H(A, B)`` in [1, 2].

    Parameters
    ----------
    a, b : array_like, same shape
        Images on one grid.
    mask : array_like of bool, optional
        Voxels to use (default: where either image is non-zero).
    bins : int
        Histogram bins per image (between the 0.5th and 99.5th percentiles).

    Returns
    -------
    float
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = (x != 0) | (y != 0) if mask is None else np.asarray(mask, dtype=bool)
    keep = keep & np.isfinite(x) & np.isfinite(y)
    if keep.sum() < bins * 4:
        return 1.0
    xv, yv = x[keep], y[keep]
    ranges = [np.percentile(v, [0.5, 99.5]) for v in (xv, yv)]
    ranges = [(lo, hi if hi > lo else lo + 1.0) for lo, hi in ranges]
    joint, _, _ = np.histogram2d(xv, yv, bins=bins, range=ranges)
    p = joint / joint.sum()

    def entropy(q: NDArray[np.float64]) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))) / max(entropy(p), 1e-12)


@dataclass(frozen=True)
class RegistrationQC:
    """Per-subject registration quality (goes into the manifest record).

    Attributes
    ----------
    dice : float
        Dice of the subject's own brain mask, warped to the template, with the template mask.
    nmi : float
        Normalised mutual information of the warped image with the template (within the union
        of both brain masks).
    brain_ml : float
        Volume of the subject's brain mask in ml.
    failed : bool
        True when any check below failed; such a registration must not be used silently.
    reasons : tuple of str
        Human-readable reasons for ``failed``.
    scales : tuple of float
        Singular values of the linear part of the native -> template affine (head size ratio
        per principal axis; NaN when not given).
    """

    dice: float
    nmi: float
    brain_ml: float
    failed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    scales: tuple[float, float, float] = (float("nan"),) * 3

    def as_dict(self) -> dict:
        """JSON-ready dict (for the manifest and sidecars)."""
        return {
            "Dice": round(self.dice, 4),
            "NMI": round(self.nmi, 4),
            "BrainVolumeMl": round(self.brain_ml, 1),
            "Failed": self.failed,
            "Reasons": list(self.reasons),
            "AffineScales": [round(v, 4) for v in self.scales],
        }


def registration_qc(
    warped_image: ArrayLike,
    warped_mask: ArrayLike,
    template_image: ArrayLike,
    template_mask: ArrayLike,
    brain_ml: float,
    *,
    field_of_view: ArrayLike | None = None,
    affine: ArrayLike | None = None,
    min_dice: float = MIN_DICE,
    min_nmi: float = MIN_NMI,
    brain_ml_range: tuple[float, float] | None = BRAIN_ML_RANGE,
    scale_range: tuple[float, float] = SCALE_RANGE,
) -> RegistrationQC:
    """Similarity numbers and the automatic failed-registration flag.

    Parameters
    ----------
    warped_image : array_like, shape (z, y, x)
        The subject image resampled onto the template grid.
    warped_mask : array_like of bool, shape (z, y, x)
        The subject's brain mask (from its own intensities) resampled onto the template grid.
    template_image, template_mask : array_like, shape (z, y, x)
        The template and its brain mask.
    brain_ml : float
        The subject's native brain-mask volume (ml).
    field_of_view : array_like of bool, shape (z, y, x), optional
        Template voxels inside the subject image's field of view (a partial-coverage EPI
        cannot cover the whole template brain); Dice and NMI are computed within it.
    affine : array_like, shape (4, 4), optional
        The native -> template affine; its scale factors must lie within ``scale_range`` (a
        registration that stretched a partial or empty image over the template fails here).
    min_dice, min_nmi : float
        Thresholds below which the registration is flagged failed.
    brain_ml_range : tuple of float or None
        Plausible adult brain-mask volumes (ml); None skips the check (partial coverage).
    scale_range : tuple of float
        Plausible native -> template scale factors.

    Returns
    -------
    RegistrationQC
    """
    tmask = np.asarray(template_mask, dtype=bool)
    wmask = np.asarray(warped_mask, dtype=bool)
    if field_of_view is not None:
        fov = np.asarray(field_of_view, dtype=bool)
        tmask, wmask = tmask & fov, wmask & fov
    overlap = dice(wmask, tmask)
    nmi = normalised_mutual_information(warped_image, template_image, mask=tmask | wmask)
    reasons = []
    if not np.isfinite(overlap) or overlap < min_dice:
        reasons.append(f"brain-mask Dice with the template {overlap:.3f} < {min_dice}")
    if not np.isfinite(nmi) or nmi < min_nmi:
        reasons.append(f"normalised mutual information with the template {nmi:.3f} < {min_nmi}")
    if brain_ml_range is not None and not brain_ml_range[0] <= brain_ml <= brain_ml_range[1]:
        lo, hi = brain_ml_range
        reasons.append(f"brain volume {brain_ml:.0f} ml outside the plausible {lo:.0f}-{hi:.0f} ml")
    scales = (float("nan"),) * 3
    if affine is not None:
        sv = np.linalg.svd(np.asarray(affine, dtype=np.float64)[:3, :3], compute_uv=False)
        scales = tuple(float(v) for v in sv)
        if sv.min() < scale_range[0] or sv.max() > scale_range[1]:
            reasons.append(
                f"affine scales {sv.min():.2f}-{sv.max():.2f} outside the plausible "
                f"{scale_range[0]}-{scale_range[1]}"
            )
    return RegistrationQC(
        overlap,
        nmi,
        float(brain_ml),
        bool(reasons),
        tuple(reasons),
        scales,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class FlipCheck:
    """Outcome of :func:`lr_flip_check`.

    Attributes
    ----------
    flipped : bool
        True when the mirrored T1w matches the EPI clearly better than the T1w as given.
    nmi_as_is, nmi_mirrored : float
        NMI of the rigidly registered EPI with the T1w and with its mirror image (brain only).
    """

    flipped: bool
    nmi_as_is: float
    nmi_mirrored: float


def _mirror_lr(t1: NDArray, affine: NDArray[np.float64]) -> NDArray:
    """Mirror the array along the voxel axis closest to world x (left-right)."""
    axis_xyz = int(np.argmax(np.abs(affine[0, :3])))
    return np.flip(t1, axis=2 - axis_xyz)


def lr_flip_check(
    mean_epi: ArrayLike,
    epi_affine: ArrayLike,
    t1: ArrayLike,
    t1_affine: ArrayLike,
    t1_mask: ArrayLike,
    *,
    margin: float = 0.005,
) -> FlipCheck:
    """Detect a T1w whose left and right are swapped relative to the EPI of the same head.

    The EPI is registered rigidly (MI) to the T1w brain and to its mirror image, and the NMI of
    each fit is compared. A T1w finer than the EPI is block-averaged to the EPI's voxel size
    first (:func:`~processing.normalise.register.coarsen_to`), as in
    :func:`~processing.normalise.normalise.register_epi_to_t1`.

    Parameters
    ----------
    mean_epi : array_like, shape (z, y, x)
        Mean EPI (any contrast).
    epi_affine : array_like, shape (4, 4)
        EPI voxel -> mm.
    t1 : array_like, shape (z, y, x)
        T1w image.
    t1_affine : array_like, shape (4, 4)
        T1w voxel -> mm.
    t1_mask : array_like of bool, shape (z, y, x)
        T1w brain mask (intensity-based, e.g. :func:`processing.preprocess.masks.t1_brain_mask`;
        mirrored with the image).
    margin : float
        How much higher the mirror's NMI must be to flag (NMI units).

    Returns
    -------
    FlipCheck
    """
    from processing.normalise.register import RegistrationSettings, affine_register, coarsen_to
    from processing.normalise.resample import sample_at_points
    from processing.preprocess.smoothing import voxel_sizes_zyx

    epi_aff = np.asarray(epi_affine, dtype=np.float64)
    brain = np.asarray(t1, dtype=np.float32) * np.asarray(t1_mask, dtype=bool)
    brain, t1_aff = coarsen_to(brain, t1_affine, float(voxel_sizes_zyx(epi_aff).min()))
    epi = np.asarray(mean_epi, dtype=np.float32)
    fast = RegistrationSettings(affine_iters=(100, 50, 10), mi_sampling=None)
    idx = np.indices(brain.shape, dtype=np.float64)[::-1]
    t1_points = np.moveaxis(idx, 0, -1) @ t1_aff[:3, :3].T + t1_aff[:3, 3]
    scores = []
    for image in (brain, np.ascontiguousarray(_mirror_lr(brain, t1_aff))):
        fit = affine_register(image, t1_aff, epi, epi_aff, dof=6, settings=fast)
        to_epi = np.linalg.inv(fit.moving_to_fixed)
        warped = sample_at_points(epi, epi_aff, t1_points @ to_epi[:3, :3].T + to_epi[:3, 3])
        scores.append(normalised_mutual_information(image, warped, mask=image > 0))
    return FlipCheck(scores[1] > scores[0] + margin, scores[0], scores[1])


def edge_levels(image: ArrayLike, mask: ArrayLike | None = None) -> tuple[float, float]:
    """Contour levels that draw a registered image's edges.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Registered (brain) image, zero outside.
    mask : array_like of bool, optional
        Where its tissue is (default: non-zero voxels).

    Returns
    -------
    tuple of float
        The outline level (25 % of the median inside) and the main tissue boundary (Otsu's
        threshold inside: white/grey matter in a T1w, CSF/tissue in an EPI).
    """
    img = np.asarray(image, dtype=np.float32)
    inside = img > 0 if mask is None else np.asarray(mask, dtype=bool)
    values = img[inside]
    if values.size < 10:
        return (0.5, 0.5)
    outline = 0.25 * float(np.median(values))
    core = ndimage.binary_erosion(inside, iterations=2)  # no partial-volume edge voxels
    tissue = img[core & (img > outline)]
    return (outline, otsu_threshold(tissue) if tissue.size >= 10 else outline)


def save_registration_overlay_png(
    template: ArrayLike,
    registered: ArrayLike,
    path: str | Path,
    *,
    affine: ArrayLike | None = None,
    title: str = "",
    n_slices: int = 5,
    mask: ArrayLike | None = None,
) -> Path:
    """Template slices in grey with the registered image's edges in red (3 rows x n_slices).

    Parameters
    ----------
    template : array_like, shape (z, y, x)
        Template image (e.g. :attr:`Template.t1`).
    registered : array_like, shape (z, y, x)
        The subject's T1w or mean EPI resampled onto the template grid.
    path : str or Path
        Output PNG (parent folders created).
    affine : array_like, shape (4, 4), optional
        Template voxel -> mm (true proportions and mm labels).
    title : str
        Figure title (e.g. subject, source image and the QC numbers).
    n_slices : int
        Slices per orientation.
    mask : array_like of bool, optional
        The registered image's tissue (default: non-zero voxels), see :func:`edge_levels`.

    Returns
    -------
    Path
    """
    bg = np.asarray(template, dtype=np.float32)
    reg = np.asarray(registered, dtype=np.float32)
    if bg.ndim != 3 or reg.shape != bg.shape:
        raise ValueError(f"need two 3-D images on one grid, got {bg.shape} and {reg.shape}")
    smooth = ndimage.gaussian_filter(reg, 0.7)
    levels = edge_levels(reg, mask)
    outlines = [Outline(smooth, lv, "red", w) for lv, w in zip(levels, (1.0, 0.6), strict=True)]
    return save_slice_montage(
        bg, path, outlines=outlines, affine=affine, n_slices=n_slices, title=title
    )
