"""Cubic B-spline resampling of a volume under an affine map (what ``scipy.ndimage`` computes
with ``order=3``, 3-4x faster and releasing the GIL).

Motion correction resamples every volume of every run with cubic B-splines (FEAT's
``-spline_final``) and the simulator moves heads the same way; scipy's ``affine_transform``
spends 0.2-0.3 s per 2 mm volume there. Here the coefficients are computed as scipy does (the
volume padded by :data:`PAD` voxels: edge values for ``"nearest"``, zeros for
``"grid-constant"``; then scipy's mirror-boundary spline filter) and a compiled loop evaluates
the 4 x 4 x 4 spline at each output voxel, so results equal scipy's to rounding (tested).

Conventions
-----------
Arrays are indexed ``(z, y, x)`` (C order of a NIfTI ``(x, y, z)`` array's transpose, as in the
rest of ``processing``). ``matrix`` and ``offset`` map an output index ``o`` to the input index
``matrix @ o + offset`` (``scipy.ndimage.affine_transform``'s convention), in voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = ["PAD", "SplineCoefficients", "SplineInputError", "cubic_coefficients", "resample_cubic"]

PAD = 12  # scipy pads by 12 before filtering, so the boundary barely reaches the volume
_PAD_MODES = {"nearest": "edge", "grid-constant": "constant"}


class SplineInputError(ValueError):
    """A volume, matrix or output that cannot be resampled."""


@dataclass(frozen=True)
class SplineCoefficients:
    """Cubic B-spline coefficients of a padded volume.

    Attributes
    ----------
    values : ndarray, shape (nz + 2 PAD, ny + 2 PAD, nx + 2 PAD), float64
        Coefficients; voxel ``(z, y, x)`` of the volume is ``values[z + PAD, y + PAD, x + PAD]``.
    shape : tuple of int
        ``(nz, ny, nx)`` of the volume.
    mode : {"nearest", "grid-constant"}
        Outside the volume: its edge value repeated, or 0.
    """

    values: NDArray[np.float64]
    shape: tuple[int, int, int]
    mode: Literal["nearest", "grid-constant"]


def cubic_coefficients(
    volume: ArrayLike, mode: Literal["nearest", "grid-constant"] = "nearest"
) -> SplineCoefficients:
    """Cubic B-spline coefficients of a volume, as ``scipy.ndimage`` computes them.

    Parameters
    ----------
    volume : array_like, shape (nz, ny, nx)
        Image values (any real dtype).
    mode : {"nearest", "grid-constant"}
        How the image continues outside its grid: its edge values (``"nearest"``, what motion
        correction uses) or zeros (``"grid-constant"``, an object in empty space).

    Returns
    -------
    SplineCoefficients
    """
    vol = np.asarray(volume)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise SplineInputError(f"volume must be 3-D (z, y, x) and non-empty, got shape {vol.shape}")
    if mode not in _PAD_MODES:
        raise SplineInputError(f"mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    padded = np.pad(vol.astype(np.float64, copy=False), PAD, mode=_PAD_MODES[mode])
    values = ndimage.spline_filter(padded, order=3, mode="mirror", output=np.float64)
    return SplineCoefficients(values, tuple(int(n) for n in vol.shape), mode)


def resample_cubic(
    spline: SplineCoefficients,
    matrix: ArrayLike,
    offset: ArrayLike,
    out: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Evaluate the spline at ``matrix @ o + offset`` for every output index ``o``.

    Parameters
    ----------
    spline : SplineCoefficients
        From :func:`cubic_coefficients`.
    matrix : array_like, shape (3, 3)
        Output index -> input index (voxels, (z, y, x) order).
    offset : array_like, shape (3,)
        Input index of output index 0.
    out : ndarray, shape (oz, oy, ox), float32
        Written in place (may be a strided view, e.g. a box of a larger volume).

    Returns
    -------
    ndarray
        ``out``. Samples outside the volume follow ``spline.mode``; beyond ``PAD - 2`` voxels
        outside they take the value at that distance (``"nearest"``) or 0 (``"grid-constant"``),
        as scipy does.
    """
    mat = np.asarray(matrix, dtype=np.float64)
    off = np.asarray(offset, dtype=np.float64)
    if mat.shape != (3, 3) or off.shape != (3,):
        raise SplineInputError(
            f"matrix must be 3 x 3 and offset of length 3, got {mat.shape} and {off.shape}"
        )
    if not (np.isfinite(mat).all() and np.isfinite(off).all()):
        raise SplineInputError("matrix and offset must be finite")
    if not isinstance(out, np.ndarray) or out.ndim != 3 or out.dtype != np.float32:
        raise SplineInputError(
            f"out must be a 3-D float32 array, got {getattr(out, 'dtype', type(out))} "
            f"{getattr(out, 'shape', '')}"
        )
    nearest = spline.mode == "nearest"
    _evaluate(spline.values, np.ascontiguousarray(mat), off, out, nearest, *spline.shape)
    return out


@numba.njit(nogil=True, cache=True)
def _weights(f: float, w: NDArray[np.float64]) -> None:
    """Cubic B-spline weights of the 4 coefficients around a sample at fraction ``f``."""
    g = 1.0 - f
    w[0] = g * g * g / 6.0
    w[3] = f * f * f / 6.0
    w[1] = (3.0 * f * f * f - 6.0 * f * f + 4.0) / 6.0
    w[2] = 1.0 - w[0] - w[1] - w[3]


@numba.njit(nogil=True, cache=True)
def _evaluate(c, matrix, offset, out, nearest, nz, ny, nx):
    """Serial loop behind :func:`resample_cubic` (threads call it concurrently)."""
    lo = -PAD + 2.0
    hi = np.array([nz - 1.0 - lo, ny - 1.0 - lo, nx - 1.0 - lo])
    w = np.empty((3, 4))
    q = np.empty(3)
    oz, oy, ox = out.shape
    for k in range(oz):
        for j in range(oy):
            for i in range(ox):
                inside = True
                for d in range(3):
                    v = matrix[d, 0] * k + matrix[d, 1] * j + matrix[d, 2] * i + offset[d]
                    if v < lo or v > hi[d]:
                        inside = False
                        v = min(max(v, lo), hi[d])
                    q[d] = v + PAD
                if not inside and not nearest:
                    out[k, j, i] = 0.0
                    continue
                iz, iy, ix = int(np.floor(q[0])), int(np.floor(q[1])), int(np.floor(q[2]))
                _weights(q[0] - iz, w[0])
                _weights(q[1] - iy, w[1])
                _weights(q[2] - ix, w[2])
                acc = 0.0
                for a in range(4):
                    plane = 0.0
                    for b in range(4):
                        row = c[iz - 1 + a, iy - 1 + b]
                        line = (
                            w[2, 0] * row[ix - 1]
                            + w[2, 1] * row[ix]
                            + w[2, 2] * row[ix + 1]
                            + w[2, 3] * row[ix + 2]
                        )
                        plane += w[1, b] * line
                    acc += w[0, a] * plane
                out[k, j, i] = acc
