"""T1w (or EPI) brain extraction from the registered template's brain mask.

The first, template-free mask comes from :func:`processing.preprocess.masks.t1_brain_mask`
(Otsu on log intensity, polynomial bias removal, morphology in mm: robust to a smooth bias
field). After the image is registered to the template (affine + SyN), the template's brain mask
is pulled back onto the native grid through the whole transform, which follows the brain's own
shape (no fixed erosion/closing radii), and then refined by intensity: in a band of
``band_mm`` inside its edge, voxels darker than ``dark_fraction`` of the bias-corrected brain
median (air, skull) are dropped, and the largest connected component, holes filled, is kept.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.normalise.resample import resample_to_native
from processing.normalise.template import Template
from processing.normalise.transforms import TemplateTransform
from processing.preprocess.masks import polynomial_bias
from processing.preprocess.smoothing import voxel_sizes_zyx

__all__ = ["bias_corrected", "brain_volume_ml", "template_brain_mask"]


def brain_volume_ml(mask: ArrayLike, affine: ArrayLike) -> float:
    """Volume of a (z, y, x) mask in ml."""
    det = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))
    return float(np.count_nonzero(mask)) * det / 1000.0


def bias_corrected(image: ArrayLike, affine: ArrayLike, mask: ArrayLike) -> NDArray[np.float32]:
    """Divide out a smooth multiplicative bias fitted inside ``mask``; brain median becomes 1.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        T1w or EPI intensities (>= 0).
    affine : array_like, shape (4, 4)
        Voxel -> mm.
    mask : array_like of bool, shape (z, y, x)
        Brain estimate for the fit (voxels within 0.5-2x its median are used).

    Returns
    -------
    ndarray, shape (z, y, x), float32
    """
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    inside = np.asarray(mask, dtype=bool)
    level = np.median(img[inside])
    fit = inside & (img > 0.5 * level) & (img < 2.0 * level)
    corrected = img / polynomial_bias(img, affine, fit, degree=2)
    return (corrected / np.median(corrected[inside])).astype(np.float32)


def template_brain_mask(
    image: ArrayLike,
    affine: ArrayLike,
    transform: TemplateTransform,
    template: Template,
    *,
    band_mm: float = 3.0,
    dark_fraction: float = 0.2,
) -> NDArray[np.bool_]:
    """Native brain mask: the template mask pulled back through ``transform``, refined.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Bias-corrected native image (brain median ~1, e.g. from :func:`bias_corrected`).
    affine : array_like, shape (4, 4)
        Native voxel -> mm.
    transform : TemplateTransform
        The registration of this image to ``template``.
    template : Template
        The template (its ``mask`` is pulled back).
    band_mm : float
        Width of the edge band where dark voxels are removed (mm).
    dark_fraction : float
        Intensity (relative to the brain median) below which a band voxel is not brain.

    Returns
    -------
    ndarray of bool, shape (z, y, x)
    """
    img = np.asarray(image, dtype=np.float32)
    mask = resample_to_native(template.mask, transform, affine, img.shape, kind="mask")
    if not mask.any():
        return mask
    depth = ndimage.distance_transform_edt(mask, sampling=voxel_sizes_zyx(affine))
    mask &= ~((depth <= band_mm) & (img < dark_fraction))
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)
