"""Small report figures: a correlation scatter plot and a group design matrix (Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["save_design_matrix_png", "save_scatter_png"]


def save_scatter_png(
    x: ArrayLike,
    y: ArrayLike,
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Scatter plot with point labels and the least-squares line (finite pairs only).

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Values; pairs with a NaN are left out.
    labels : sequence of str, length n
        Point labels (e.g. subject ids).
    path : str or Path
        Output PNG (parent folders created).
    title, xlabel, ylabel : str
        Figure title and axis labels.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or len(labels) != xs.size:
        raise ValueError(f"x {xs.shape}, y {ys.shape} and {len(labels)} labels must match")
    ok = np.isfinite(xs) & np.isfinite(ys)
    fig, ax = plt.subplots(figsize=(4, 3.4), dpi=100)
    ax.scatter(xs[ok], ys[ok], s=18, color="tab:blue")
    for xi, yi, lab in zip(xs[ok], ys[ok], np.asarray(labels, dtype=object)[ok], strict=True):
        ax.annotate(str(lab), (xi, yi), fontsize=6, alpha=0.6)
    if ok.sum() >= 2 and np.ptp(xs[ok]) > 0:
        slope, icept = np.polyfit(xs[ok], ys[ok], 1)
        line = np.linspace(xs[ok].min(), xs[ok].max(), 10)
        ax.plot(line, slope * line + icept, color="grey", lw=1)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def save_design_matrix_png(
    matrix: ArrayLike,
    columns: Sequence[str],
    rows: Sequence[str],
    path: str | Path,
    *,
    contrast: ArrayLike | None = None,
    title: str = "",
) -> Path:
    """A group design as FSL draws it: one grey-scale row per subject, one column per regressor.

    Each column is scaled to [0, 1] (minimum black, maximum white; a constant column is white),
    with the contrast weights written above the columns.

    Parameters
    ----------
    matrix : array_like, shape (n_subjects, n_columns)
        Design matrix.
    columns : sequence of str
        Column names.
    rows : sequence of str
        Row labels (subjects).
    path : str or Path
        Output PNG (parent folders created).
    contrast : array_like, shape (n_columns,), optional
        Contrast weights.
    title : str
        Figure title.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.atleast_2d(np.asarray(matrix, dtype=np.float64))
    if values.shape != (len(rows), len(columns)):
        raise ValueError(f"design {values.shape} does not match {len(rows)} rows x "
                         f"{len(columns)} columns")  # fmt: skip
    low, span = values.min(axis=0), np.ptp(values, axis=0)
    image = np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 1.0)
    n_rows, n_cols = image.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n_cols, 1.2 + 0.22 * n_rows), dpi=100)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    names = [str(c) for c in columns]
    if contrast is not None:
        names = [f"{n}\n[{w:g}]" for n, w in zip(names, np.ravel(contrast), strict=True)]
    ax.set_xticks(np.arange(n_cols), names, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks(np.arange(n_rows), [str(r) for r in rows], fontsize=7)
    ax.set_title(title, fontsize=8, pad=24)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; returns the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
