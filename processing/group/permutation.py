"""Permutation inference for group GLMs (randomise-style), in batches of permutations.

Statistic
    Permutation inference uses the OLS t statistic of the group design (as randomise does; the
    FLAME1 map is reported beside it but its variance estimate is not permuted). The clusters of
    the observed map are formed on the same OLS t.

Rearrangements (:mod:`processing.group.rearrangements`)
    Sign flips for designs testing a mean, row permutations (optionally within exchangeability
    blocks) otherwise. Nuisance regressors are handled by Freedman-Lane: the design is
    partitioned so that the nuisance space is ``{X b : c b = 0}`` (Beckmann/Winkler
    partitioning), the residuals ``R`` of the data on the nuisance space are rearranged and the
    full model is refitted. With no nuisance (a one-sample mean) this is plain sign flipping of
    the data.

Matrix form
    With ``Q`` an orthonormal basis of the design (N, p) and ``P_k`` the k-th rearrangement,
    ``Q' P_k R`` for all k is one matrix product ``(K p, N) @ (N, V)``; then
    ``c gamma_k = u' Q' P_k R`` (``u = Q' pinv(X)' c``), ``RSS_k = |R|^2 - |Q' P_k R|^2`` and
    ``t_k = c gamma_k / sqrt(RSS_k / (N - p) * c (X'X)^-1 c')``.

Per-permutation maxima (what a batch returns): the voxel maximum of t, the largest cluster
extent (voxels) and mass (``sum(t - t_thr)`` over the cluster, nilearn's definition) at the
cluster-forming threshold, and the TFCE maximum. FWE p-values (:func:`fwe_p`) count the
permutations whose maximum reaches the observed value, identity included:
``p = #{k : max_k >= obs} / K`` = ``(1 + #{k >= 1 : max_k >= obs}) / K``, randomise's convention;
FSL writes ``1 - p`` images, boldcloud writes p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import linalg, sparse, stats
from scipy.sparse import csgraph

from processing.group.designs import GroupDesign, check_design
from processing.group.rearrangements import Permutations, make_permutations
from processing.group.tfce import MaskGraph, connectivity_structure, tfce_masked

__all__ = [
    "PermutationModel",
    "Permutations",
    "cluster_forming_t",
    "combine_batches",
    "fwe_p",
    "make_permutations",
    "permutation_batch",
    "permutation_kind",
    "permuted_t",
    "prepare_model",
]


@dataclass(frozen=True)
class PermutationModel:
    """Freedman-Lane pieces of one design and contrast (see the module docstring).

    Attributes
    ----------
    q : ndarray, shape (N, p)
        Orthonormal basis of the design's column space.
    u : ndarray, shape (p,)
        ``c gamma = u' Q' y``.
    nuisance : ndarray, shape (N, N)
        Residual-forming matrix of the nuisance space, ``I - H_z``.
    scale : float
        ``c (X'X)^-1 c'``.
    dof : int
        ``N - p``.
    """

    q: NDArray[np.float64]
    u: NDArray[np.float64]
    nuisance: NDArray[np.float64]
    scale: float
    dof: int


def prepare_model(design: GroupDesign | ArrayLike, contrast: str | ArrayLike) -> PermutationModel:
    """Partition a design for a contrast (Freedman-Lane).

    Parameters
    ----------
    design : GroupDesign or array_like, shape (N, p)
    contrast : str or array_like, shape (p,)

    Returns
    -------
    PermutationModel
    """
    if isinstance(design, GroupDesign):
        x, c = design.matrix, design.contrast(contrast)
    else:
        x = check_design(design)
        c = np.asarray(contrast, dtype=np.float64)
        if c.shape != (x.shape[1],) or not np.any(c):
            raise ValueError(f"contrast {np.asarray(contrast).tolist()} needs {x.shape[1]} weights")
    n, p = x.shape
    q, _ = np.linalg.qr(x)
    pinv = np.linalg.pinv(x)
    a = pinv.T @ c
    u = q.T @ a
    z = x @ linalg.null_space(c[None, :])  # nuisance space {X b : c b = 0}
    if z.shape[1]:
        qz, _ = np.linalg.qr(z)
        nuisance = np.eye(n) - qz @ qz.T
    else:
        nuisance = np.eye(n)
    return PermutationModel(q, u, nuisance, float(a @ a), n - p)


def permutation_kind(design: ArrayLike, contrast: ArrayLike) -> str:
    """``"sign"`` or ``"rows"``: the rearrangement that is valid for a design and contrast.

    Row permutation of Freedman-Lane residuals needs the constant in the nuisance space
    ``{X b : c b = 0}``: then the mean is a nuisance effect and exchangeable errors suffice (a
    covariate's slope, a two-group difference). Otherwise the contrast tests a mean (one-sample,
    paired, with or without nuisance covariates), which permuting rows cannot change: sign
    flipping (symmetric errors) is used, as randomise does for one-sample designs.

    Parameters
    ----------
    design : array_like, shape (N, p)
    contrast : array_like, shape (p,)

    Returns
    -------
    str
    """
    x = np.asarray(design, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    z = x @ linalg.null_space(c[None, :])
    ones = np.ones(x.shape[0])
    if z.shape[1] == 0:
        return "sign"
    fitted = z @ np.linalg.lstsq(z, ones, rcond=None)[0]
    return "rows" if np.allclose(fitted, ones, atol=1e-8) else "sign"


def permuted_t(
    data: ArrayLike, model: PermutationModel, perms: Permutations
) -> NDArray[np.float64]:
    """OLS t maps of every permutation of a batch.

    Parameters
    ----------
    data : array_like, shape (N, V)
        Effects (or paired differences) of V voxels.
    model : PermutationModel
    perms : Permutations
        K rearrangements.

    Returns
    -------
    ndarray of float64, shape (K, V)
        t; 0 where the residual sum of squares is 0.
    """
    y = np.asarray(data, dtype=np.float64)
    r = model.nuisance @ y
    k_count, n = perms.signs.shape
    p = model.q.shape[1]
    m = np.zeros((k_count, p, n))
    rows = np.arange(k_count)[:, None]
    for j in range(p):
        m[rows, j, perms.orders] = model.q[:, j][None, :] * perms.signs
    proj = (m.reshape(k_count * p, n) @ r).reshape(k_count, p, -1)  # Q' P_k R
    num = np.einsum("p,kpv->kv", model.u, proj)
    rss = np.einsum("nv,nv->v", r, r)[None, :] - np.einsum("kpv,kpv->kv", proj, proj)
    var = np.maximum(rss, 0.0) / model.dof * model.scale
    ok = var > 1e-30 * (np.abs(num) ** 2 + 1e-300)
    return np.divide(num, np.sqrt(var), out=np.zeros_like(num), where=ok)


def cluster_forming_t(z_threshold: float, dof: float) -> float:
    """t with the same upper tail probability as ``z_threshold`` (e.g. 2.3 -> p 0.0107)."""
    return float(stats.t.isf(stats.norm.sf(z_threshold), dof))


class _SparseLabeler:
    """Connected components of a subset of mask voxels, touching only that subset.

    Equivalent to ``ndimage.label`` of the subset's 3-D volume with the given connectivity, but
    its cost grows with the number of suprathreshold voxels instead of the volume.
    """

    def __init__(self, mask: NDArray[np.bool_], connectivity: int):
        padded_shape = tuple(n + 2 for n in mask.shape)
        coords = np.nonzero(mask)
        self.pos = np.ravel_multi_index(tuple(c + 1 for c in coords), padded_shape)
        self.lookup = np.full(int(np.prod(padded_shape)), -1, dtype=np.int64)
        structure = connectivity_structure(connectivity)
        offsets = np.argwhere(structure) - 1
        strides = np.array([padded_shape[1] * padded_shape[2], padded_shape[2], 1])
        flat = offsets @ strides
        self.offsets = flat[flat > 0]  # half the neighbourhood: each edge once

    def __call__(self, selected: NDArray[np.int64]) -> tuple[int, NDArray[np.int64]]:
        """Labels 0..n-1 of the selected voxels (indices into the mask's voxels)."""
        n = selected.size
        if n == 0:
            return 0, np.zeros(0, dtype=np.int64)
        pos = self.pos[selected]
        self.lookup[pos] = np.arange(n)
        src, dst = [], []
        for off in self.offsets:
            nb = self.lookup[pos + off]
            hit = nb >= 0
            if hit.any():
                src.append(np.nonzero(hit)[0])
                dst.append(nb[hit])
        self.lookup[pos] = -1
        if not src:
            return n, np.arange(n)
        i, j = np.concatenate(src), np.concatenate(dst)
        graph = sparse.coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
        count, labels = csgraph.connected_components(graph, directed=True, connection="weak")
        return int(count), labels


def _t_from_rho(rho: NDArray, dof: int, sign: float) -> NDArray:
    """One-column designs: ``t = sign sqrt(dof) rho / sqrt(1 - rho^2)`` (see permuted_rho)."""
    rho = sign * rho
    return np.sqrt(dof) * rho / np.sqrt(np.maximum(1.0 - rho * rho, 1e-300))


def permutation_batch(
    data: ArrayLike,
    design: GroupDesign | ArrayLike,
    contrast: str | ArrayLike,
    perms: Permutations,
    mask: ArrayLike,
    *,
    z_threshold: float | None = 2.3,
    connectivity: int = 26,
    tfce_dh: float | None = None,
    tfce_connectivity: int = 6,
    block: int = 32,
) -> dict[str, NDArray]:
    """Per-permutation maxima of one batch of permutations.

    Parameters
    ----------
    data : array_like, shape (N, V)
        Effects of the V in-mask voxels, in the order of ``np.nonzero(mask)`` (C order).
    design : GroupDesign or array_like, shape (N, p)
    contrast : str or array_like, shape (p,)
        One-sided: large positive t is the effect (use the negated contrast for the other side).
    perms : Permutations
        The batch (:func:`make_permutations`).
    mask : array_like of bool, shape (X, Y, Z)
        Group mask giving the 3-D geometry of the V voxels.
    z_threshold : float or None
        Cluster-forming threshold on the z scale; clusters are formed on
        ``t > cluster_forming_t(z_threshold, N - p)``. ``None`` skips cluster statistics.
    connectivity : {6, 18, 26}
        Cluster connectivity (FEAT/randomise: 26).
    tfce_dh : float, optional
        TFCE height step; when given, TFCE maxima are computed (H 2, E 0.5). Use the same step
        in every batch (``tfce_step`` of the observed t map).
    tfce_connectivity : {6, 18, 26}
        TFCE neighbourhood (FSL: 6 in 3-D).
    block : int
        Permutations whose statistics are held in memory at once (``block * V * 8`` bytes).

    Returns
    -------
    dict of str -> ndarray, each shape (K,)
        ``index`` (global permutation numbers), ``max_t``; ``max_extent`` (voxels) and
        ``max_mass`` with a threshold; ``max_tfce`` with ``tfce_dh``. A permutation with no
        suprathreshold voxel has extent and mass 0.

    Notes
    -----
    For one-column designs (one-sample, paired) the batch computes
    ``rho_k = q' P_k R / |R|`` per voxel with a single matrix product; ``t`` is a monotone
    function of ``rho`` (``t = sqrt(N - 1) rho / sqrt(1 - rho^2)``), so thresholds and maxima are
    taken on ``rho`` and ``t`` is evaluated only for the maxima and suprathreshold voxels.
    """
    vol_mask = np.asarray(mask, dtype=bool)
    if vol_mask.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {vol_mask.shape}")
    y = np.asarray(data, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != int(vol_mask.sum()):
        raise ValueError(
            f"data must have shape (N, {int(vol_mask.sum())}) for the mask's voxels, got {y.shape}"
        )
    model = prepare_model(design, contrast)
    if perms.signs.shape[1] != y.shape[0]:
        raise ValueError(f"permutations are for {perms.signs.shape[1]} rows, data has {y.shape[0]}")
    thr = None if z_threshold is None else cluster_forming_t(z_threshold, model.dof)
    labeler = _SparseLabeler(vol_mask, connectivity) if thr is not None else None
    k_total = perms.signs.shape[0]
    out: dict[str, NDArray] = {"index": perms.indices.copy(), "max_t": np.zeros(k_total)}
    if thr is not None:
        out["max_extent"] = np.zeros(k_total)
        out["max_mass"] = np.zeros(k_total)
    if tfce_dh is not None:
        out["max_tfce"] = np.zeros(k_total)
        graph = MaskGraph(vol_mask, tfce_connectivity)
    one_column = model.q.shape[1] == 1
    if one_column:
        r = model.nuisance @ y
        norm = np.sqrt(np.einsum("nv,nv->v", r, r))
        rn = np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)
        q = model.q[:, 0]
        sign = float(np.sign(model.u[0]))
        rho_thr = None if thr is None else thr / np.sqrt(model.dof + thr * thr)
        buffer = np.empty((min(block, k_total), y.shape[1]))
    for start in range(0, k_total, block):
        stop = min(start + block, k_total)
        part = Permutations(
            perms.signs[start:stop],
            perms.orders[start:stop],
            perms.indices[start:stop],
            perms.n_total,
            perms.exhaustive,
        )
        if one_column:
            m = np.zeros((stop - start, y.shape[0]))
            m[np.arange(stop - start)[:, None], part.orders] = sign * q[None, :] * part.signs
            # a reused output buffer avoids page-faulting a fresh block array every time
            stat = np.matmul(m, rn, out=buffer[: stop - start])  # sign * rho, t increases with it
            out["max_t"][start:stop] = _t_from_rho(stat.max(axis=1), model.dof, 1.0)
        else:
            stat = permuted_t(y, model, part)
            out["max_t"][start:stop] = stat.max(axis=1)
        for i in range(stop - start):
            row = stat[i]
            if thr is not None:
                sel = np.flatnonzero(row > (rho_thr if one_column else thr))
                if sel.size:
                    t_sel = _t_from_rho(row[sel], model.dof, 1.0) if one_column else row[sel]
                    _, labels = labeler(sel)
                    sizes = np.bincount(labels)
                    mass = np.bincount(labels, weights=t_sel - thr)
                    out["max_extent"][start + i] = sizes.max()
                    out["max_mass"][start + i] = mass.max()
            if tfce_dh is not None:
                t_row = _t_from_rho(row, model.dof, 1.0) if one_column else row
                out["max_tfce"][start + i] = tfce_masked(t_row, graph, tfce_dh).max()
    return out


def combine_batches(batches: list[dict[str, NDArray]], n_total: int) -> dict[str, NDArray]:
    """Join the outputs of :func:`permutation_batch` (any order) into the whole null.

    Parameters
    ----------
    batches : list of dict
        Outputs of every batch.
    n_total : int
        Number of permutations in the set (``Permutations.n_total``).

    Returns
    -------
    dict of str -> ndarray, shape (n_total,)
        The same keys, ordered by permutation index (identity first).

    Raises
    ------
    ValueError
        When a permutation is missing or repeated, or batches disagree on their keys.
    """
    if not batches:
        raise ValueError("no permutation batches to combine")
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise ValueError(f"batches have different statistics: {[sorted(b) for b in batches]}")
    index = np.concatenate([np.asarray(b["index"]) for b in batches])
    order = np.argsort(index, kind="stable")
    if index.size != n_total or not np.array_equal(index[order], np.arange(n_total)):
        missing = np.setdiff1d(np.arange(n_total), index)
        raise ValueError(
            f"batches hold {index.size} permutations for a set of {n_total}; "
            f"missing {missing[:10].tolist()}{'...' if missing.size > 10 else ''}"
        )
    return {k: np.concatenate([np.asarray(b[k]) for b in batches])[order] for k in sorted(keys)}


def fwe_p(observed: ArrayLike, null_max: ArrayLike) -> NDArray[np.float64]:
    """FWE-corrected p of observed values from per-permutation maxima.

    Parameters
    ----------
    observed : array_like, any shape
        Observed statistics (voxel t, cluster extents or masses, TFCE values).
    null_max : array_like, shape (K,)
        Maxima of all K permutations, the identity included.

    Returns
    -------
    ndarray of float64, shape of ``observed``
        ``#{k : null_max_k >= observed} / K`` (randomise's convention; >= 1 / K).
    """
    null = np.sort(np.asarray(null_max, dtype=np.float64).ravel())
    if null.size == 0:
        raise ValueError("no permutation maxima given")
    obs = np.asarray(observed, dtype=np.float64)
    # tolerance for values recomputed along another arithmetic path
    tol = 1e-9 * np.maximum(np.abs(obs), 1.0)
    count = null.size - np.searchsorted(null, obs - tol, side="left")
    return np.maximum(count, 1) / null.size
