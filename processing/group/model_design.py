"""Group design of one analysis from its ``Model.X``, contrast and the participants' variables.

:func:`variable_table` looks up the Dataset-level variables (``participants.tsv`` columns, then
``phenotype/*.tsv`` columns) of the subjects in a model; :func:`model_design` turns ``Model.X``
and a contrast into a :class:`~processing.group.designs.GroupDesign` following the forms listed
in :mod:`processing.group.model` (intercept, demeaned numeric covariates, factor indicators).

Subjects with a missing value in any variable the model uses (a covariate, a factor or the
variance-group column) are dropped and listed with the column, instead of failing the analysis.

Permutation method (:func:`processing.group.permutation.permutation_kind`): sign flipping when
the contrast tests a mean (one-sample, paired, and their versions with nuisance covariates),
row permutation with Freedman-Lane otherwise (a covariate's slope, a two-group difference).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from processing.group.designs import GroupDesign, check_design, variance_group_index
from processing.group.model import INTERCEPT
from processing.group.permutation import permutation_kind

__all__ = ["ModelDesign", "model_design", "variable_table"]


@dataclass(frozen=True)
class ModelDesign:
    """A design, the tested contrast and how to permute it.

    Attributes
    ----------
    design : GroupDesign
        Rows: the subjects kept (``design.subjects``); ``design.dropped`` those left out.
    contrast : ndarray, shape (p,)
        Weights of the tested contrast over ``design.columns``.
    name : str
        Contrast name (``mean`` for the DummyContrasts intercept).
    permutation : str
        ``sign`` or ``rows`` (module docstring).
    dropped : dict of str -> str
        Subject -> why it was left out (the missing variables).
    """

    design: GroupDesign
    contrast: NDArray[np.float64]
    name: str
    permutation: str
    dropped: dict[str, str]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    if _missing(value) or (isinstance(value, np.floating) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _by_subject(table: pd.DataFrame, column: str, subjects: Sequence[str]) -> list[Any]:
    ids = table["participant_id"].astype(str)
    if ids.duplicated().any():
        twice = sorted(set(ids[ids.duplicated()]))
        raise ValueError(f"column {column!r}: participants {twice} have more than one row")
    values = dict(zip(ids, table[column], strict=True))
    return [_plain(values.get(f"sub-{s}")) for s in subjects]


def variable_table(
    participants: pd.DataFrame | None,
    phenotype: Mapping[str, pd.DataFrame],
    subjects: Sequence[str],
    variables: Sequence[str],
    sessions: Sequence[str | None] = (None,),
) -> dict[str, list[Any]]:
    """Values of Dataset-level variables for ``subjects`` (None where missing).

    Parameters
    ----------
    participants : DataFrame or None
        ``participants.tsv`` (a ``participant_id`` column of ``sub-<label>``).
    phenotype : mapping of str -> DataFrame
        ``phenotype/<name>.tsv`` tables; a table with ``session_id`` has one row per session.
    subjects : sequence of str
        Subject labels without ``sub-``.
    variables : sequence of str
        Columns to look up: participants.tsv first, then the phenotype tables.
    sessions : sequence of str or None
        The analysis's sessions: a per-session phenotype column is read at that session, which
        needs an analysis of one session.

    Returns
    -------
    dict of str -> list
        One value per subject, plain Python values (JSON-ready).

    Raises
    ------
    ValueError
        An unknown column (listing the available ones) or a per-session column used by a model
        that combines sessions.
    """
    out: dict[str, list[Any]] = {}
    tables = {"participants.tsv": participants} if participants is not None else {}
    tables.update({f"phenotype/{k}.tsv": v for k, v in phenotype.items()})
    for name in variables:
        where = next((k for k, t in tables.items() if name in t.columns), None)
        if where is None or name in ("participant_id", "session_id"):
            available = sorted({c for t in tables.values() for c in t.columns}
                               - {"participant_id", "session_id"})  # fmt: skip
            raise ValueError(
                f"the group model uses the variable {name!r}, which is not a column of "
                f"participants.tsv or phenotype/*.tsv; available columns: {available}. Fix the "
                "name in the Dataset node's Model.X or boldcloud.group_level.variance_groups"
            )
        table = tables[where]
        if "session_id" in table.columns:
            if len(sessions) != 1 or sessions[0] is None:
                raise ValueError(
                    f"{where} column {name!r} has one value per session, but this model "
                    f"combines sessions {list(sessions)}; put one value per subject (e.g. the "
                    "pre-training score) in participants.tsv and use that column"
                )
            table = table[table["session_id"].astype(str) == f"ses-{sessions[0]}"]
        out[name] = _by_subject(table, name, subjects)
    return out


def _numeric(values: Sequence[Any]) -> NDArray[np.float64] | None:
    """Float values (NaN where missing), or None when some value is not a number."""
    try:
        return np.array([np.nan if _missing(v) else float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _level(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _columns(x: Sequence[str], table: Mapping[str, list], rows: NDArray, label: str):
    """Design columns ``(names, values)`` of X for the kept rows."""
    names, cols = [], []
    n = rows.size
    for entry in x:
        if entry == INTERCEPT:
            names.append("intercept")
            cols.append(np.ones(n))
            continue
        var, _, level = entry.partition(".")
        values = [table[var][i] for i in rows]
        numbers = _numeric(values)
        if level:
            have = sorted({_level(v) for v in values})
            if level not in have:
                raise ValueError(f"{label}: Model.X {entry!r}: column {var!r} has no value "
                                 f"{level!r}; its values are {have}")  # fmt: skip
            names.append(entry)
            cols.append(np.array([_level(v) == level for v in values], dtype=np.float64))
        elif numbers is not None:
            names.append(var)
            cols.append(numbers - numbers.mean())  # demeaned over the subjects in the model
        else:
            if INTERCEPT in x:
                raise ValueError(
                    f"{label}: Model.X has the intercept 1 and the factor {var!r}, whose "
                    f"indicator columns {var}.<level> already sum to it; drop 1 from X (cell "
                    f"means: contrast e.g. [{var}.A, {var}.B] weights [1, -1])"
                )
            for lev in sorted({_level(v) for v in values}):
                names.append(f"{var}.{lev}")
                cols.append(np.array([_level(v) == lev for v in values], dtype=np.float64))
    return names, cols


def _contrast(names: list[str], conditions: Sequence[str], weights: Sequence[float], label: str):
    c = np.zeros(len(names))
    for cond, w in zip(conditions, weights, strict=True):
        key = "intercept" if cond in (INTERCEPT, "intercept") else cond
        if key not in names:
            raise ValueError(
                f"{label}: contrast condition {cond!r} is not a column of the group design "
                f"{names}; name design columns (1 or intercept, covariates, <factor>.<level>)"
            )
        c[names.index(key)] += float(w)
    if not np.any(c):
        raise ValueError(f"{label}: contrast weights {list(weights)} are all zero")
    return c


def model_design(
    x: Sequence[str],
    conditions: Sequence[str],
    weights: Sequence[float],
    subjects: Sequence[str],
    table: Mapping[str, Sequence[Any]],
    *,
    variance_groups: str | None = None,
    name: str = "mean",
    kind: str = "one_sample",
    label: str = "group model",
) -> ModelDesign:
    """Design matrix, contrast and permutation method of one analysis.

    Parameters
    ----------
    x : sequence of str
        ``Model.X`` (``"1"`` the intercept; see :mod:`processing.group.model`).
    conditions, weights : sequence
        The t contrast over design columns (``("1",), (1.0,)``: the group mean).
    subjects : sequence of str
        Subjects (rows) in order.
    table : mapping of column -> sequence
        Values of every variable X and ``variance_groups`` use, aligned with ``subjects``
        (:func:`variable_table`); None or NaN where missing.
    variance_groups : str, optional
        Column giving the FLAME1 variance group of each subject (default one group).
    name, kind, label : str
        Contrast name, design kind recorded in the design, and the analysis named in errors.

    Returns
    -------
    ModelDesign

    Raises
    ------
    ValueError
        Naming the analysis: an unknown column or level, fewer than 3 subjects left (listing the
        dropped ones), a rank-deficient design, or a contrast over unknown columns.
    """
    subjects = [str(s) for s in subjects]
    variables = [e.partition(".")[0] for e in x if e != INTERCEPT]
    variables += [variance_groups] if variance_groups else []
    for var in variables:
        if var not in table:
            raise ValueError(f"{label}: no values for {var!r}; columns given: {sorted(table)}")
    dropped: dict[str, list[str]] = {}
    for var in dict.fromkeys(variables):
        for i, value in enumerate(table[var]):
            if _missing(value):
                dropped.setdefault(subjects[i], []).append(var)
    rows = np.array([i for i, s in enumerate(subjects) if s not in dropped], dtype=np.int64)
    kept = [subjects[i] for i in rows]
    why = {s: f"missing {', '.join(v)} (group model variables)" for s, v in dropped.items()}
    names, cols = _columns(x, table, rows, label)
    try:
        matrix = check_design(np.column_stack(cols) if cols else np.zeros((rows.size, 0)), names)
        vg_labels = [table[variance_groups][i] for i in rows] if variance_groups else None
        groups, group_names = variance_group_index(vg_labels, rows.size)
    except ValueError as err:
        left = f" (dropped for missing values: {sorted(why)})" if why else ""
        raise ValueError(f"{label}: {err}{left}") from err
    c = _contrast(names, conditions, weights, label)
    design = GroupDesign(matrix, tuple(names), {name: c}, groups, group_names, kind, tuple(kept),
                         tuple(sorted(why)))  # fmt: skip
    return ModelDesign(design, c, name, permutation_kind(matrix, c), why)
