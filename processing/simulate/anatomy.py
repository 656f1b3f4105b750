"""Subject anatomy: the nilearn MNI152 template warped into a random native space.

Transform convention (native -> MNI, all in world mm, RAS+)::

    y = phi(x) = A @ [x, 1] + u(x)

``A`` is a 4 x 4 affine (rigid + per-axis scales within 5 %) and ``u`` a smooth displacement
field (a few mm) written as a sum of low-frequency cosines of the native coordinate. Native images
are pulled from the template, ``I_native(x) = I_MNI(phi(x))``, so a point ``y`` in MNI space sits
at ``phi^-1(y)`` in the subject (found by fixed-point iteration).

The template is nilearn's MNI152NLin2009aSym at 2 mm (skull-stripped); a skull (dark in both
contrasts) and a scalp (bright in T1w, faint in fat-suppressed EPI) are added as shells of
3 mm and 5 mm around the brain mask. T1w contrast is the template's (WM > GM > CSF); the EPI
(T2*) contrast maps template intensity to CSF > GM > WM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import apply_affine, rotation_matrix

__all__ = [
    "SubjectTransform",
    "TemplateMaps",
    "centered_affine",
    "grid_points",
    "random_transform",
    "sample_maps",
    "smooth_field",
    "template_maps",
]

DEFORM_LO = np.array([-110.0, -150.0, -100.0])
DEFORM_HI = np.array([110.0, 120.0, 130.0])
N_FREQ = 3  # cosine orders 0, 1, 2 per axis
SKULL_MM, SCALP_MM = 3.0, 8.0
_CHUNK = 1 << 18


@dataclass(frozen=True)
class TemplateMaps:
    """MNI-space source maps (nilearn 2 mm grid), float32 arrays in (x, y, z) order."""

    affine: NDArray[np.float64]
    t1: NDArray[np.float32]
    epi: NDArray[np.float32]
    brain: NDArray[np.float32]


def _shell(dist_mm: NDArray[np.float64], inner: float, outer: float) -> NDArray[np.float64]:
    """Soft indicator of ``inner < dist <= outer`` (0.7 mm logistic edges)."""
    rise = 1.0 / (1.0 + np.exp(-(dist_mm - inner) / 0.7))
    fall = 1.0 / (1.0 + np.exp((dist_mm - outer) / 0.7))
    return rise * fall


@lru_cache(maxsize=1)
def template_maps() -> TemplateMaps:
    """T1w contrast, EPI contrast and soft brain mask in MNI space (cached).

    Returns
    -------
    TemplateMaps
        ``t1`` (0-1, WM ~0.8 > GM ~0.65 > CSF ~0.3, scalp 0.75), ``epi`` (CSF 1.0 > GM ~0.75 >
        WM ~0.62, scalp 0.1) and ``brain`` (0-1), each (99, 117, 95).
    """
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=2)
    mask_img = datasets.load_mni152_brain_mask(resolution=2)
    t1 = np.asarray(tpl.get_fdata(), dtype=np.float64)
    mask = np.asarray(mask_img.get_fdata()) > 0
    brain = np.clip(ndimage.gaussian_filter(mask.astype(np.float64), 0.6), 0.0, 1.0)
    dist = ndimage.distance_transform_edt(~mask, sampling=2.0)
    skull = _shell(dist, 0.0, SKULL_MM) * (dist > 0)
    scalp = _shell(dist, SKULL_MM, SCALP_MM)
    outside = 1.0 - brain
    t1_head = brain * t1 + outside * (0.08 * skull + 0.75 * scalp)
    epi_brain = np.interp(t1, [0.3, 0.66, 0.8, 1.0], [1.0, 0.75, 0.62, 0.6])
    epi_head = brain * epi_brain + outside * (0.02 * skull + 0.10 * scalp)
    head = (t1_head > 2e-3) | (brain > 2e-3)  # exactly zero signal outside the head
    return TemplateMaps(
        np.asarray(tpl.affine, dtype=np.float64),
        np.where(head, t1_head, 0.0).astype(np.float32),
        np.where(head, epi_head, 0.0).astype(np.float32),
        brain.astype(np.float32),
    )


def _cosines(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Cosine basis at native points: shape (27, n), orders 0-2 per axis (x slowest)."""
    xi = (points - DEFORM_LO) / (DEFORM_HI - DEFORM_LO)
    per_axis = np.cos(np.pi * np.arange(N_FREQ)[:, None, None] * xi.T[None])  # (3, 3, n)
    cx, cy, cz = per_axis[:, 0], per_axis[:, 1], per_axis[:, 2]
    return np.einsum("pn,qn,rn->pqrn", cx, cy, cz).reshape(N_FREQ**3, -1)


@dataclass(frozen=True)
class SubjectTransform:
    """Native -> MNI map ``phi(x) = A x + u(x)`` of one subject (see module docstring).

    Attributes
    ----------
    affine : ndarray, shape (4, 4)
        ``A``, native world mm -> MNI mm.
    coef : ndarray, shape (3, 27)
        Cosine coefficients (mm) of the displacement ``u``.
    """

    affine: NDArray[np.float64]
    coef: NDArray[np.float64]

    def displacement(self, points: ArrayLike) -> NDArray[np.float64]:
        """``u(x)`` in mm at native points, shape (..., 3) -> (..., 3)."""
        pts = np.asarray(points, dtype=np.float64)
        flat = pts.reshape(-1, 3)
        out = np.empty_like(flat)
        for start in range(0, len(flat), _CHUNK):
            part = flat[start : start + _CHUNK]
            out[start : start + _CHUNK] = (self.coef @ _cosines(part)).T
        return out.reshape(pts.shape)

    def to_mni(self, points: ArrayLike) -> NDArray[np.float64]:
        """``phi(x)``: native mm -> MNI mm, shape (..., 3)."""
        pts = np.asarray(points, dtype=np.float64)
        return apply_affine(self.affine, pts) + self.displacement(pts)

    def to_native(self, points: ArrayLike, tol_mm: float = 1e-5) -> NDArray[np.float64]:
        """``phi^-1(y)``: MNI mm -> native mm by fixed-point iteration, shape (..., 3)."""
        target = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        base = apply_affine(inv, target)
        native = base.copy()
        for _ in range(200):
            step = base - self.displacement(native) @ inv[:3, :3].T
            change = np.abs(step - native).max(initial=0.0)
            native = step
            if change < tol_mm:
                return native
        raise RuntimeError(f"inverse warp did not converge (last change {change:.2e} mm)")


def random_transform(rng: np.random.Generator) -> SubjectTransform:
    """Draw a subject's native -> MNI transform.

    Rigid part: rotations N(0, 3 deg) clipped at 6 deg, translations N(0, 3 mm) clipped at 6 mm;
    per-axis scales exp(N(0, 0.025)) clipped to [0.95, 1.05]; ``A = [diag(s) R | t]``. The
    displacement has random cosine coefficients damped with frequency and scaled so that its
    largest magnitude over the head is 2-4 mm.

    Parameters
    ----------
    rng : numpy.random.Generator
        The subject's generator.

    Returns
    -------
    SubjectTransform
    """
    angles = np.clip(rng.normal(0.0, np.deg2rad(3.0), 3), -np.deg2rad(6), np.deg2rad(6))
    trans = np.clip(rng.normal(0.0, 3.0, 3), -6.0, 6.0)
    scales = np.clip(np.exp(rng.normal(0.0, 0.025, 3)), 0.95, 1.05)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scales) @ rotation_matrix(angles)
    affine[:3, 3] = trans
    orders = np.indices((N_FREQ,) * 3).reshape(3, -1).sum(axis=0)
    coef = rng.normal(0.0, 1.0, (3, N_FREQ**3)) / (1.0 + orders)
    coef[:, 0] = 0.0  # no constant term: translation belongs to A
    probe = np.stack(np.meshgrid(*(np.linspace(-80, 80, 9),) * 3, indexing="ij"), -1)
    probe = probe.reshape(-1, 3) + np.array([0.0, -20.0, 10.0])
    peak = np.linalg.norm(SubjectTransform(affine, coef).displacement(probe), axis=1).max()
    coef *= rng.uniform(2.0, 4.0) / peak
    return SubjectTransform(affine, coef)


def centered_affine(
    voxel_mm: float, shape: tuple[int, int, int], center_mm: ArrayLike
) -> NDArray[np.float64]:
    """RAS+ diagonal voxel -> mm affine whose grid centre is ``center_mm`` (rounded to 0.01 mm).

    Parameters
    ----------
    voxel_mm : float
        Isotropic voxel size (mm).
    shape : tuple of int
        Matrix (nx, ny, nz).
    center_mm : array_like, shape (3,)
        World position of the grid centre.

    Returns
    -------
    ndarray, shape (4, 4)
    """
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    half = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * voxel_mm
    affine[:3, 3] = np.round(np.asarray(center_mm, dtype=np.float64) - half, 2)
    return affine


def grid_points(affine: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """World coordinates (mm) of every voxel, shape (*shape[:3], 3)."""
    idx = np.indices(shape[:3], dtype=np.float64)
    return apply_affine(affine, np.moveaxis(idx, 0, -1))


def sample_maps(
    maps: list[NDArray[np.float32]], affine: ArrayLike, points_mm: NDArray[np.float64]
) -> list[NDArray[np.float32]]:
    """Trilinear samples of (x, y, z) maps at world points; 0 outside the map.

    Parameters
    ----------
    maps : list of ndarray, shape (nx, ny, nz)
        Maps on a common grid.
    affine : array_like, shape (4, 4)
        Voxel -> mm affine of that grid.
    points_mm : ndarray, shape (..., 3)
        Where to sample, in mm.

    Returns
    -------
    list of ndarray, shape (...)
        float32 samples, one per map.
    """
    vox = apply_affine(np.linalg.inv(affine), points_mm).reshape(-1, 3).T
    return [
        ndimage.map_coordinates(
            m, vox, order=1, mode="constant", cval=0.0, output=np.float32
        ).reshape(points_mm.shape[:-1])
        for m in maps
    ]


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int, int], max_order: int = 1
) -> NDArray[np.float32]:
    """A smooth random field over a grid, scaled to max |f| = 1 (zero-mean cosine sum).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the coefficients.
    shape : tuple of int
        Grid shape (nx, ny, nz).
    max_order : int
        Highest cosine order per axis (1 = half a period over the field of view).

    Returns
    -------
    ndarray, shape ``shape``, float32
    """
    orders = np.arange(max_order + 1)
    axes = [np.cos(np.pi * orders[:, None] * np.linspace(0, 1, n)[None]) for n in shape]
    coef = rng.normal(0.0, 1.0, (max_order + 1,) * 3)
    coef[0, 0, 0] = 0.0
    field = np.einsum("pqr,pi,qj,rk->ijk", coef, *axes, optimize=True)
    return (field / np.abs(field).max()).astype(np.float32)
