"""Rigid 6-parameter registration kernel (private): multi-resolution inverse-compositional
Gauss-Newton / Levenberg-Marquardt on a least-squares cost.

For a reference ``F`` and a volume ``V`` we look for the rigid world map ``M`` (reference world
mm -> volume world mm, :mod:`processing.geometry` conventions) minimising

    sum_x (a V(M x) + b - F(x))^2

over a set of reference-grid points ``x``, with the intensity gain ``a`` and offset ``b`` refitted
by least squares at every iteration. The inverse-compositional form (Baker & Matthews 2004)
linearises the *reference* side, ``F(M_d x) ~ F(x) + J d`` with ``J = grad F(x) . dM_d(x)/dd`` at
``d = 0``, so ``J`` and ``J'J`` are computed once per level and shared by every volume; each
iteration costs one trilinear interpolation of the volume. The update is ``M <- M inv(M_d)``.

Arrays are (z, y, x) in memory; voxel indices in the maths below are (i, j, k) = (x, y, z), the
order of the NIfTI affine. Levels are integer down-sampling factors: a level-``f`` image is the
block average of ``f`` x ``f`` x ``f`` voxels, smoothed by a small Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.geometry import rigid_matrix
from processing.preprocess._motion_qc import MotionInputError

COARSE_SIGMA = 0.5  # Gaussian sigma (level voxels) applied after block averaging, f > 1
ROT_RADIUS_MM = 50.0  # converts a rotation step (rad) to mm for the convergence test
NOISE_STEP_MM = 0.05  # a rejected step smaller than this ends the level


def _step_mm(step: NDArray[np.float64]) -> float:
    """Size of a parameter step in mm: translation norm + 50 mm x rotation norm."""
    return float(np.linalg.norm(step[:3]) + ROT_RADIUS_MM * np.linalg.norm(step[3:]))


@dataclass(frozen=True)
class RefLevel:
    """One pyramid level of the reference, with the precomputed Jacobian.

    Attributes
    ----------
    factor : int
        Down-sampling factor (voxels).
    sigma : float
        Gaussian sigma in level voxels applied after block averaging.
    affine : ndarray, shape (4, 4)
        Level voxel (i, j, k) -> world mm.
    shape : tuple of int
        Level image shape (z, y, x).
    points : ndarray, shape (4, n)
        Homogeneous level voxel indices (i, j, k, 1) of the sampled points.
    values : ndarray, shape (n,)
        Reference intensities at the points.
    jac : ndarray, shape (6, n)
        d F(M_d x) / d d at d = 0 (per mm and per radian), one row per parameter.
    hess : ndarray, shape (6, 6)
        ``jac @ jac.T``.
    """

    factor: int
    sigma: float
    affine: NDArray[np.float64]
    shape: tuple[int, int, int]
    points: NDArray[np.float64]
    values: NDArray[np.float64]
    jac: NDArray[np.float64]
    hess: NDArray[np.float64]


def level_image(volume: NDArray, factor: int, sigma: float) -> NDArray[np.float32]:
    """Block-average a (z, y, x) volume by ``factor`` and smooth it (sigma in level voxels)."""
    vol = np.asarray(volume, dtype=np.float32)
    if factor > 1:
        for axis in range(3):  # strided sums: much faster than reshape(...).mean(axis=(1, 3, 5))
            keep = vol.shape[axis] // factor * factor
            index = (slice(None),) * axis
            total = vol[(*index, slice(0, keep, factor))].copy()
            for start in range(1, factor):
                total += vol[(*index, slice(start, keep, factor))]
            vol = total
        vol = vol * np.float32(1.0 / factor**3)
    if sigma > 0:
        vol = ndimage.gaussian_filter(vol, sigma, truncate=3.0, mode="nearest")
    return vol


def level_affine(affine: NDArray[np.float64], factor: int) -> NDArray[np.float64]:
    """Voxel -> mm affine of the level-``factor`` grid (block centres)."""
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return affine @ scale


def _select(score: NDArray, candidates: NDArray[np.bool_], max_points: int) -> NDArray[np.intp]:
    """Flat indices of the points used: all candidates, or the half with the strongest gradient
    plus an even spread of the rest when there are more than ``max_points``."""
    flat = np.flatnonzero(candidates)
    if flat.size <= max_points:
        return flat
    strong = max_points // 2
    order = np.argsort(score.ravel()[flat])[::-1]
    rest = order[strong:]
    spread = rest[np.linspace(0, rest.size - 1, max_points - strong).astype(np.intp)]
    return np.sort(flat[np.concatenate([order[:strong], spread])])


def _check_contrast(jac: NDArray[np.float64], factor: int) -> None:
    """Raise when the masked reference cannot pin down all 6 parameters (flat or tiny image)."""
    scaled = jac / (np.linalg.norm(jac, axis=1, keepdims=True) + 1e-300)
    if np.linalg.svd(scaled, compute_uv=False)[-1] < 1e-6:
        raise MotionInputError(
            f"the reference has too little contrast inside the mask at level {factor} to "
            "estimate 6 rigid parameters; check the reference image and the mask"
        )


def build_reference(
    reference: NDArray,
    affine: NDArray[np.float64],
    mask: NDArray[np.bool_],
    center_mm: NDArray[np.float64],
    levels: tuple[int, ...],
    fine_sigma: float,
    max_points: int,
) -> list[RefLevel]:
    """Pyramid of the reference, coarse to fine, with points and Jacobians per level."""
    out = []
    for factor in levels:
        sigma = COARSE_SIGMA if factor > 1 else fine_sigma
        img = level_image(reference, factor, sigma).astype(np.float64)
        lev_mask = level_image(mask, factor, 0.0) > 0
        lev_mask[[0, -1]] = lev_mask[:, [0, -1]] = lev_mask[:, :, [0, -1]] = False
        aff = level_affine(affine, factor)
        grad_idx = np.stack(np.gradient(img)[::-1], axis=-1)  # (z, y, x, 3) as d/di, d/dj, d/dk
        grad_world = grad_idx @ np.linalg.inv(aff[:3, :3])
        score = np.linalg.norm(grad_world, axis=-1)
        flat = _select(score, lev_mask, max_points)
        kji = np.unravel_index(flat, img.shape)
        points = np.vstack([kji[2], kji[1], kji[0], np.ones(flat.size)]).astype(np.float64)
        grad = grad_world.reshape(-1, 3)[flat]
        offset = (aff @ points)[:3].T - center_mm
        jac = np.ascontiguousarray(np.hstack([grad, np.cross(offset, grad)]).T)
        _check_contrast(jac, factor)
        out.append(
            RefLevel(
                factor=factor,
                sigma=sigma,
                affine=aff,
                shape=img.shape,
                points=points,
                values=img.ravel()[flat],
                jac=jac,
                hess=jac @ jac.T,
            )
        )
    return out


def _evaluate(level: RefLevel, image: NDArray[np.float32], matrix: NDArray[np.float64]):
    """Residuals at ``matrix``: (cost, gradient J'r, Hessian J'J) over points inside the image.

    Inner products use ``einsum`` rather than BLAS: at these sizes multi-threaded BLAS calls cost
    milliseconds of thread hand-off on a busy machine.
    """
    vox = np.linalg.inv(level.affine) @ matrix @ level.affine
    coords = np.einsum("ij,jn->in", vox[:3], level.points)  # (3, n) as i, j, k
    upper = np.array(level.shape[::-1], dtype=np.float64)[:, None] - 1.0
    inside = np.all((coords >= 0.0) & (coords <= upper), axis=0)
    warped = ndimage.map_coordinates(image, coords[::-1], order=1, mode="nearest")
    jac, hess, ref = level.jac, level.hess, level.values
    if not inside.all():
        if inside.sum() < 12:
            return np.inf, np.zeros(6), np.eye(6)
        jac, ref, warped = jac[:, inside], ref[inside], warped[inside]
        hess = np.einsum("in,jn->ij", jac, jac)
    w_c = warped - warped.mean(dtype=np.float64)
    var = np.einsum("n,n->", w_c, w_c)
    gain = np.einsum("n,n->", w_c, ref - ref.mean()) / var if var > 0 else 0.0
    resid = gain * w_c + (ref.mean() - ref)
    cost = np.einsum("n,n->", resid, resid) / resid.size
    return float(cost), np.einsum("in,n->i", jac, resid), hess


def register_level(
    level: RefLevel,
    image: NDArray[np.float32],
    matrix: NDArray[np.float64],
    center_mm: NDArray[np.float64],
    max_iter: int,
    tol_mm: float,
) -> NDArray[np.float64]:
    """Levenberg-Marquardt-damped inverse-compositional Gauss-Newton at one level.

    Returns the refined (4, 4) world map; stops when a step moves points by less than
    ``tol_mm`` (translation norm + 50 mm x rotation norm) or after ``max_iter`` evaluations.
    """
    best_cost, best_matrix, grad, hess = np.inf, matrix, np.zeros(6), np.eye(6)
    damping, size = 0.0, np.inf
    for _ in range(max_iter):
        cost, new_grad, new_hess = _evaluate(level, image, matrix)
        if cost <= best_cost:
            best_cost, best_matrix, grad, hess = cost, matrix, new_grad, new_hess
            damping *= 0.1
        elif size < NOISE_STEP_MM:
            return best_matrix  # a tiny step that does not lower the cost: at the noise floor
        else:
            damping = max(damping * 10.0, 1e-3)
        step = np.linalg.solve(hess + damping * np.diag(np.diag(hess)), grad)
        matrix = best_matrix @ np.linalg.inv(rigid_matrix(step, center_mm))
        size = _step_mm(step)
        if size < tol_mm:
            return matrix
    return best_matrix


def register_volume(
    volume: NDArray,
    ref_levels: list[RefLevel],
    start: NDArray[np.float64],
    center_mm: NDArray[np.float64],
    max_iter: int,
    tol_mm: float,
) -> NDArray[np.float64]:
    """Register one (z, y, x) volume to the reference pyramid, coarse to fine.

    Returns the (4, 4) world map reference -> volume, starting from ``start``.
    """
    matrix = start
    for level in ref_levels:
        image = level_image(volume, level.factor, level.sigma)
        matrix = register_level(level, image, matrix, center_mm, max_iter, tol_mm)
    return matrix
