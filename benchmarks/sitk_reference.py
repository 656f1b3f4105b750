"""SimpleITK rigid registration as a reference for motion estimation (benchmarks and tests).

Settings as a typical ITK motion-correction set-up: mean squares on 10 % random samples,
regular-step gradient descent, shrink factors 4-2-1 with smoothing 2-1-0 voxels, started from
the geometric centres. Results are converted to this project's convention
(:func:`processing.geometry.rigid_params` of the matrix that maps reference RAS mm to moving
RAS mm, as ``M_t`` in :mod:`processing.preprocess.motion`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_image(volume: ArrayLike, affine: ArrayLike):
    """A SimpleITK image (LPS physical space) of a (z, y, x) array with a RAS affine."""
    import SimpleITK as sitk

    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    u, _, vt = np.linalg.svd(lps[:3, :3] / spacing)  # nearest orthonormal direction matrix
    img = sitk.GetImageFromArray(np.asarray(volume, dtype=np.float32))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((u @ vt).ravel().tolist())
    return img


def sitk_motion(
    volumes: Iterable[ArrayLike], reference: ArrayLike, affine: ArrayLike
) -> NDArray[np.float64]:
    """Rigid parameters of each volume relative to ``reference`` by SimpleITK.

    SimpleITK's transform maps fixed (reference) LPS points to moving LPS points, so in RAS it is
    ``F T F`` with ``F = diag(-1, -1, 1)``: the same direction as this project's ``M_t``.

    Parameters
    ----------
    volumes : iterable of array_like, each shape (z, y, x)
        The volumes to register (read one at a time, so a lazy sequence stays lazy).
    reference : array_like, shape (z, y, x)
        The fixed image.
    affine : array_like, shape (4, 4)
        Voxel ``(x, y, z)`` -> RAS mm, shared by all volumes.

    Returns
    -------
    ndarray, shape (n, 6)
        Translations (mm) and rotations (radians), as :func:`processing.geometry.rigid_params`.
    """
    import SimpleITK as sitk

    from processing.geometry import rigid_params, volume_center_mm

    reference = np.asarray(reference)
    center = volume_center_mm(np.asarray(affine, dtype=np.float64), reference.shape[::-1])
    fixed, out = sitk_image(reference, affine), []
    for volume in volumes:
        moving = sitk_image(volume, affine)
        tx = sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(
                fixed, moving, sitk.Euler3DTransform(),
                sitk.CenteredTransformInitializerFilter.GEOMETRY,
            )
        )  # fmt: skip
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMeanSquares()
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.1, 1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SetInitialTransform(tx, inPlace=True)
        reg.Execute(fixed, moving)
        mat = np.eye(4)
        rot, cen = np.reshape(tx.GetMatrix(), (3, 3)), np.array(tx.GetCenter())
        mat[:3, :3], mat[:3, 3] = rot, np.array(tx.GetTranslation()) + cen - rot @ cen
        out.append(rigid_params(RAS_TO_LPS @ mat @ RAS_TO_LPS, center))
    return np.array(out)
