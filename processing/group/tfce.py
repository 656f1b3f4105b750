"""Threshold-free cluster enhancement (Smith & Nichols 2009), FSL's discretisation.

``TFCE(v) = sum_{k >= 1, k dh <= stat(v)} e_k(v)^E (k dh)^H dh`` where ``e_k(v)`` is the number
of voxels in the connected component of ``{stat >= k dh}`` that contains ``v``. FSL (randomise
``-T``) uses ``H = 2``, ``E = 0.5``, 6-connectivity in 3-D and ``dh = max(stat) / 100`` of the
unpermuted statistic; permutations must reuse the same ``dh`` (pass it explicitly). Only positive
values are enhanced; enhance ``-stat`` for the negative side.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage, sparse
from scipy.sparse import csgraph

__all__ = ["MaskGraph", "connectivity_structure", "tfce", "tfce_masked", "tfce_step"]


def connectivity_structure(connectivity: int) -> NDArray[np.bool_]:
    """3-D neighbourhood: 6 (faces), 18 (faces and edges) or 26 (faces, edges, corners)."""
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, rank)


def tfce_step(stat: ArrayLike, n_steps: int = 100) -> float:
    """FSL's default height step: ``max(stat) / n_steps`` (1.0 when nothing is positive)."""
    top = float(np.max(np.asarray(stat))) if np.size(stat) else 0.0
    return top / n_steps if top > 0 else 1.0


def tfce(
    stat: ArrayLike,
    dh: float,
    *,
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
    connectivity: int = 6,
) -> NDArray[np.float64]:
    """TFCE of a 3-D statistic map (see the module docstring for the definition).

    Parameters
    ----------
    stat : array_like, shape (X, Y, Z)
        Statistic (t or z); non-positive and non-finite values get 0.
    dh : float
        Height step (> 0), the same for the observed map and every permutation.
    extent_exponent, height_exponent : float
        E and H (FSL: 0.5 and 2).
    connectivity : {6, 18, 26}

    Returns
    -------
    ndarray of float64, shape of ``stat``

    Notes
    -----
    One ``ndimage.label`` per height step, each on the bounding box of the voxels above it, so
    the cost is about ``max(stat) / dh`` labelings of a shrinking box.
    """
    if not dh > 0:
        raise ValueError(f"TFCE height step dh must be > 0, got {dh}")
    values = np.asarray(stat, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    out = np.zeros(values.shape)
    structure = connectivity_structure(connectivity)
    top = values.max() if values.size else 0.0
    n_levels = int(np.floor(top / dh + 1e-9))
    box = tuple(slice(0, n) for n in values.shape)
    for k in range(1, n_levels + 1):
        h = k * dh
        sub = values[box] >= h
        if not sub.any():
            break
        # shrink the box to the voxels above h (they only shrink as h grows)
        coords = [
            np.nonzero(np.any(sub, axis=tuple(a for a in range(3) if a != d)))[0] for d in range(3)
        ]
        box = tuple(
            slice(b.start + int(c[0]), b.start + int(c[-1]) + 1)
            for b, c in zip(box, coords, strict=True)
        )
        sub = values[box] >= h
        labels, n = ndimage.label(sub, structure)
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        gain = sizes**extent_exponent * (h**height_exponent * dh)
        gain[0] = 0.0
        out[box] += gain[labels]
    return out


class MaskGraph:
    """Neighbour pairs of the voxels of a 3-D mask (each pair once), for :func:`tfce_masked`.

    Parameters
    ----------
    mask : array_like of bool, shape (X, Y, Z)
    connectivity : {6, 18, 26}

    Attributes
    ----------
    src, dst : ndarray of int64, shape (E,)
        Indices into the mask's voxels (order of ``np.nonzero(mask)``) of neighbouring pairs.
    n_voxels : int
    """

    def __init__(self, mask: ArrayLike, connectivity: int = 6):
        m = np.asarray(mask, dtype=bool)
        padded = tuple(n + 2 for n in m.shape)
        pos = np.ravel_multi_index(tuple(c + 1 for c in np.nonzero(m)), padded)
        lookup = np.full(int(np.prod(padded)), -1, dtype=np.int64)
        lookup[pos] = np.arange(pos.size)
        offsets = (np.argwhere(connectivity_structure(connectivity)) - 1) @ np.array(
            [padded[1] * padded[2], padded[2], 1]
        )
        src, dst = [], []
        for off in offsets[offsets > 0]:
            nb = lookup[pos + off]
            hit = nb >= 0
            src.append(np.nonzero(hit)[0])
            dst.append(nb[hit])
        self.src = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
        self.dst = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
        self.n_voxels = int(pos.size)


def tfce_masked(
    values: ArrayLike,
    graph: MaskGraph,
    dh: float,
    *,
    extent_exponent: float = 0.5,
    height_exponent: float = 2.0,
) -> NDArray[np.float64]:
    """TFCE of the in-mask voxels of a map, equal to :func:`tfce` of the map filled into 3-D.

    Works on the graph of neighbouring voxels: voxels and edges (weight = the smaller value of
    the pair) are sorted once, so the suprathreshold set at each height is a prefix of each list,
    and one sparse connected-components pass per height touches only those voxels.

    Parameters
    ----------
    values : array_like, shape (V,)
        Statistic of the mask's voxels (order of ``np.nonzero(mask)``).
    graph : MaskGraph
        The mask's neighbour pairs (built once per mask and connectivity).
    dh, extent_exponent, height_exponent : float
        As in :func:`tfce`.

    Returns
    -------
    ndarray of float64, shape (V,)
    """
    if not dh > 0:
        raise ValueError(f"TFCE height step dh must be > 0, got {dh}")
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, 0.0)
    out = np.zeros(v.size)
    order = np.argsort(-v, kind="stable")
    sorted_vals = v[order]
    n_first = int(np.count_nonzero(v >= dh))
    if n_first == 0:
        return out
    rank = np.empty(v.size, dtype=np.int64)
    rank[order] = np.arange(v.size)
    weight = np.minimum(v[graph.src], v[graph.dst])
    keep = weight >= dh
    ew = weight[keep]
    eorder = np.argsort(-ew, kind="stable")
    es, ed, ew = rank[graph.src[keep]][eorder], rank[graph.dst[keep]][eorder], ew[eorder]
    acc = np.zeros(n_first)
    neg_vals, neg_w = -sorted_vals, -ew
    n_levels = int(np.floor(sorted_vals[0] / dh + 1e-9))
    ones = np.ones(es.size, dtype=np.int8)
    for k in range(1, n_levels + 1):
        h = k * dh
        n_v = int(np.searchsorted(neg_vals, -h, side="right"))
        if n_v == 0:
            break
        n_e = int(np.searchsorted(neg_w, -h, side="right"))
        g = sparse.csr_matrix((ones[:n_e], (es[:n_e], ed[:n_e])), shape=(n_v, n_v))
        _, labels = csgraph.connected_components(g, directed=True, connection="weak")
        sizes = np.bincount(labels).astype(np.float64)
        acc[:n_v] += (sizes**extent_exponent * (h**height_exponent * dh))[labels]
    out[order[:n_first]] = acc
    return out
