"""Rigid-body conventions shared by the whole project.

Conventions
-----------
* World coordinates are NIfTI scanner/world millimetres (RAS+), as given by an image's affine.
* Rigid parameters are arrays of shape ``(..., 6)``: ``trans_x, trans_y, trans_z`` in mm and
  ``rot_x, rot_y, rot_z`` in radians, the column order of BIDS/fMRIPrep confounds.
* The rotation is ``R = Rz @ Ry @ Rx`` (rotate about x first, then y, then z; right-handed,
  angles counter-clockwise when looking down the positive axis).
* Rotations act about a centre ``c`` (in mm, by default the world coordinate of the volume
  centre), so a point ``x`` maps to ``M(x) = R (x - c) + c + t``. With ``c`` at the volume centre
  a pure rotation does not move the middle of the field of view, as in MCFLIRT.
* Matrices are 4 x 4 homogeneous world(mm) -> world(mm) maps acting on column vectors.

Every function is vectorised over leading dimensions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "apply_affine",
    "rigid_matrix",
    "rigid_params",
    "rms_displacement",
    "rotation_matrix",
    "volume_center_mm",
]


def apply_affine(affine: ArrayLike, points: ArrayLike) -> NDArray[np.float64]:
    """Apply homogeneous 4 x 4 affine(s) to 3-D points.

    Parameters
    ----------
    affine : array_like, shape (..., 4, 4)
        Affine matrices (e.g. voxel -> mm). Leading dimensions broadcast against ``points``.
    points : array_like, shape (..., 3)
        Points (e.g. voxel indices or mm).

    Returns
    -------
    ndarray, shape (..., 3)
        Transformed points, float64.
    """
    aff = np.asarray(affine, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    if aff.shape[-2:] != (4, 4):
        raise ValueError(f"affine must have shape (..., 4, 4), got {aff.shape}")
    if pts.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {pts.shape}")
    lin = aff[..., :3, :3]
    return np.einsum("...ij,...j->...i", lin, pts) + aff[..., :3, 3]


def volume_center_mm(affine: ArrayLike, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """World coordinate (mm) of the centre of a voxel grid.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Voxel -> world (mm) affine of the image.
    shape : tuple of int
        Image shape; only the first three entries are used.

    Returns
    -------
    ndarray, shape (3,)
        World position of voxel index ``(shape[:3] - 1) / 2``, in mm.
    """
    if len(shape) < 3:
        raise ValueError(f"shape needs at least 3 spatial dimensions, got {shape}")
    center_vox = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return apply_affine(affine, center_vox)


def rotation_matrix(angles: ArrayLike) -> NDArray[np.float64]:
    """Rotation matrices ``R = Rz @ Ry @ Rx`` from angles about x, y and z.

    Parameters
    ----------
    angles : array_like, shape (..., 3)
        ``rot_x, rot_y, rot_z`` in radians.

    Returns
    -------
    ndarray, shape (..., 3, 3)
        Proper rotation matrices.
    """
    ang = np.asarray(angles, dtype=np.float64)
    if ang.shape[-1] != 3:
        raise ValueError(f"angles must have shape (..., 3), got {ang.shape}")
    cx, cy, cz = np.cos(ang[..., 0]), np.cos(ang[..., 1]), np.cos(ang[..., 2])
    sx, sy, sz = np.sin(ang[..., 0]), np.sin(ang[..., 1]), np.sin(ang[..., 2])
    rot = np.empty((*ang.shape[:-1], 3, 3))
    rot[..., 0, 0] = cz * cy
    rot[..., 0, 1] = cz * sy * sx - sz * cx
    rot[..., 0, 2] = cz * sy * cx + sz * sx
    rot[..., 1, 0] = sz * cy
    rot[..., 1, 1] = sz * sy * sx + cz * cx
    rot[..., 1, 2] = sz * sy * cx - cz * sx
    rot[..., 2, 0] = -sy
    rot[..., 2, 1] = cy * sx
    rot[..., 2, 2] = cy * cx
    return rot


def rigid_matrix(params: ArrayLike, center_mm: ArrayLike = (0.0, 0.0, 0.0)) -> NDArray[np.float64]:
    """World -> world rigid matrices from 6 parameters.

    Parameters
    ----------
    params : array_like, shape (..., 6)
        ``trans_x, trans_y, trans_z`` (mm) and ``rot_x, rot_y, rot_z`` (radians).
    center_mm : array_like, shape (3,) or (..., 3)
        Centre of rotation ``c`` in world mm (usually :func:`volume_center_mm`).

    Returns
    -------
    ndarray, shape (..., 4, 4)
        Matrices ``M`` with ``M(x) = R (x - c) + c + t`` and ``R = Rz @ Ry @ Rx``.
    """
    par = np.asarray(params, dtype=np.float64)
    if par.shape[-1] != 6:
        raise ValueError(f"params must have shape (..., 6), got {par.shape}")
    center = np.asarray(center_mm, dtype=np.float64)
    rot = rotation_matrix(par[..., 3:])
    shape = np.broadcast_shapes(par.shape[:-1], center.shape[:-1])
    mat = np.zeros((*shape, 4, 4))
    mat[..., :3, :3] = rot
    mat[..., :3, 3] = par[..., :3] + center - np.einsum("...ij,...j->...i", rot, center)
    mat[..., 3, 3] = 1.0
    return mat


def rigid_params(matrix: ArrayLike, center_mm: ArrayLike = (0.0, 0.0, 0.0)) -> NDArray[np.float64]:
    """Invert :func:`rigid_matrix`: the 6 parameters of rigid world -> world matrices.

    Parameters
    ----------
    matrix : array_like, shape (..., 4, 4)
        Rigid matrices (rotation part orthonormal with determinant +1).
    center_mm : array_like, shape (3,) or (..., 3)
        The centre of rotation used to build the matrices, in mm.

    Returns
    -------
    ndarray, shape (..., 6)
        ``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (radians); rot_y is in
        [-pi/2, pi/2].
    """
    mat = np.asarray(matrix, dtype=np.float64)
    if mat.shape[-2:] != (4, 4):
        raise ValueError(f"matrix must have shape (..., 4, 4), got {mat.shape}")
    rot = mat[..., :3, :3]
    ortho_err = np.abs(np.einsum("...ji,...jk->...ik", rot, rot) - np.eye(3)).max(initial=0.0)
    if ortho_err > 1e-5:
        raise ValueError(
            f"matrix is not rigid (R'R differs from identity by {ortho_err:.2e}); "
            "pass a rotation + translation matrix"
        )
    center = np.asarray(center_mm, dtype=np.float64)
    rot_x = np.arctan2(rot[..., 2, 1], rot[..., 2, 2])
    rot_y = np.arctan2(-rot[..., 2, 0], np.hypot(rot[..., 2, 1], rot[..., 2, 2]))
    rot_z = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    trans = mat[..., :3, 3] + np.einsum("...ij,...j->...i", rot, center) - center
    return np.concatenate([trans, np.stack([rot_x, rot_y, rot_z], axis=-1)], axis=-1)


def rms_displacement(
    matrix_a: ArrayLike,
    matrix_b: ArrayLike,
    center_mm: ArrayLike,
    radius_mm: float = 80.0,
) -> NDArray[np.float64]:
    """RMS displacement between two affine poses over a sphere (Jenkinson 2002, MCFLIRT rms).

    With ``D = B @ inv(A) - I = [[L, t], [0, 0]]`` the mean squared displacement over a sphere of
    radius ``r`` centred at ``c`` is ``|L c + t|^2 + r^2 / 5 * trace(L' L)``.

    Parameters
    ----------
    matrix_a, matrix_b : array_like, shape (..., 4, 4)
        World -> world poses (e.g. consecutive volumes' motion matrices).
    center_mm : array_like, shape (3,)
        Centre of the sphere in world mm (the volume centre for MCFLIRT's relative rms).
    radius_mm : float
        Sphere radius in mm (80 mm in MCFLIRT and in FSL's rmsdiff).

    Returns
    -------
    ndarray, shape (...)
        RMS displacement in mm.
    """
    if radius_mm <= 0:
        raise ValueError(f"radius_mm must be positive, got {radius_mm}")
    a = np.asarray(matrix_a, dtype=np.float64)
    b = np.asarray(matrix_b, dtype=np.float64)
    rel = b @ np.linalg.inv(a) - np.eye(4)
    lin = rel[..., :3, :3]
    center = np.asarray(center_mm, dtype=np.float64)
    shift = np.einsum("...ij,...j->...i", lin, center) + rel[..., :3, 3]
    mean_sq = np.sum(shift**2, axis=-1) + radius_mm**2 / 5.0 * np.sum(lin**2, axis=(-2, -1))
    return np.sqrt(mean_sq)
