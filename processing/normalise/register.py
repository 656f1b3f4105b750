"""Registration kernels on numpy arrays, wrapping dipy (affine with mutual information, SyN).

dipy was chosen over ANTsPy after measuring both on this project's machine
(``benchmarks/bench_registration.py``, ``benchmarks/README.md``): more accurate on the
simulated subjects, 67 MB installed instead of 161 MB, imports in 1.5 s instead of 5 s, and
compatible with the project's numpy pin (antspyx 0.6.3 needs numpy < 2.4); ANTsPy was ~5x
faster, but dipy meets the 5-minute budget.

All images are ``(z, y, x)`` arrays with NIfTI affines (voxel ``(x, y, z)`` -> RAS+ mm); dipy
works on ``(x, y, z)`` arrays, so the kernels transpose on the way in and out. Every function
returns world-mm matrices and template-grid displacement fields in the conventions of
:mod:`processing.normalise.transforms`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.preprocess.smoothing import voxel_sizes_zyx

__all__ = [
    "AffineResult",
    "RegistrationSettings",
    "affine_register",
    "centre_of_mass_mm",
    "coarsen_to",
    "syn_register",
]

_DOF_STAGES = {
    3: ("translation",),
    6: ("translation", "rigid"),
    12: ("translation", "rigid", "affine"),
}


@dataclass(frozen=True)
class RegistrationSettings:
    """Optimiser settings (dipy); lengths in voxels of the finest level.

    Attributes
    ----------
    affine_iters : tuple of int
        Iterations per pyramid level (coarsest first) of each linear stage. The default skips
        the finest level (SyN refines there anyway); use e.g. (100, 50, 20) when the linear
        result is final (rigid EPI -> T1w).
    affine_factors : tuple of int
        Downsampling factor per level.
    affine_sigmas : tuple of float
        Gaussian smoothing (voxels) per level.
    mi_bins : int
        Histogram bins of the Mattes mutual information.
    mi_sampling : float or None
        Fraction of voxels sampled per iteration (None: all, deterministic).
    syn_iters : tuple of int
        SyN iterations per level (coarsest first).
    syn_metric : {"cc", "em", "pseudo-t1"}
        ``"cc"``: local cross-correlation (same contrast, e.g. T1w -> T1w template);
        ``"em"``: dipy's expectation-maximisation metric (different contrasts);
        ``"pseudo-t1"`` (only in :mod:`processing.normalise.normalise`): map the image's
        intensities to the template's after the affine, then ``"cc"`` (EPI -> T1w template).
    cc_radius : int
        Radius (voxels) of the local cross-correlation window.
    """

    affine_iters: tuple[int, ...] = (100, 50, 0)
    affine_factors: tuple[int, ...] = (4, 2, 1)
    affine_sigmas: tuple[float, ...] = (3.0, 1.0, 0.0)
    mi_bins: int = 32
    mi_sampling: float | None = None
    syn_iters: tuple[int, ...] = (40, 20, 10)
    syn_metric: str = "cc"
    cc_radius: int = 2


@dataclass(frozen=True)
class AffineResult:
    """Outcome of :func:`affine_register`.

    Attributes
    ----------
    moving_to_fixed : ndarray, shape (4, 4)
        Maps a point's moving-image world mm to its fixed-image world mm.
    mutual_information : float
        Final Mattes mutual information (nats, higher is better).
    """

    moving_to_fixed: NDArray[np.float64]
    mutual_information: float


def _xyz(volume: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(volume, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("image has non-finite values; replace NaN/inf before registering")
    return np.ascontiguousarray(arr.T)


def _affine(affine: ArrayLike) -> NDArray[np.float64]:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4 x 4 matrix, got shape {aff.shape}")
    return aff


def centre_of_mass_mm(image: ArrayLike, affine: ArrayLike) -> NDArray[np.float64]:
    """Intensity-weighted centre of a (z, y, x) image in world mm, shape (3,)."""
    arr = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    if arr.sum() <= 0:
        raise ValueError("image has no positive intensity: cannot register an empty image")
    zyx = np.array(ndimage.center_of_mass(arr))
    aff = _affine(affine)
    return aff[:3, :3] @ zyx[::-1] + aff[:3, 3]


def coarsen_to(
    image: ArrayLike, affine: ArrayLike, voxel_mm: float
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Block means of an image on a grid no finer than ``voxel_mm``, over the same world space.

    Along each axis whose voxel is at most half of ``voxel_mm``, ``k = floor(voxel_mm /
    voxel)`` neighbouring voxels are averaged (a box filter, then every ``k``-th sample); the
    new voxel centre is the block's centre, so world positions are kept exactly. Trailing voxels
    that do not fill a block are dropped. Used to register a fine image (a 1 mm T1w) against a
    coarse one (a 2-3 mm EPI): the fine grid adds nothing the coarse image resolves and costs
    ``k**3`` per iteration.

    Parameters
    ----------
    image : array_like, shape (z, y, x)
        Image.
    affine : array_like, shape (4, 4)
        Voxel ``(x, y, z)`` -> mm.
    voxel_mm : float
        Target voxel size (mm), e.g. the smallest voxel size of the other image.

    Returns
    -------
    image : ndarray, shape (z // kz, y // ky, x // kx), float32
        Block means (``image`` itself, as float32, when no axis is coarsened).
    affine : ndarray, shape (4, 4)
        Voxel -> mm of the coarse grid.
    """
    arr = np.asarray(image, dtype=np.float32)
    aff = _affine(affine)
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) volume, got shape {arr.shape}")
    if not voxel_mm > 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm}")
    k_zyx = np.maximum(1, np.floor(voxel_mm / voxel_sizes_zyx(aff) + 1e-6)).astype(int)
    if (k_zyx == 1).all():
        return arr, aff
    shape = tuple(int(n) // int(k) for n, k in zip(arr.shape, k_zyx, strict=True))
    if min(shape) == 0:
        raise ValueError(f"image of shape {arr.shape} is smaller than one {voxel_mm} mm voxel")
    blocks = arr[: shape[0] * k_zyx[0], : shape[1] * k_zyx[1], : shape[2] * k_zyx[2]]
    blocks = blocks.reshape(shape[0], k_zyx[0], shape[1], k_zyx[1], shape[2], k_zyx[2])
    coarse = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    k_xyz = k_zyx[::-1]
    out = aff.copy()
    out[:3, :3] = aff[:3, :3] * k_xyz
    out[:3, 3] = aff[:3, :3] @ ((k_xyz - 1) / 2.0) + aff[:3, 3]
    return coarse, out


def affine_register(
    fixed: ArrayLike,
    fixed_affine: ArrayLike,
    moving: ArrayLike,
    moving_affine: ArrayLike,
    *,
    dof: int = 12,
    init: ArrayLike | None = None,
    settings: RegistrationSettings | None = None,
) -> AffineResult:
    """Linear registration maximising Mattes mutual information (dipy), 3, 6 or 12 dof.

    Stages run in turn (translation, rigid, affine up to ``dof``), each a coarse-to-fine
    pyramid started from the previous stage's result.

    Parameters
    ----------
    fixed, moving : array_like, shape (z, y, x)
        Images (any contrasts; zero outside the head or brain helps). Grids may differ.
    fixed_affine, moving_affine : array_like, shape (4, 4)
        Voxel ``(x, y, z)`` -> RAS+ mm affines.
    dof : {3, 6, 12}
        Degrees of freedom: translation, rigid, full affine.
    init : array_like, shape (4, 4), optional
        Starting ``moving_to_fixed`` matrix; by default a translation aligning the intensity
        centres of mass.
    settings : RegistrationSettings, optional

    Returns
    -------
    AffineResult
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    if dof not in _DOF_STAGES:
        raise ValueError(f"dof must be 3, 6 or 12, got {dof}")
    cfg = settings or RegistrationSettings()
    f_aff, m_aff = _affine(fixed_affine), _affine(moving_affine)
    static, mov = _xyz(fixed), _xyz(moving)
    if init is None:
        start = np.eye(4)  # dipy's affine maps fixed points to moving points
        start[:3, 3] = centre_of_mass_mm(moving, m_aff) - centre_of_mass_mm(fixed, f_aff)
    else:
        start = np.linalg.inv(_affine(init))
    metric = MutualInformationMetric(nbins=cfg.mi_bins, sampling_proportion=cfg.mi_sampling)
    reg = AffineRegistration(
        metric=metric,
        level_iters=list(cfg.affine_iters),
        sigmas=list(cfg.affine_sigmas),
        factors=list(cfg.affine_factors),
        verbosity=0,
    )
    stages = {
        "translation": TranslationTransform3D,
        "rigid": RigidTransform3D,
        "affine": AffineTransform3D,
    }
    logging.getLogger("dipy").setLevel(logging.WARNING)
    for name in _DOF_STAGES[dof]:
        amap, _, fopt = reg.optimize(
            static,
            mov,
            stages[name](),
            None,
            static_grid2world=f_aff,
            moving_grid2world=m_aff,
            starting_affine=start,
            ret_metric=True,
        )
        start = np.asarray(amap.affine, dtype=np.float64)
    return AffineResult(np.linalg.inv(start), float(-fopt))


def syn_register(
    fixed: ArrayLike,
    fixed_affine: ArrayLike,
    moving: ArrayLike,
    moving_affine: ArrayLike,
    moving_to_fixed: ArrayLike,
    *,
    settings: RegistrationSettings | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Symmetric diffeomorphic (SyN) registration after an affine (dipy).

    Parameters
    ----------
    fixed : array_like, shape (z, y, x)
        The template image; the fields live on its grid.
    fixed_affine : array_like, shape (4, 4)
        Template voxel ``(x, y, z)`` -> mm.
    moving : array_like, shape (z, y, x)
        The subject image (brain-extracted for T1w).
    moving_affine : array_like, shape (4, 4)
        Subject voxel ``(x, y, z)`` -> mm.
    moving_to_fixed : array_like, shape (4, 4)
        The affine from :func:`affine_register` (``A``: native mm -> template mm).
    settings : RegistrationSettings, optional
        ``syn_iters``, ``syn_metric`` (``"cc"`` same contrast, ``"em"`` different), ``cc_radius``.

    Returns
    -------
    warp : ndarray, shape (z, y, x, 3), float32
        ``w`` (RAS mm) on the template grid: ``native = inv(A) @ (y + w(y))``.
    inverse_warp : ndarray, shape (z, y, x, 3), float32
        ``w_inv``: ``template = z + w_inv(z)`` with ``z = A @ native``.
    """
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric, EMMetric

    cfg = settings or RegistrationSettings()
    f_aff, m_aff = _affine(fixed_affine), _affine(moving_affine)
    static, mov = _xyz(fixed), _xyz(moving)
    if cfg.syn_metric == "cc":
        metric = CCMetric(3, sigma_diff=2.0, radius=cfg.cc_radius)
    elif cfg.syn_metric == "em":
        metric = EMMetric(3, smooth=1.0, inner_iter=5, q_levels=256)
    else:
        raise ValueError(f"syn_metric must be 'cc' or 'em', got {cfg.syn_metric!r}")
    logging.getLogger("dipy").setLevel(logging.WARNING)
    syn = SymmetricDiffeomorphicRegistration(metric, level_iters=list(cfg.syn_iters))
    prealign = np.linalg.inv(_affine(moving_to_fixed))  # template points -> native points
    mapping = syn.optimize(
        static, mov, static_grid2world=f_aff, moving_grid2world=m_aff, prealign=prealign
    )
    # dipy returns the map with is_inverse=True; get_forward_field() is the one that pulls the
    # moving image onto the static (template) grid: moving = prealign @ (y + field(y)).
    forward, backward = mapping.get_forward_field(), mapping.get_backward_field()
    if not np.allclose(mapping.disp_grid2world, f_aff) or forward.shape[:3] != static.shape:
        raise RuntimeError("dipy returned displacement fields off the template grid")
    warp = np.ascontiguousarray(np.transpose(forward, (2, 1, 0, 3)), dtype=np.float32)
    inverse = np.ascontiguousarray(np.transpose(backward, (2, 1, 0, 3)), dtype=np.float32)
    return warp, inverse
