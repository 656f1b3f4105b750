"""One subject's native space: transform, T1w image, EPI baseline, masks and scanner fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.simulate.anatomy import (
    SubjectTransform,
    centered_affine,
    grid_points,
    random_transform,
    sample_maps,
    smooth_field,
    template_maps,
)
from processing.simulate.effects import Blob, native_blobs
from processing.simulate.specs import T1_GRID, SiteSpec, stream

__all__ = ["SubjectSpace", "build_subject"]

EPI_SCALE = 1300.0  # EPI baseline of CSF at site 1 (GM ~975, WM ~800 before bias)
T1_SCALE = 1000.0
T1_NOISE = 12.0
NOISE_FLOOR = 4.0  # thermal noise SD at site 1
NOISE_FRACTION = 0.016  # physiological noise SD as a fraction of the signal
T1_CENTER_MNI = (0.0, -20.0, 10.0)
BOLD_CENTER_MNI = (0.0, -18.0, 15.0)  # the EPI slab clips the lower cerebellum


@dataclass(frozen=True)
class SubjectSpace:
    """A subject's native space and static images.

    (x, y, z) arrays: ``t1_raw`` (int16), ``t1_mask`` and ``bold_mask`` (uint8).
    (z, y, x) float32 arrays on the BOLD grid: ``baseline``, ``gain``, ``gain_drift1``,
    ``gain_drift2``, ``sigma`` (see :mod:`processing.simulate.bold`). ``blobs`` are the unit ROI
    blobs on the BOLD grid, ``roi_native_mm`` the ROI centres in native mm.
    """

    transform: SubjectTransform
    t1_affine: NDArray[np.float64]
    t1_raw: NDArray[np.int16]
    t1_mask: NDArray[np.uint8]
    bold_affine: NDArray[np.float64]
    bold_shape: tuple[int, int, int]
    bold_mask: NDArray[np.uint8]
    baseline: NDArray[np.float32]
    gain: NDArray[np.float32]
    gain_drift1: NDArray[np.float32]
    gain_drift2: NDArray[np.float32]
    sigma: NDArray[np.float32]
    blobs: list[Blob]
    roi_native_mm: dict[str, NDArray[np.float64]]


def _zyx(volume: NDArray) -> NDArray:
    return np.ascontiguousarray(volume.T)


def _t1(seed: int, index: int, transform: SubjectTransform, size: str):
    """Native T1w (int16, WM > GM > CSF, bias field, Rician-like noise) and brain mask."""
    maps = template_maps()
    voxel, shape = T1_GRID[size]
    affine = centered_affine(voxel, shape, transform.to_native(np.array(T1_CENTER_MNI)))
    t1, brain = sample_maps(
        [maps.t1, maps.brain], maps.affine, transform.to_mni(grid_points(affine, shape))
    )
    rng = stream(seed, "t1", index)
    bias = np.exp(0.15 * smooth_field(rng, shape))
    signal = T1_SCALE * t1 * bias
    noisy = np.hypot(signal + rng.normal(0, T1_NOISE, shape), rng.normal(0, T1_NOISE, shape))
    raw = np.clip(np.rint(noisy), 0, 32767).astype(np.int16)
    return affine, raw, (brain > 0.5).astype(np.uint8)


def build_subject(seed: int, index: int, site: SiteSpec, size: str) -> SubjectSpace:
    """Draw and build a subject's native space.

    Parameters
    ----------
    seed : int
        Study seed.
    index : int
        0-based subject index.
    site : SiteSpec
        The subject's site (BOLD grid, intensity, noise level).
    size : {"full", "small"}
        Grid sizes.

    Returns
    -------
    SubjectSpace
    """
    transform = random_transform(stream(seed, "transform", index))
    t1_affine, t1_raw, t1_mask = _t1(seed, index, transform, size)
    maps = template_maps()
    voxel, shape = site.grid(size)
    affine = centered_affine(voxel, shape, transform.to_native(np.array(BOLD_CENTER_MNI)))
    epi, brain = sample_maps(
        [maps.epi, maps.brain], maps.affine, transform.to_mni(grid_points(affine, shape))
    )
    baseline = (EPI_SCALE * site.intensity) * epi
    rng = stream(seed, "scanner-fields", index)
    gain = np.exp(0.12 * smooth_field(rng, shape)).astype(np.float32)
    drift1 = gain * (1.0 + 0.5 * smooth_field(rng, shape))
    drift2 = gain * (1.0 + 0.5 * smooth_field(rng, shape))
    floor = NOISE_FLOOR * site.intensity
    sigma = (site.noise * (floor + NOISE_FRACTION * gain * baseline)).astype(np.float32)
    blobs, centers = native_blobs(transform, affine, shape)
    return SubjectSpace(
        transform=transform,
        t1_affine=t1_affine,
        t1_raw=t1_raw,
        t1_mask=t1_mask,
        bold_affine=affine,
        bold_shape=shape,
        bold_mask=(brain > 0.5).astype(np.uint8),
        baseline=_zyx(baseline.astype(np.float32)),
        gain=_zyx(gain),
        gain_drift1=_zyx(drift1.astype(np.float32)),
        gain_drift2=_zyx(drift2.astype(np.float32)),
        sigma=_zyx(sigma),
        blobs=blobs,
        roi_native_mm=centers,
    )
