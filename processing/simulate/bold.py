"""Synthesis of one BOLD run: activation, head motion, scanner gain, drifts and AR(1) noise.

Signal model for volume ``t`` at scanner-grid voxel ``q`` (arrays in (t, z, y, x) memory order)::

    S_t(p) = B(p) * (1 + sum_c beta_c(p) / 100 * r_c(t))        head frame (static native space)
    V_t(q) = | S_t(M_t^-1 q) * G(q) * (1 + d1(t) g1(q) + d2(t) g2(q)) + sigma(q) n_t(q) |

``B`` is the EPI baseline, ``beta_c`` the planted effect maps (% per unit regressor) and ``r_c``
the HRF-convolved regressors; ``M_t`` is the volume's rigid motion, resampled with cubic
B-splines (head motion moves the object without blurring it; trilinear resampling would blur
each volume by an amount that depends on its displacement, and at the brain edge that blur
correlates with any regressor whose blocks sit far from the reference volume);
``G`` is a smooth receive-coil bias field and ``g1``, ``g2`` smooth maps of a linear and a
half-cosine drift (``d1``, ``d2``, about 1 % and 0.5 %) fixed to the scanner; ``n_t`` is unit
AR(1) noise (coefficient ``rho``) and ``sigma`` grows with the local signal (a floor of thermal
noise plus 1.6 % of the signal). The magnitude makes the background half-normal.

Volumes are resampled in parallel threads (scipy releases the GIL); noise is generated per z slab
from generators keyed by (run, slab), so the result does not depend on the number of threads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.geometry import apply_affine
from processing.spline import cubic_coefficients, resample_cubic

__all__ = ["RunModel", "synthesize_run"]

N_SLABS = 8
_SWAP = np.eye(4)[[2, 1, 0, 3]]  # (x, y, z) <-> (z, y, x) voxel index permutation


@dataclass(frozen=True)
class RunModel:
    """Everything needed to synthesise a run; spatial arrays are float32 in (z, y, x) order.

    Attributes
    ----------
    baseline : ndarray, shape (nz, ny, nx)
        EPI baseline ``B`` in the head frame.
    effects : list of (tuple of slice, ndarray)
        Per condition (rows of ``regressors``): a (z, y, x) box and ``B * beta_c / 100`` in it.
    regressors : ndarray, shape (n_conditions, n_volumes)
        HRF-convolved condition regressors.
    motion : ndarray, shape (n_volumes, 4, 4)
        ``M_t`` (world mm -> world mm).
    affine : ndarray, shape (4, 4)
        Voxel (x, y, z) -> mm affine of the BOLD grid.
    gain, gain_drift1, gain_drift2 : ndarray, shape (nz, ny, nx)
        ``G``, ``G g1`` and ``G g2``.
    drifts : ndarray, shape (2, n_volumes)
        ``d1(t)`` and ``d2(t)``.
    sigma : ndarray, shape (nz, ny, nx)
        Noise standard deviation.
    rho : float
        AR(1) coefficient.
    noise_rng : callable
        ``noise_rng(slab_index)`` returns the generator of that slab.
    """

    baseline: NDArray[np.float32]
    effects: Sequence[tuple[tuple[slice, ...], NDArray[np.float32]]]
    regressors: NDArray[np.float64]
    motion: NDArray[np.float64]
    affine: NDArray[np.float64]
    gain: NDArray[np.float32]
    gain_drift1: NDArray[np.float32]
    gain_drift2: NDArray[np.float32]
    drifts: NDArray[np.float64]
    sigma: NDArray[np.float32]
    rho: float
    noise_rng: Callable[[int], np.random.Generator]


def _output_boxes(model: RunModel) -> list[tuple[slice, slice, slice]]:
    """(z, y, x) boxes, one per z slab, holding every scanner voxel a moved head voxel reaches."""
    support = model.baseline > 0
    if not support.any():
        return []
    idx = np.argwhere(support)
    lo, hi = idx.min(axis=0)[::-1], idx.max(axis=0)[::-1]  # x, y, z
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
    world = apply_affine(model.affine, corners)
    shift_mm = np.linalg.norm(apply_affine(model.motion[:, None], world[None]) - world, axis=-1)
    voxel_mm = float(np.sqrt((model.affine[:3, :3] ** 2).sum(axis=0)).min())
    reach = ndimage.distance_transform_edt(~support) <= shift_mm.max() / voxel_mm + 2.0
    boxes = []
    bounds = np.linspace(0, support.shape[0], N_SLABS + 1).round().astype(int)
    for z0, z1 in itertools.pairwise(bounds):
        rows, cols = reach[z0:z1].any(axis=(0, 2)), reach[z0:z1].any(axis=(0, 1))
        if rows.any():
            ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
            boxes.append(
                (slice(int(z0), int(z1)), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
            )
    return boxes


def _resample_volume(model: RunModel, t: int, boxes, out: NDArray[np.float32]) -> None:
    """Write the moved, activated volume ``t`` into ``out[t]`` (inside ``boxes``)."""
    weights = model.regressors[:, t]
    volume = model.baseline
    if np.any(weights != 0):
        volume = model.baseline.copy()
        for (sl, increment), weight in zip(model.effects, weights, strict=True):
            if weight != 0:
                volume[sl] += np.float32(weight) * increment
    spline = cubic_coefficients(volume, "grid-constant")
    inv = np.linalg.inv(model.affine)
    vox = _SWAP @ inv @ np.linalg.inv(model.motion[t]) @ model.affine @ _SWAP
    for box in boxes:
        start = np.array([s.start for s in box], dtype=np.float64)
        resample_cubic(spline, vox[:3, :3], vox[:3, :3] @ start + vox[:3, 3], out[t][box])


def _noise_slab(
    model: RunModel, data: NDArray[np.float32], slab: int, zs: slice, out: NDArray | None
) -> None:
    """Gain, drifts and AR(1) noise for ``data[:, zs]`` in place, magnitudes, then (if ``out``
    is given) rounding and clipping into ``out[:, zs]``."""
    rng = model.noise_rng(slab)
    shape = data[0, zs].shape
    innovation = np.float32(np.sqrt(1.0 - model.rho**2))
    noise = rng.standard_normal(shape, dtype=np.float32)
    fresh = np.empty(shape, dtype=np.float32)
    gain = np.empty(shape, dtype=np.float32)
    sigma = model.sigma[zs]
    limits = np.iinfo(out.dtype) if out is not None else None
    for t in range(data.shape[0]):
        if t > 0:
            rng.standard_normal(dtype=np.float32, out=fresh)
            noise *= np.float32(model.rho)
            fresh *= innovation
            noise += fresh
        np.multiply(model.gain_drift1[zs], np.float32(model.drifts[0, t]), out=gain)
        gain += model.gain[zs]
        np.multiply(model.gain_drift2[zs], np.float32(model.drifts[1, t]), out=fresh)
        gain += fresh
        vol = data[t, zs]
        vol *= gain
        np.multiply(sigma, noise, out=fresh)
        vol += fresh
        np.abs(vol, out=vol)
        if out is not None:
            np.rint(vol, out=vol)
            np.clip(vol, limits.min, limits.max, out=vol)
            out[t, zs] = vol


def synthesize_run(
    model: RunModel, executor: Executor, bold_dtype: str = "float32"
) -> tuple[NDArray, float, float]:
    """Simulate the run's magnitude images in the on-disk type.

    ``int16`` and ``uint16`` are rounded and clipped, unscaled (slope 1, intercept 0);
    ``float32`` is stored as is; ``int16-scaled`` stores ``round((v - inter) / slope)`` with
    ``inter = -1024`` and ``slope = (max - inter) / 32000`` rounded up to 4 significant digits,
    so readers must apply ``scl_slope`` and ``scl_inter``.

    Parameters
    ----------
    model : RunModel
        Inputs of the run.
    executor : concurrent.futures.Executor
        Thread pool for the per-volume and per-slab work.
    bold_dtype : {"float32", "int16", "uint16", "int16-scaled"}
        On-disk type.

    Returns
    -------
    raw : ndarray, shape (n_volumes, nz, ny, nx)
        On-disk values (C order, so ``raw.T`` is the (x, y, z, t) NIfTI layout).
    slope, inter : float
        ``scl_slope`` and ``scl_inter``.
    """
    n_vols = model.regressors.shape[1]
    data = np.zeros((n_vols, *model.baseline.shape), dtype=np.float32)
    boxes = _output_boxes(model)
    list(executor.map(lambda t: _resample_volume(model, t, boxes, data), range(n_vols)))
    kind = {"int16": np.int16, "uint16": np.uint16}.get(bold_dtype)
    out = None if kind is None else np.empty(data.shape, dtype=kind)
    bounds = np.linspace(0, model.baseline.shape[0], N_SLABS + 1).round().astype(int)
    slabs = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    list(executor.map(lambda k: _noise_slab(model, data, k, slabs[k], out), range(N_SLABS)))
    if out is not None:
        return out, 1.0, 0.0
    if bold_dtype == "float32":
        return data, 1.0, 0.0
    return _scale_int16(data, executor)


def _scale_int16(data: NDArray[np.float32], executor: Executor) -> tuple[NDArray, float, float]:
    """int16 with ``inter = -1024`` and a slope mapping the maximum to about 32000."""
    inter = -1024.0
    span = float(data.max()) - inter
    digits = 3 - int(np.floor(np.log10(span / 32000.0)))
    slope = float(np.float32(np.ceil(span / 32000.0 * 10**digits) / 10**digits))
    slope = 1.0001 if slope == 1.0 else slope
    raw = np.empty(data.shape, dtype=np.int16)

    def convert(t: int) -> None:
        vol = (data[t] - np.float32(inter)) / np.float32(slope)
        raw[t] = np.clip(np.rint(vol), -32768, 32767)

    list(executor.map(convert, range(data.shape[0])))
    return raw, slope, inter
