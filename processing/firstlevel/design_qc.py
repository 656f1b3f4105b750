"""Design-matrix checks (size, rank, conditioning, collinearity) and an FSL-style design image.

Rank and condition number are computed on the matrix as given with every column scaled to unit
length, so that columns in different units (mm, radians, % signal) weigh alike. Variance
inflation factors use the demeaned columns: ``VIF_j = 1 / (1 - R_j^2)`` where ``R_j^2`` is the
fraction of column j's variance explained by the others (the diagonal of the inverse correlation
matrix).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

__all__ = ["DesignError", "DesignReport", "check_design", "plot_design"]

VIF_THRESHOLD = 10.0
_ZERO_COLUMN_RTOL = 1e-10  # a column this small relative to the largest is numerically zero
_NULL_WEIGHT_TOL = 1e-6  # weight of a unit-norm column in a null vector that counts


class DesignError(ValueError):
    """A design matrix that cannot be fitted (too many columns, rank deficient, non-finite)."""


@dataclass(frozen=True)
class DesignReport:
    """Result of :func:`check_design`.

    Attributes
    ----------
    n_scans, n_columns : int
        Matrix shape.
    rank : int
        Numerical rank (equals ``n_columns``; deficient designs raise).
    condition_number : float
        Ratio of the largest to the smallest singular value of the unit-length columns.
    vif : dict of str to float
        Variance inflation factor per column (NaN for a constant column).
    warnings : list of str
        Human-readable problems that do not stop the fit (collinearity).
    """

    n_scans: int
    n_columns: int
    rank: int
    condition_number: float
    vif: dict[str, float]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (a NaN or infinite VIF becomes None)."""
        out = asdict(self)
        out["vif"] = {k: (float(v) if np.isfinite(v) else None) for k, v in self.vif.items()}
        return out


def check_design(
    matrix: pd.DataFrame,
    n_scans: int,
    vif_threshold: float = VIF_THRESHOLD,
    of_interest: Sequence[str] | None = None,
) -> DesignReport:
    """Check a design matrix before fitting.

    Parameters
    ----------
    matrix : pandas.DataFrame, shape (n_scans, p)
        Design matrix with named columns.
    n_scans : int
        Number of volumes of the run the design is for.
    vif_threshold : float
        VIF above which a collinearity warning is given (conventionally 10).
    of_interest : sequence of str, optional
        Columns whose collinearity matters (task regressors). Nuisance columns such as motion
        parameters are often mutually correlated, which harms no contrast of interest, so only
        these columns are warned about; default all.

    Returns
    -------
    DesignReport
        Rank, condition number, VIF per column and warnings.

    Raises
    ------
    DesignError
        For a row count other than ``n_scans``, non-finite values, at least as many columns as
        volumes (no residual degrees of freedom) or linearly dependent columns (named).
    """
    names, values = _as_array(matrix, n_scans)
    scaled = _unit_columns(values)
    singular, vt = np.linalg.svd(scaled, full_matrices=False)[1:]
    tol = singular[0] * max(values.shape) * np.finfo(np.float64).eps
    rank = int(np.sum(singular > tol))
    if rank < len(names):
        involved = np.linalg.norm(vt[rank:].T, axis=1) > _NULL_WEIGHT_TOL
        dependent = [n for n, hit in zip(names, involved, strict=True) if hit]
        raise DesignError(
            f"design is rank deficient (rank {rank} for {len(names)} columns): the columns "
            f"{dependent} are linearly dependent (a duplicate, a sum of others or a column "
            "removed by the filter); drop one of them"
        )
    vif = _vif(values)
    return DesignReport(
        n_scans=int(n_scans),
        n_columns=len(names),
        rank=rank,
        condition_number=float(singular[0] / singular[-1]),
        vif=dict(zip(names, vif.tolist(), strict=True)),
        warnings=_vif_warnings(names, values, vif, vif_threshold, of_interest),
    )


def _as_array(matrix: pd.DataFrame, n_scans: int) -> tuple[list[str], NDArray[np.float64]]:
    """Column names and values, after checking shape and finiteness."""
    if not isinstance(matrix, pd.DataFrame):
        raise TypeError(f"matrix must be a pandas DataFrame, got {type(matrix).__name__}")
    n_rows, n_cols = matrix.shape
    if n_rows != n_scans:
        raise DesignError(f"design has {n_rows} rows but the run has {n_scans} volumes")
    if n_cols == 0:
        raise DesignError("design has no columns; model at least one condition")
    if n_cols >= n_scans:
        raise DesignError(
            f"design has {n_cols} columns for {n_scans} volumes, leaving no residual degrees of "
            "freedom; drop confounds or conditions (or model more volumes)"
        )
    values = matrix.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DesignError(f"design column {matrix.columns[col]!r} is non-finite at row {row}")
    return [str(c) for c in matrix.columns], values


def _unit_columns(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Columns scaled to unit length; numerically zero columns are set to exactly zero."""
    norms = np.linalg.norm(values, axis=0)
    zero = norms <= _ZERO_COLUMN_RTOL * norms.max()
    return np.where(zero, 0.0, values / np.where(zero, 1.0, norms))


def _vif(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """VIF per column from the demeaned columns (inf if explained exactly, NaN if constant)."""
    centred = values - values.mean(axis=0)
    total = np.sum(centred**2, axis=0)
    live = np.flatnonzero(total > _ZERO_COLUMN_RTOL * max(total.max(), np.finfo(float).tiny))
    vif = np.full(values.shape[1], np.nan)
    for j in live:
        others = centred[:, live[live != j]]
        residual = centred[:, j]
        if others.shape[1]:
            residual = residual - others @ np.linalg.lstsq(others, residual, rcond=None)[0]
        unexplained = np.sum(residual**2) / total[j]
        vif[j] = np.inf if unexplained <= _ZERO_COLUMN_RTOL else 1.0 / unexplained
    return vif


def _vif_warnings(
    names: list[str],
    values: NDArray[np.float64],
    vif: NDArray[np.float64],
    threshold: float,
    of_interest: Sequence[str] | None = None,
) -> list[str]:
    """One warning per column whose VIF exceeds the threshold, naming its closest partner."""
    watched = np.array([of_interest is None or n in of_interest for n in names])
    flagged = np.flatnonzero((vif > threshold) & watched)
    if flagged.size == 0:
        return []
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.nan_to_num(np.corrcoef(values, rowvar=False))
    np.fill_diagonal(corr, 0.0)
    out = []
    for j in flagged:
        partner = int(np.argmax(np.abs(corr[j])))
        out.append(
            f"collinearity: column {names[j]!r} has VIF {vif[j]:.1f} > {threshold:g}; it is "
            f"most correlated with {names[partner]!r} (r = {corr[j, partner]:.3f}). Its estimate "
            "will be unstable: drop or combine one of these columns"
        )
    return out


def plot_design(matrix: pd.DataFrame, path: str | os.PathLike[str], title: str = "") -> Path:
    """Save a grey-scale image of the design, like FSL's ``design.png``.

    Each column is scaled to [0, 1] (its minimum black, maximum white; a constant column is mid
    grey); time runs down the image and columns across, labelled with their names.

    Parameters
    ----------
    matrix : pandas.DataFrame, shape (n_scans, p)
        Design matrix with named columns.
    path : str or path-like
        Output PNG file; its folder must exist.
    title : str
        Figure title (for example the run's name).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    values = matrix.to_numpy(dtype=np.float64)
    low, span = values.min(axis=0), np.ptp(values, axis=0)
    image = np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.5)
    n_scans, n_cols = image.shape
    fig = Figure(figsize=(max(3.0, 0.45 * n_cols + 1.5), 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n_cols), [str(c) for c in matrix.columns], rotation=90, fontsize=8)
    ax.set_ylabel(f"volume (0 to {n_scans - 1})")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out
