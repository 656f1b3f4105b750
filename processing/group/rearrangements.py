"""Rearrangements of the rows of a group design: sign flips and row permutations.

* Sign flipping (one-sample and paired differences; errors assumed symmetric): exhaustive when
  ``2^N <= n_perm`` (all ``2^N`` sign vectors, permutation ``k`` flips the rows whose bit is set
  in ``k``), otherwise ``n_perm`` random sign vectors.
* Row permutation (a covariate's slope, a two-group difference; errors assumed exchangeable):
  exhaustive when ``N! <= n_perm``, otherwise random.
* Exchangeability blocks (randomise's ``-e``): rows are permuted only among rows of the same
  block, e.g. within a site whose scanner gives it its own error variance. The exhaustive set is
  then the product of the blocks' permutations (mixed radix: permutation ``k`` takes digit
  ``k mod n_b!`` for the first block, and so on). Sign flips ignore blocks: flipping each
  subject's sign is valid under any independent, symmetric errors, equal variances or not.

Permutation 0 is always the identity (the observed labelling counts as one permutation); random
permutation ``k >= 1`` is drawn from ``numpy.random.default_rng([seed, k])``, so it does not
depend on how the ``n_perm`` permutations are split into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Permutations", "count_rearrangements", "make_permutations"]


@dataclass(frozen=True)
class Permutations:
    """A batch of rearrangements of N rows.

    Attributes
    ----------
    signs : ndarray of float64, shape (K, N)
        +-1 per row.
    orders : ndarray of int64, shape (K, N)
        Row ``i`` of the rearranged data is ``signs[k, i] * data[orders[k, i]]``.
    indices : ndarray of int64, shape (K,)
        Global permutation numbers (0 = identity).
    n_total : int
        Number of permutations in the whole set (all batches).
    exhaustive : bool
        Whether the whole set enumerates every rearrangement.
    """

    signs: NDArray[np.float64]
    orders: NDArray[np.int64]
    indices: NDArray[np.int64]
    n_total: int
    exhaustive: bool


def _nth_permutation(k: int, n: int) -> list[int]:
    """k-th permutation of range(n) in lexicographic order (k = 0 is the identity)."""
    items, out = list(range(n)), []
    for i in range(n, 0, -1):
        f = math.factorial(i - 1)
        out.append(items.pop(k // f))
        k %= f
    return out


def _block_rows(blocks: ArrayLike | None, n: int) -> list[NDArray[np.int64]]:
    """Row indices of each exchangeability block, in order of first appearance."""
    if blocks is None:
        return [np.arange(n, dtype=np.int64)]
    labels = np.asarray(blocks)
    if labels.shape != (n,):
        raise ValueError(
            f"exchangeability blocks must give one label per subject ({n}), got shape "
            f"{labels.shape}; pass the variance-group column of the design's subjects"
        )
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == b) for b in np.argsort(first)]


def _permute_within(
    k: int, rows: list[NDArray[np.int64]], n: int, exhaustive: bool, seed: int
) -> NDArray[np.int64]:
    """Row order of permutation ``k`` that moves rows only within their blocks."""
    order = np.arange(n, dtype=np.int64)
    rng = None if exhaustive else np.random.default_rng([seed, k])
    for members in rows:
        if exhaustive:
            radix = math.factorial(members.size)
            k, digit = divmod(k, radix)
            order[members] = members[_nth_permutation(digit, members.size)]
        else:
            order[members] = members[rng.permutation(members.size)]
    return order


def count_rearrangements(
    n_subjects: int, kind: str = "sign", blocks: ArrayLike | None = None
) -> int:
    """How many distinct rearrangements exist (the size of the exhaustive set).

    Parameters
    ----------
    n_subjects : int
        N, rows of the design.
    kind : {"sign", "rows"}
    blocks : array_like, shape (N,), optional
        Exchangeability block of each row (row permutations only).

    Returns
    -------
    int
        ``2^N`` for sign flips; the product of ``n_b!`` over blocks for row permutations.
    """
    if kind not in ("sign", "rows"):
        raise ValueError(f"kind must be 'sign' or 'rows', got {kind!r}")
    n = int(n_subjects)
    if kind == "sign":
        return 2**n
    return math.prod(math.factorial(members.size) for members in _block_rows(blocks, n))


def make_permutations(
    n_subjects: int,
    n_perm: int = 5000,
    *,
    kind: str = "sign",
    seed: int = 0,
    batch: int = 0,
    n_batches: int = 1,
    blocks: ArrayLike | None = None,
) -> Permutations:
    """Permutations of batch ``batch`` of ``n_batches``, deterministic given ``seed``.

    Parameters
    ----------
    n_subjects : int
        N, rows of the design.
    n_perm : int
        Permutations requested (identity included); fewer when the exhaustive set is smaller.
    kind : {"sign", "rows"}
        Sign flipping or row permutation (module docstring).
    seed : int
        Seed of the random set (ignored when exhaustive).
    batch, n_batches : int
        Which contiguous slice of the set to return (``numpy.array_split`` of 0..K-1).
    blocks : array_like, shape (N,), optional
        Exchangeability block of each row (any labels); row permutations stay within blocks.
        Ignored by sign flipping.

    Returns
    -------
    Permutations
    """
    n = int(n_subjects)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    if not 0 <= batch < n_batches:
        raise ValueError(f"batch {batch} out of range for {n_batches} batches")
    available = count_rearrangements(n, kind, blocks)
    rows = _block_rows(blocks, n)
    exhaustive = available <= n_perm
    total = available if exhaustive else int(n_perm)
    idx = np.array_split(np.arange(total, dtype=np.int64), n_batches)[batch]
    signs = np.ones((idx.size, n))
    orders = np.tile(np.arange(n, dtype=np.int64), (idx.size, 1))
    for row, k in enumerate(idx.tolist()):
        if k == 0:
            continue
        if kind == "rows":
            orders[row] = _permute_within(k, rows, n, exhaustive, seed)
        elif exhaustive:
            signs[row] = 1.0 - 2.0 * ((k >> np.arange(n)) & 1)
        else:
            signs[row] = 1.0 - 2.0 * np.random.default_rng([seed, k]).integers(0, 2, size=n)
    return Permutations(signs, orders, idx, total, exhaustive)
