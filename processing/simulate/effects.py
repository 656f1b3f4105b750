"""Planted activations: Gaussian blobs at MNI coordinates, in MNI and in native space.

An effect map holds, per voxel, the percent signal change per unit of a condition's regressor:
``sum_blob amplitude[blob, condition] * exp(-|phi(x) - c_blob|^2 / (2 sigma_blob^2))`` with
``phi`` the native -> MNI map (identity for MNI maps), ``sigma = FWHM / 2.3548`` measured in MNI
mm, and each blob cut to exactly 0 where it falls below 1e-3 of its peak. Every ROI has one blob
for its pre-session response and, when it has a planted change, a second blob (same centre, the
change's FWHM, named ``<roi>+change``) that carries the session's difference from pre; at the
centre both blobs are 1, so the map there equals the session's planted amplitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processing.geometry import apply_affine
from processing.simulate.anatomy import SubjectTransform, grid_points
from processing.simulate.specs import CONDITIONS, ROIS

__all__ = ["CHANGE_SUFFIX", "Blob", "effect_maps", "mni_blobs", "native_blobs"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
CUTOFF = 1e-3
_CUT_SIGMAS = float(np.sqrt(-2.0 * np.log(CUTOFF)))
CHANGE_SUFFIX = "+change"


def _blob_specs() -> list[tuple[str, tuple[float, float, float], float]]:
    """(blob name, MNI centre, FWHM) of every ROI blob, then of every change blob."""
    own = [(roi.name, roi.mni_mm, roi.fwhm_mm) for roi in ROIS]
    changes = [
        (roi.name + CHANGE_SUFFIX, roi.mni_mm, roi.change_extent_mm)
        for roi in ROIS
        if roi.change_on is not None
    ]
    return own + changes


@dataclass(frozen=True)
class Blob:
    """One ROI's unit blob on a grid: values inside a box of voxel slices (x, y, z order)."""

    roi: str
    box: tuple[slice, slice, slice]
    values: NDArray[np.float32]


def _gauss(mni_points: NDArray[np.float64], center, fwhm_mm: float) -> NDArray[np.float32]:
    sigma = fwhm_mm * FWHM_TO_SIGMA
    dist2 = np.sum((mni_points - np.asarray(center)) ** 2, axis=-1)
    values = np.exp(-dist2 / (2.0 * sigma**2))
    values[values < CUTOFF] = 0.0
    return values.astype(np.float32)


def _box(affine, shape, center_mm, radius_mm) -> tuple[slice, slice, slice]:
    """Voxel slices covering a sphere (world mm) on a diagonal grid, clipped to the grid."""
    inv = np.linalg.inv(affine)
    lo = apply_affine(inv, np.asarray(center_mm) - radius_mm)
    hi = apply_affine(inv, np.asarray(center_mm) + radius_mm)
    first = np.clip(np.floor(np.minimum(lo, hi)).astype(int), 0, shape)
    last = np.clip(np.ceil(np.maximum(lo, hi)).astype(int) + 1, 0, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))


def mni_blobs(affine: NDArray[np.float64], shape: tuple[int, int, int]) -> list[Blob]:
    """Unit blobs of every ROI on an MNI grid.

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        MNI grid affine (mm).
    shape : tuple of int
        MNI grid shape.

    Returns
    -------
    list of Blob
        The ROI blobs in the order of ``specs.ROIS``, then their change blobs.
    """
    blobs = []
    for name, center, fwhm in _blob_specs():
        radius = _CUT_SIGMAS * fwhm * FWHM_TO_SIGMA + 1.0
        box = _box(affine, shape, center, radius)
        pts = grid_points(affine, shape)[box]
        blobs.append(Blob(name, box, _gauss(pts, center, fwhm)))
    return blobs


def native_blobs(
    transform: SubjectTransform, affine: NDArray[np.float64], shape: tuple[int, int, int]
) -> tuple[list[Blob], dict[str, NDArray[np.float64]]]:
    """Unit blobs of every ROI on a native grid, and the ROI centres in native mm.

    The box around ``phi^-1(c)`` has 1.3 times the MNI cut-off radius, which covers the blob
    for scales within 5 % and displacement gradients below 0.2.

    Parameters
    ----------
    transform : SubjectTransform
        The subject's native -> MNI map.
    affine : ndarray, shape (4, 4)
        Native grid affine (mm).
    shape : tuple of int
        Native grid shape.

    Returns
    -------
    blobs : list of Blob
        As :func:`mni_blobs`.
    centers : dict
        ROI name -> native coordinate (mm) of the blob centre, shape (3,).
    """
    blobs = []
    centers = {
        roi.name: transform.to_native(np.asarray(roi.mni_mm, dtype=np.float64)) for roi in ROIS
    }
    for name, mni_center, fwhm in _blob_specs():
        radius = 1.3 * _CUT_SIGMAS * fwhm * FWHM_TO_SIGMA + 1.0
        box = _box(affine, shape, centers[name.removesuffix(CHANGE_SUFFIX)], radius)
        idx = np.moveaxis(np.mgrid[box].astype(np.float64), 0, -1)
        mni = transform.to_mni(apply_affine(affine, idx))
        blobs.append(Blob(name, box, _gauss(mni, mni_center, fwhm)))
    return blobs, centers


def _blob_amplitudes(
    amplitudes: dict[str, dict[str, dict[str, float]]], session: str
) -> dict[str, dict[str, float]]:
    """Blob name -> condition -> amplitude: pre amplitudes on the ROI blobs, the session's
    difference from pre on the change blobs."""
    pre = amplitudes["pre"]
    out: dict[str, dict[str, float]] = {roi: dict(conds) for roi, conds in pre.items()}
    for roi, conds in amplitudes[session].items():
        base = pre.get(roi, {})
        diff = {c: a - base.get(c, 0.0) for c, a in conds.items() if a != base.get(c, 0.0)}
        if diff:
            out[roi + CHANGE_SUFFIX] = diff
    return out


def effect_maps(
    blobs: list[Blob],
    amplitudes: dict[str, dict[str, dict[str, float]]],
    shape: tuple[int, int, int],
    session: str = "pre",
) -> dict[str, NDArray[np.float32]]:
    """Percent-signal-change maps of each condition in one session.

    Parameters
    ----------
    blobs : list of Blob
        Unit blobs on the target grid (:func:`mni_blobs` or :func:`native_blobs`).
    amplitudes : dict
        One subject's planted amplitudes: session (``"pre"``, ``"post"``) -> ROI name ->
        condition -> amplitude at the ROI centre (% signal change per unit regressor); missing
        entries are 0. A session's difference from ``"pre"`` is drawn with the ROI's change
        blob.
    shape : tuple of int
        Grid shape.
    session : str
        Which session's maps to draw.

    Returns
    -------
    dict
        Condition -> float32 map of ``shape`` (x, y, z order), for every condition in
        ``CONDITIONS``.
    """
    if session not in amplitudes:
        raise ValueError(
            f"no planted amplitudes for session {session!r}; have {sorted(amplitudes)}"
        )
    per_blob = _blob_amplitudes(amplitudes, session)
    maps = {cond: np.zeros(shape, dtype=np.float32) for cond in CONDITIONS}
    for blob in blobs:
        for cond, amp in per_blob.get(blob.roi, {}).items():
            if amp != 0.0:
                maps[cond][blob.box] += np.float32(amp) * blob.values
    return maps
