"""Between-run registration of a session's runs before fixed effects.

Realignment puts every volume of a run on that run's own reference; between runs the head can
move, so the runs of a session are only on a common grid after a rigid registration of each
later run's mean functional image to the first run's (Mattes mutual information, dipy: the
rigid kernel of :mod:`processing.normalise.register`, as for EPI -> T1w). Each later run's
effect and variance maps are then pulled onto the first run's grid once (trilinear; variances
stay >= 0, see :mod:`processing.normalise.resample`) and the session mask is the intersection
of the resampled run masks.

Registration is skipped when the runs already agree: on the same grid, one linearised
(Gauss-Newton) least-squares step of the rigid fit of the two mean images, with an intensity
gain and offset, estimates the largest displacement within the reference mask; below
:data:`ALIGN_TOLERANCE_MM` the run is used as it is (identity transform, no resampling, so
aligned runs give exactly the unregistered result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import apply_affine, rigid_params
from processing.normalise.normalise import RIGID_SETTINGS
from processing.normalise.register import affine_register, centre_of_mass_mm
from processing.normalise.resample import sample_at_points

__all__ = [
    "ALIGN_TOLERANCE_MM",
    "RunAlignment",
    "align_run",
    "linearised_offset_mm",
    "resample_to_reference",
]

ALIGN_TOLERANCE_MM = 0.25  # largest in-mask displacement treated as "already aligned"
_SMOOTH_VOXELS = 1.0  # Gaussian sigma before the gradients of the linearised check


@dataclass(frozen=True)
class RunAlignment:
    """Rigid transform of one run onto the session's reference (first) run.

    Attributes
    ----------
    moving_to_reference : ndarray, shape (4, 4)
        Maps a point's world mm in the run to its world mm in the reference run.
    registered : bool
        False when the runs already agreed (identity transform, maps used unchanged).
    offset_mm : float
        Linearised estimate of the largest in-mask displacement between the two mean images
        before registration (inf when the grids differ).
    centre_mm : ndarray, shape (3,)
        Centre of rotation of the reported parameters (reference image's centre of mass).
    """

    moving_to_reference: NDArray[np.float64]
    registered: bool
    offset_mm: float
    centre_mm: NDArray[np.float64]

    @property
    def translation_mm(self) -> NDArray[np.float64]:
        """Translation (x, y, z) in mm, about :attr:`centre_mm`."""
        return rigid_params(self.moving_to_reference, self.centre_mm)[:3]

    @property
    def rotation_deg(self) -> NDArray[np.float64]:
        """Rotations about x, y, z in degrees (``R = Rz Ry Rx``)."""
        return np.degrees(rigid_params(self.moving_to_reference, self.centre_mm)[3:])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for the fixed-effects record and sidecars)."""
        return {
            "registered": self.registered,
            "offset_mm": round(float(self.offset_mm), 4),
            "translation_mm": [round(float(v), 4) for v in self.translation_mm],
            "rotation_deg": [round(float(v), 4) for v in self.rotation_deg],
            "centre_mm": [round(float(v), 3) for v in self.centre_mm],
            "matrix": self.moving_to_reference.tolist(),
        }


def linearised_offset_mm(
    reference: ArrayLike, moving: ArrayLike, affine: ArrayLike, mask: ArrayLike
) -> float:
    """Largest in-mask displacement (mm) of ``moving`` relative to ``reference``, one GN step.

    Models ``moving(p) = g * reference(p + t + w x (p - c)) + o`` to first order in ``t`` and
    ``w`` (images smoothed by one voxel first) and solves it by least squares over the mask.
    Accurate for sub-voxel offsets; larger ones are underestimated but still far above any
    alignment tolerance.

    Parameters
    ----------
    reference, moving : array_like, shape (z, y, x)
        Mean functional images on the same grid.
    affine : array_like, shape (4, 4)
        The grid's voxel (x, y, z) -> mm affine.
    mask : array_like of bool, shape (z, y, x)
        Reference brain mask (at least 7 voxels).

    Returns
    -------
    float
    """
    ref = ndimage.gaussian_filter(np.asarray(reference, dtype=np.float64), _SMOOTH_VOXELS)
    mov = ndimage.gaussian_filter(np.asarray(moving, dtype=np.float64), _SMOOTH_VOXELS)
    brain = np.asarray(mask, dtype=bool)
    if ref.shape != mov.shape or ref.shape != brain.shape or brain.sum() < 7:
        raise ValueError(
            f"reference {ref.shape}, moving {mov.shape} and mask {brain.shape} must share a grid "
            "and the mask needs at least 7 voxels"
        )
    aff = np.asarray(affine, dtype=np.float64)
    grad_vox = np.stack(np.gradient(ref), axis=-1)[brain][:, ::-1]  # d/d(x, y, z) voxel
    grad = grad_vox @ np.linalg.inv(aff[:3, :3])  # d/d(world mm)
    points = apply_affine(aff, np.argwhere(brain)[:, ::-1].astype(np.float64))
    arm = points - points.mean(axis=0)
    design = np.column_stack([grad, np.cross(arm, grad), ref[brain], np.ones(len(arm))])
    solution = np.linalg.lstsq(design, mov[brain], rcond=None)[0]
    gain = solution[6] if abs(solution[6]) > 1e-12 else 1.0
    shift, omega = solution[:3] / gain, solution[3:6] / gain
    displacement = shift + np.cross(omega, arm)
    return float(np.sqrt((displacement**2).sum(axis=1)).max())


def align_run(
    reference: ArrayLike,
    reference_affine: ArrayLike,
    reference_mask: ArrayLike,
    moving: ArrayLike,
    moving_affine: ArrayLike,
    *,
    tolerance_mm: float = ALIGN_TOLERANCE_MM,
) -> RunAlignment:
    """Rigid transform from a run's mean functional image to the reference run's.

    Parameters
    ----------
    reference, moving : array_like, shape (z, y, x)
        Mean functional images of the reference (first) run and of the run to align.
    reference_affine, moving_affine : array_like, shape (4, 4)
        Their voxel (x, y, z) -> mm affines.
    reference_mask : array_like of bool, shape (z, y, x)
        Brain mask of the reference run (for the alignment check and the centre).
    tolerance_mm : float
        Skip registration when the grids match and the linearised largest displacement within
        the mask is below this.

    Returns
    -------
    RunAlignment
    """
    if not tolerance_mm >= 0:
        raise ValueError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    ref = np.asarray(reference, dtype=np.float64)
    mov = np.asarray(moving, dtype=np.float64)
    brain = np.asarray(reference_mask, dtype=bool)
    ref_aff, mov_aff = np.asarray(reference_affine, float), np.asarray(moving_affine, float)
    centre = centre_of_mass_mm(brain.astype(np.float64), ref_aff)
    offset = np.inf
    if ref.shape == mov.shape and np.allclose(ref_aff, mov_aff, atol=1e-4):
        offset = linearised_offset_mm(ref, mov, ref_aff, brain)
        if offset < tolerance_mm:
            return RunAlignment(np.eye(4), False, offset, centre)
    result = affine_register(
        np.where(brain, ref, 0.0), ref_aff, mov, mov_aff, dof=6, settings=RIGID_SETTINGS
    )
    return RunAlignment(result.moving_to_fixed, True, offset, centre)


def resample_to_reference(
    volume: ArrayLike,
    affine: ArrayLike,
    alignment: RunAlignment,
    reference_affine: ArrayLike,
    reference_shape: tuple[int, int, int],
    kind: str = "effect",
    noise_lag1: ArrayLike | None = None,
) -> NDArray:
    """Pull a run's map onto the reference run's grid through ``alignment`` (one interpolation).

    Parameters
    ----------
    volume : array_like, shape (z, y, x)
        The run's map (effect, variance or mask).
    affine : array_like, shape (4, 4)
        Its voxel (x, y, z) -> mm affine.
    alignment : RunAlignment
        From :func:`align_run`.
    reference_affine : array_like, shape (4, 4)
        The reference grid's affine.
    reference_shape : tuple of int
        The reference grid ``(z, y, x)``.
    kind : {"effect", "variance", "mask"}
        Trilinear; masks thresholded at 0.5 (``False`` outside). Variances stay >= 0 and, with
        ``noise_lag1``, are the variance of the resampled effect
        (:func:`processing.normalise.resample.sample_at_points`).
    noise_lag1 : array_like, shape (3,), optional
        The run's noise lag-1 correlation along its voxel axes (x, y, z), for variance maps.

    Returns
    -------
    ndarray, shape ``reference_shape``
    """
    if kind not in ("effect", "variance", "mask"):
        raise ValueError(f"kind must be 'effect', 'variance' or 'mask', got {kind!r}")
    vox = np.moveaxis(np.indices(reference_shape, dtype=np.float64), 0, -1)[..., ::-1]
    world = apply_affine(np.asarray(reference_affine, dtype=np.float64), vox)
    source = apply_affine(np.linalg.inv(alignment.moving_to_reference), world)
    return sample_at_points(volume, affine, source, kind=kind, noise_lag1=noise_lag1)
