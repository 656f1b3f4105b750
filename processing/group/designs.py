"""Group-level design matrices and contrasts (FSL/FEAT higher-level conventions).

A group design has one row per subject (or per subject difference, for paired designs) and one
column per regressor. Covariates are demeaned over the subjects in the design, so the group
columns keep their meaning (group means at the average covariate value), as FEAT does when
"demean EVs" is ticked. Variance groups (e.g. one per site) are integer labels per row, used by
FLAME1 to estimate one between-subject variance per group.

Supported kinds:

* ``one_sample``: a column of ones (``mean``), plus optional covariates.
* ``paired``: the subject-level difference post - pre of the session fixed-effects maps (see
  :func:`paired_differences`; variance = sum of the two variances), modelled by a one-sample
  design; contrast ``mean`` is post - pre.
* ``two_groups``: one indicator column per group (``group-<A>``, ``group-<B>``), contrasts for each
  group mean and both differences, plus optional covariates.
* ``glm``: any design a study's Dataset node describes (``Model.X``: intercept, covariates,
  factor indicators), built by :func:`processing.group.model_design.model_design`.

Every contrast is a 1-D array of one weight per design column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MIN_SUBJECTS",
    "GroupDesign",
    "check_design",
    "one_sample_design",
    "paired_differences",
    "two_group_design",
    "variance_group_index",
]

MIN_SUBJECTS = 3


@dataclass(frozen=True)
class GroupDesign:
    """A group design matrix with named columns, contrasts and variance groups.

    Attributes
    ----------
    matrix : ndarray, shape (N, p)
        Design matrix, one row per subject (per difference for paired designs).
    columns : tuple of str
        Column names, length p.
    contrasts : dict of str -> ndarray, shape (p,)
        Named t contrasts.
    variance_groups : ndarray of int, shape (N,)
        Variance group index per row, 0 .. G-1.
    group_names : tuple of str
        Name of each variance group, length G.
    kind : str
        ``one_sample``, ``paired``, ``two_groups`` or ``glm``.
    subjects : tuple of str
        Subject label per row.
    dropped : tuple of str
        Subjects removed because a model variable was missing
        (see :func:`processing.group.model_design.model_design`).
    """

    matrix: NDArray[np.float64]
    columns: tuple[str, ...]
    contrasts: dict[str, NDArray[np.float64]]
    variance_groups: NDArray[np.int64]
    group_names: tuple[str, ...]
    kind: str
    subjects: tuple[str, ...]
    dropped: tuple[str, ...] = field(default=())

    @property
    def n_subjects(self) -> int:
        """Number of rows N."""
        return int(self.matrix.shape[0])

    @property
    def dof(self) -> int:
        """OLS residual degrees of freedom ``N - p``."""
        return int(self.matrix.shape[0] - self.matrix.shape[1])

    def contrast(self, name_or_weights: str | ArrayLike) -> NDArray[np.float64]:
        """Weights of a named contrast, or check given weights against the columns."""
        if isinstance(name_or_weights, str):
            if name_or_weights not in self.contrasts:
                raise ValueError(
                    f"unknown contrast {name_or_weights!r}; this design has "
                    f"{sorted(self.contrasts)}"
                )
            return self.contrasts[name_or_weights]
        c = np.asarray(name_or_weights, dtype=np.float64)
        if c.shape != (len(self.columns),):
            raise ValueError(
                f"contrast {c.tolist()} must have one weight per column {list(self.columns)}"
            )
        if not np.any(c):
            raise ValueError("contrast weights are all zero")
        return c


def check_design(matrix: ArrayLike, columns: Sequence[str] | None = None) -> NDArray[np.float64]:
    """Validate a design matrix: finite, at least 3 rows, N > p, full column rank.

    Parameters
    ----------
    matrix : array_like, shape (N, p)
    columns : sequence of str, optional
        Column names used in error messages.

    Returns
    -------
    ndarray of float64, shape (N, p)

    Raises
    ------
    ValueError
        Naming the problem: too few subjects, ``N <= p``, non-finite values or the columns
        that make the design rank deficient.
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"design must be 2-D (subjects, regressors), got shape {x.shape}")
    names = list(columns) if columns is not None else [f"column {j}" for j in range(x.shape[1])]
    n, p = x.shape
    if n < MIN_SUBJECTS:
        raise ValueError(f"a group model needs at least {MIN_SUBJECTS} subjects, got {n}")
    if n <= p:
        raise ValueError(
            f"{n} subjects for {p} regressors {names}: need N > p for any residual dof"
        )
    if not np.all(np.isfinite(x)):
        bad = sorted({names[j] for j in np.nonzero(~np.isfinite(x))[1]})
        raise ValueError(f"design columns {bad} have missing or infinite values")
    rank = np.linalg.matrix_rank(x)
    if rank < p:
        zero = [names[j] for j in range(p) if not np.any(x[:, j])]
        # columns that are a linear combination of the previous ones
        dependent = [
            names[j]
            for j in range(1, p)
            if np.linalg.matrix_rank(x[:, : j + 1]) == np.linalg.matrix_rank(x[:, :j])
        ]
        detail = f"all-zero columns {zero}" if zero else f"dependent columns {dependent}"
        raise ValueError(
            f"design is rank deficient (rank {rank} < {p} columns {names}): {detail}; "
            "drop a covariate that is constant or repeats another"
        )
    return x


def _covariate_columns(
    covariates: Mapping[str, ArrayLike] | None, n: int
) -> tuple[list[str], list[NDArray[np.float64]]]:
    names, cols = [], []
    for name, values in (covariates or {}).items():
        v = np.asarray(values, dtype=np.float64)
        if v.shape != (n,):
            raise ValueError(f"covariate {name!r} has shape {v.shape}, expected ({n},)")
        if not np.all(np.isfinite(v)):
            raise ValueError(
                f"covariate {name!r} has missing values at rows "
                f"{np.nonzero(~np.isfinite(v))[0].tolist()}"
            )
        names.append(name)
        cols.append(v - v.mean())
    return names, cols


def variance_group_index(
    labels: Sequence | None, n: int
) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Variance group index per row (0 .. G-1, sorted label order) and the group names.

    Parameters
    ----------
    labels : sequence, optional
        One label per row (e.g. the site); None: a single group ``all``.
    n : int
        Number of rows.

    Returns
    -------
    index : ndarray of int64, shape (n,)
    names : tuple of str

    Raises
    ------
    ValueError
        When the labels do not match the rows, or a group has fewer than 2 subjects.
    """
    if labels is None:
        return np.zeros(n, dtype=np.int64), ("all",)
    lab = [str(v) for v in labels]
    if len(lab) != n:
        raise ValueError(f"variance groups have {len(lab)} labels for {n} subjects")
    names = tuple(sorted(set(lab)))
    idx = np.array([names.index(v) for v in lab], dtype=np.int64)
    counts = np.bincount(idx, minlength=len(names))
    if np.any(counts < 2):
        small = [names[g] for g in np.nonzero(counts < 2)[0]]
        raise ValueError(
            f"variance groups {small} have fewer than 2 subjects (counts "
            f"{dict(zip(names, counts.tolist(), strict=True))}); merge them with another group "
            "or set boldcloud.group_level.variance_groups to null"
        )
    return idx, names


def _subjects(subjects: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if subjects is None:
        return tuple(f"row-{i}" for i in range(n))
    if len(subjects) != n:
        raise ValueError(f"{len(subjects)} subject labels for {n} rows")
    return tuple(str(s) for s in subjects)


def one_sample_design(
    n_subjects: int,
    *,
    covariates: Mapping[str, ArrayLike] | None = None,
    variance_groups: Sequence | None = None,
    subjects: Sequence[str] | None = None,
    kind: str = "one_sample",
) -> GroupDesign:
    """Group mean (column ``mean``), plus demeaned covariates.

    Parameters
    ----------
    n_subjects : int
        N, number of rows.
    covariates : mapping of str -> array_like (N,), optional
        Covariates, demeaned here; each gets a contrast of its own name.
    variance_groups : sequence, optional
        One label per row (e.g. the site); default a single group.
    subjects : sequence of str, optional
        Row labels.
    kind : str
        Recorded in the design (``paired`` for post - pre differences).

    Returns
    -------
    GroupDesign
        Contrasts ``mean`` (and ``-mean``) and one per covariate.
    """
    n = int(n_subjects)
    if n < MIN_SUBJECTS:
        raise ValueError(f"a group model needs at least {MIN_SUBJECTS} subjects, got {n}")
    names, cols = _covariate_columns(covariates, n)
    columns = ["mean", *names]
    x = check_design(np.column_stack([np.ones(n), *cols]), columns)
    p = x.shape[1]
    contrasts = {"mean": np.eye(p)[0], "-mean": -np.eye(p)[0]}
    contrasts.update({name: np.eye(p)[j + 1] for j, name in enumerate(names)})
    groups, group_names = variance_group_index(variance_groups, n)
    return GroupDesign(
        x, tuple(columns), contrasts, groups, group_names, kind, _subjects(subjects, n)
    )


def two_group_design(
    groups: Sequence,
    *,
    covariates: Mapping[str, ArrayLike] | None = None,
    variance_groups: Sequence | None = None,
    subjects: Sequence[str] | None = None,
) -> GroupDesign:
    """Two group means (FEAT "two groups, unpaired"), plus demeaned covariates.

    Parameters
    ----------
    groups : sequence, shape (N,)
        Group label of each subject; exactly two distinct labels A < B (sorted).
    covariates, variance_groups, subjects
        As in :func:`one_sample_design`. Variance groups default to the two groups (FEAT's
        default for unpaired two-group designs).

    Returns
    -------
    GroupDesign
        Columns ``group-A``, ``group-B``, covariates; contrasts ``A``, ``B``, ``A-B``, ``B-A``.
    """
    lab = [str(g) for g in groups]
    levels = sorted(set(lab))
    if len(levels) != 2:
        raise ValueError(f"a two-group design needs exactly 2 group labels, got {levels}")
    n = len(lab)
    names, cols = _covariate_columns(covariates, n)
    ind = [np.array([v == lev for v in lab], dtype=np.float64) for lev in levels]
    columns = [f"group-{lev}" for lev in levels] + names
    x = check_design(np.column_stack([*ind, *cols]), columns)
    p = x.shape[1]
    a, b = levels
    e = np.eye(p)
    contrasts = {a: e[0], b: e[1], f"{a}-{b}": e[0] - e[1], f"{b}-{a}": e[1] - e[0]}
    contrasts.update({name: e[j + 2] for j, name in enumerate(names)})
    vg, vg_names = variance_group_index(lab if variance_groups is None else variance_groups, n)
    return GroupDesign(
        x, tuple(columns), contrasts, vg, vg_names, "two_groups", _subjects(subjects, n)
    )


def paired_differences(
    effect_pre: ArrayLike,
    variance_pre: ArrayLike,
    effect_post: ArrayLike,
    variance_post: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Subject-level post - pre difference of session effects and its variance.

    The two sessions are independent estimates, so ``Var(post - pre) = Var(post) + Var(pre)``.

    Parameters
    ----------
    effect_pre, variance_pre, effect_post, variance_post : array_like, shape (N, V)
        Session fixed-effects COPE and VARCOPE maps, rows in the same subject order.

    Returns
    -------
    difference, variance : ndarray, shape (N, V)
    """
    arrays = [
        np.asarray(a, dtype=np.float64)
        for a in (effect_pre, variance_pre, effect_post, variance_post)
    ]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(
            "pre/post effects and variances must have the same shape, got "
            f"{[a.shape for a in arrays]}"
        )
    e0, v0, e1, v1 = arrays
    return e1 - e0, v0 + v1
