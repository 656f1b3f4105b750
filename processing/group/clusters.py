"""Cluster tables like FSL's ``cluster`` (FEAT's cluster_zstat tables) and cluster maps.

Arrays are 3-D in NIfTI voxel order (i, j, k) with the NIfTI ``affine`` mapping voxel indices to
mm (MNI mm for standard-space maps). Clusters are connected sets (26-connectivity by default, as
FEAT) of voxels with ``z > threshold`` (positive side) or ``z < -threshold`` (negative side).

Per cluster (columns of :attr:`ClusterResult.table`):

* ``side``: ``positive`` or ``negative``;
* ``cluster``: index within the side; as in FSL, the largest cluster has the highest index and
  rows are listed from largest to smallest;
* ``voxels``, ``volume_mm3`` (voxels times the voxel volume ``|det(affine[:3, :3])|``);
* ``mass``: ``sum(|stat| - mass_threshold)`` over the cluster (of ``mass_map``, default ``z``);
* ``p_fwe``, ``neg_log10_p``: FWE-corrected cluster p from the permutation maxima of the chosen
  measure (:func:`processing.group.permutation.fwe_p`), or from a given function (GRF); NaN when
  no inference was given;
* ``peak_z``, ``peak_x_mm``, ``peak_y_mm``, ``peak_z_mm``, ``peak_i``, ``peak_j``, ``peak_k``: the
  voxel of largest ``|z|`` (signed z), its mm coordinate and voxel index;
* ``cog_x_mm``, ``cog_y_mm``, ``cog_z_mm``: centre of gravity, ``|z|``-weighted mean mm position
  (FSL's COG);
* ``cope_max``, ``cope_max_x_mm``, ``cope_max_y_mm``, ``cope_max_z_mm``, ``cope_mean``: with a
  ``cope`` (effect) map, as FSL's ``cluster --cope``: the cluster's most extreme effect on its
  side (largest for positive, most negative for negative clusters), where it is, and the mean
  effect over the cluster; NaN without one. Where subjects differ mainly in the amplitude of
  one spatial pattern, z is flat across the pattern and the effect's peak is the better
  locator (``benchmarks/peak_uncertainty.py``).

Local maxima (:attr:`ClusterResult.local_maxima`, like ``cluster --olmax``): voxels whose ``|z|``
is the largest in their 26-neighbourhood within the cluster, taken in decreasing ``|z|`` and kept
only when at least ``min_distance_mm`` (8 mm) from every maximum already kept in that cluster; at
most ``max_local_maxima`` per cluster (FSL's default 6). Columns: ``side``, ``cluster``, ``z``,
``x_mm``, ``y_mm``, ``z_mm``, ``i``, ``j``, ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import apply_affine
from processing.group.permutation import fwe_p
from processing.group.tfce import connectivity_structure

__all__ = ["ClusterResult", "cluster_table", "label_clusters"]

TABLE_COLUMNS = (
    "side", "cluster", "voxels", "volume_mm3", "mass", "p_fwe", "neg_log10_p", "peak_z",
    "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_i", "peak_j", "peak_k", "cog_x_mm", "cog_y_mm",
    "cog_z_mm", "cope_max", "cope_max_x_mm", "cope_max_y_mm", "cope_max_z_mm", "cope_mean",
)  # fmt: skip
MAXIMA_COLUMNS = ("side", "cluster", "z", "x_mm", "y_mm", "z_mm", "i", "j", "k")


@dataclass(frozen=True)
class ClusterResult:
    """Cluster table, local maxima and maps.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per cluster (columns in the module docstring).
    local_maxima : pandas.DataFrame
        Local maxima per cluster.
    index_maps : dict of str -> ndarray of int32, shape (X, Y, Z)
        Per side, the cluster index of each voxel (0 outside clusters), FSL's ``--oindex``.
    thresholded : dict of str -> ndarray of float64, shape (X, Y, Z)
        Per side, z inside clusters with ``p_fwe <= p_threshold`` (all clusters when no
        inference or no threshold), 0 elsewhere.
    """

    table: pd.DataFrame
    local_maxima: pd.DataFrame
    index_maps: dict[str, NDArray[np.int32]]
    thresholded: dict[str, NDArray[np.float64]]


def label_clusters(
    values: ArrayLike,
    threshold: float,
    *,
    connectivity: int = 26,
    mask: ArrayLike | None = None,
) -> tuple[NDArray[np.int32], int]:
    """Connected components of ``values > threshold``.

    Parameters
    ----------
    values : array_like, shape (X, Y, Z)
    threshold : float
    connectivity : {6, 18, 26}
    mask : array_like of bool, shape (X, Y, Z), optional

    Returns
    -------
    labels : ndarray of int32, shape (X, Y, Z)
        1..n inside clusters, 0 elsewhere (scan order, not sorted by size).
    n : int
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"cluster maps must be 3-D, got shape {v.shape}")
    above = np.isfinite(v) & (v > threshold)
    if mask is not None:
        above &= np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(above, connectivity_structure(connectivity))
    return labels.astype(np.int32), int(n)


def _local_maxima(
    absz: NDArray,
    labels: NDArray,
    label: int,
    box: tuple[slice, ...],
    affine: NDArray,
    min_dist: float,
    limit: int,
) -> list[tuple[float, NDArray, NDArray]]:
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    inside = labels[box] == label
    vals = np.where(inside, absz[box], -np.inf)
    top = ndimage.maximum_filter(vals, footprint=np.ones((3, 3, 3)), mode="constant", cval=-np.inf)
    cand = np.argwhere((vals == top) & inside)
    cand_vals = vals[tuple(cand.T)]
    order = np.argsort(-cand_vals, kind="stable")
    kept: list[tuple[float, NDArray, NDArray]] = []
    offset = np.array([s.start for s in box])
    for idx in order:
        ijk = cand[idx] + offset
        mm = apply_affine(affine, ijk.astype(np.float64))
        if all(np.linalg.norm(mm - k[2]) >= min_dist for k in kept):
            kept.append((float(cand_vals[idx]), ijk, mm))
            if len(kept) >= limit:
                break
    return kept


def _cope_columns(
    copes: NDArray | None, sgn: float, labels: NDArray, n: int, affine: NDArray
) -> list[tuple[float, ...]]:
    """Per label: extreme effect on the side, its mm position, and the mean effect."""
    if copes is None:
        return [(np.nan,) * 5] * n
    index = np.arange(1, n + 1)
    finite = np.where(np.isfinite(copes), sgn * copes, -np.inf)
    where = np.array(ndimage.maximum_position(finite, labels, index)).reshape(n, 3)
    means = np.atleast_1d(ndimage.mean(np.nan_to_num(copes), labels, index))
    out = []
    for lab in range(n):
        mm = apply_affine(affine, where[lab].astype(np.float64))
        out.append((float(copes[tuple(where[lab])]), *map(float, mm), float(means[lab])))
    return out


def cluster_table(
    z: ArrayLike,
    affine: ArrayLike,
    *,
    threshold: float = 2.3,
    mask: ArrayLike | None = None,
    connectivity: int = 26,
    sides: tuple[str, ...] = ("positive", "negative"),
    null_max: Mapping[str, ArrayLike] | None = None,
    cluster_p: Callable[[NDArray, NDArray], NDArray] | None = None,
    measure: str = "extent",
    mass_map: ArrayLike | None = None,
    mass_threshold: float | None = None,
    p_threshold: float | None = 0.05,
    min_distance_mm: float = 8.0,
    max_local_maxima: int = 6,
    cope: ArrayLike | None = None,
) -> ClusterResult:
    """Find clusters of a z map and tabulate them (see the module docstring).

    Parameters
    ----------
    z : array_like, shape (X, Y, Z)
        z statistic map (NaN and non-finite values are outside every cluster).
    affine : array_like, shape (4, 4)
        Voxel -> mm.
    threshold : float
        Cluster-forming threshold on ``|z|`` (2.3).
    mask : array_like of bool, optional
        Voxels eligible for clusters.
    connectivity : {6, 18, 26}
    sides : tuple of {"positive", "negative"}
    null_max : mapping of side -> array_like (K,), optional
        Per-permutation maxima of ``measure`` for each side (the negative side's from the
        negated contrast), identity included.
    cluster_p : callable, optional
        ``cluster_p(voxels, mass) -> p`` per cluster (e.g. GRF); used when ``null_max`` is None.
    measure : {"extent", "mass"}
        Which cluster measure ``null_max`` holds.
    mass_map : array_like, optional
        Statistic whose excess over ``mass_threshold`` is summed for the mass (default ``z``;
        pass the OLS t map and its cluster-forming t to match the permutation null).
    mass_threshold : float, optional
        Default ``threshold``.
    p_threshold : float or None
        Clusters with ``p_fwe`` above it are left out of ``thresholded`` (they stay in the
        table); None keeps all.
    min_distance_mm : float
        Minimum distance between local maxima of a cluster.
    max_local_maxima : int
        Most local maxima per cluster.
    cope : array_like, shape (X, Y, Z), optional
        Effect (COPE) map for the ``cope_*`` columns.

    Returns
    -------
    ClusterResult
    """
    zmap = np.asarray(z, dtype=np.float64)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4 x 4, got {aff.shape}")
    if measure not in ("extent", "mass"):
        raise ValueError(f"measure must be 'extent' or 'mass', got {measure!r}")
    mmap = zmap if mass_map is None else np.asarray(mass_map, dtype=np.float64)
    if mmap.shape != zmap.shape:
        raise ValueError(f"mass map shape {mmap.shape} differs from z {zmap.shape}")
    mthr = threshold if mass_threshold is None else mass_threshold
    copes = None if cope is None else np.asarray(cope, dtype=np.float64)
    if copes is not None and copes.shape != zmap.shape:
        raise ValueError(f"cope map shape {copes.shape} differs from z {zmap.shape}")
    voxel_mm3 = round(float(abs(np.linalg.det(aff[:3, :3]))), 6)
    rows, maxima = [], []
    index_maps, thresholded = {}, {}
    for side in sides:
        if side not in ("positive", "negative"):
            raise ValueError(f"side must be 'positive' or 'negative', got {side!r}")
        sgn = 1.0 if side == "positive" else -1.0
        labels, n = label_clusters(sgn * zmap, threshold, connectivity=connectivity, mask=mask)
        absz = np.where(labels > 0, sgn * zmap, 0.0)
        flat = labels.ravel()
        sizes = np.bincount(flat, minlength=n + 1)[1:]
        mass = np.bincount(flat, weights=np.where(labels > 0, sgn * mmap - mthr, 0.0).ravel(),
                           minlength=n + 1)[1:]  # fmt: skip
        if null_max is not None and side in null_max:
            p = fwe_p(sizes if measure == "extent" else mass, null_max[side])
        elif cluster_p is not None:
            p = np.asarray(cluster_p(sizes, mass), dtype=np.float64)
        else:
            p = np.full(n, np.nan)
        order = np.argsort(-sizes, kind="stable")  # largest first
        index = np.zeros(n + 1, dtype=np.int32)
        index[order + 1] = np.arange(n, 0, -1)  # largest gets the highest index (FSL)
        index_maps[side] = index[labels]
        keep = np.ones(n, dtype=bool) if p_threshold is None else ~(p > p_threshold)
        keep_label = np.concatenate([[False], keep])  # label 0 is background
        thresholded[side] = np.where(keep_label[labels], zmap, 0.0)
        if n:
            cog_vox = np.stack(
                ndimage.center_of_mass(absz, labels, np.arange(1, n + 1)), axis=0
            ).reshape(n, 3)
            boxes = ndimage.find_objects(labels)
            peaks = np.array(ndimage.maximum_position(absz, labels, np.arange(1, n + 1))).reshape(
                n, 3
            )
            cope_cols = _cope_columns(copes, sgn, labels, n, aff)
        for lab in order:
            cid = int(index[lab + 1])
            peak = peaks[lab]
            peak_mm = apply_affine(aff, peak.astype(np.float64))
            cog_mm = apply_affine(aff, cog_vox[lab])
            p_lab = float(p[lab])
            rows.append(
                (
                    side,
                    cid,
                    int(sizes[lab]),
                    sizes[lab] * voxel_mm3,
                    float(mass[lab]),
                    p_lab,
                    float(-np.log10(p_lab)) if np.isfinite(p_lab) else np.nan,
                    float(zmap[tuple(peak)]),
                    *map(float, peak_mm),
                    *map(int, peak),
                    *map(float, cog_mm),
                    *cope_cols[lab],
                )
            )
            for val, ijk, mm in _local_maxima(
                absz, labels, lab + 1, boxes[lab], aff, min_distance_mm, max_local_maxima
            ):
                maxima.append((side, cid, sgn * val, *map(float, mm), *map(int, ijk)))
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    local = pd.DataFrame(maxima, columns=list(MAXIMA_COLUMNS))
    return ClusterResult(table, local, index_maps, thresholded)
