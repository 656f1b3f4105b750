"""First-level design matrix built as FSL FEAT builds it.

Every task column is a kernel sampled on FEAT's 0.05 s grid passed to
:func:`~processing.firstlevel.hrf.convolve_events` (plateau-1 normalisation, sampled at the middle
of each volume). Temporal derivatives are the central difference of the convolved regressor,
orthogonalised against their parent. Confounds are appended unconvolved. Every column then gets
the data's high-pass filter (:func:`~processing.preprocess.highpass.highpass_fsl`, no mean added
back) and is demeaned; there is no intercept column (data and design are demeaned, as in FEAT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from processing.firstlevel.hrf import convolve_events, double_gamma_hrf, fir_kernel, glover_hrf
from processing.preprocess.highpass import highpass_fsl

__all__ = ["HRF_MODELS", "Design", "build_design", "temporal_derivative"]

GRID_DT_S = 0.05
HRF_MODELS = ("fsl", "spm", "glover", "fir")
_REQUIRED_EVENT_COLUMNS = ("onset", "duration", "trial_type")
_HEIGHT_COLUMNS = ("modulation", "amplitude")


@dataclass(frozen=True, eq=False)
class Design:
    """A run's filtered, demeaned design matrix and what each column means.

    Attributes
    ----------
    matrix : pandas.DataFrame, shape (n_scans, p), float64
        One column per regressor, in order: each kept condition (then its derivative, or its FIR
        delays), then the confounds.
    conditions : tuple of str
        Conditions kept (those with events in this run), in model order.
    regressor_parent : dict of str to str
        Each column's condition; a confound maps to itself.
    dropped : dict of str to str
        Conditions left out of this run's design, with the reason.
    peak_heights : dict of str to float
        Each column's max - min after filtering (FSL's regressor height, for % signal change).
    hrf_model : str
        ``"fsl"``, ``"spm"``, ``"glover"`` or ``"fir"``.
    tr : float
        Repetition time in seconds.
    highpass_cutoff_s : float or None
        High-pass cutoff applied to every column (None: unfiltered).
    """

    matrix: pd.DataFrame
    conditions: tuple[str, ...]
    regressor_parent: dict[str, str]
    dropped: dict[str, str]
    peak_heights: dict[str, float]
    hrf_model: str
    tr: float
    highpass_cutoff_s: float | None = field(default=None)

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names in matrix order."""
        return tuple(self.matrix.columns)

    def column_index(self, name: str) -> int:
        """Position of column ``name`` in the matrix; KeyError listing the known columns."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise KeyError(
                f"no design column {name!r}; known columns: {list(self.columns)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata for a sidecar (the matrix values belong in a TSV)."""
        return {
            "columns": list(self.columns),
            "n_scans": int(self.matrix.shape[0]),
            "conditions": list(self.conditions),
            "regressor_parent": dict(self.regressor_parent),
            "dropped": dict(self.dropped),
            "peak_heights": {k: float(v) for k, v in self.peak_heights.items()},
            "hrf_model": self.hrf_model,
            "tr": float(self.tr),
            "highpass_cutoff_s": self.highpass_cutoff_s,
            "intercept": False,
            "demeaned": True,
        }


def build_design(
    events: pd.DataFrame,
    n_scans: int,
    tr: float,
    conditions: Sequence[str],
    *,
    hrf_model: str = "fsl",
    derivative_conditions: Sequence[str] = (),
    fir_delays: int | None = None,
    confounds: pd.DataFrame | None = None,
    highpass_cutoff_s: float | None = 100.0,
) -> Design:
    """Build a run's first-level design matrix as FSL FEAT does.

    Parameters
    ----------
    events : pandas.DataFrame, shape (n_events, >= 3)
        BIDS events: ``onset`` and ``duration`` in seconds from the first volume's start,
        ``trial_type``, and optionally ``modulation`` or ``amplitude`` (event height, default 1).
        Rows of other trial types are ignored.
    n_scans : int
        Number of volumes in the run.
    tr : float
        Repetition time in seconds.
    conditions : sequence of str
        Trial types to model, in column order. A condition without events in this run is left
        out and recorded in ``Design.dropped``.
    hrf_model : {"fsl", "spm", "glover", "fir"}
        FEAT double gamma (``"spm"`` is the same kernel), nilearn's Glover HRF, or finite
        impulse response (``fir_delays`` TR-wide windows, columns ``<cond>_delay_<k>``; see
        :func:`~processing.firstlevel.hrf.fir_kernel` for the window's placement).
    derivative_conditions : sequence of str
        Conditions that also get a temporal derivative column ``<cond>_derivative``.
    fir_delays : int, optional
        Number of FIR delays (volumes 0 .. fir_delays - 1); only with ``hrf_model="fir"``.
    confounds : pandas.DataFrame, shape (n_scans, n_confounds), optional
        Nuisance regressors appended unconvolved. NaN in the first row becomes 0.
    highpass_cutoff_s : float or None
        Cutoff in seconds of the high-pass filter applied to every column (use the data's);
        None for no filtering.

    Returns
    -------
    Design
        The filtered, demeaned matrix (n_scans x p, no intercept) and its metadata.
    """
    conditions, derivs = _check_model(conditions, derivative_conditions, hrf_model, fir_delays)
    _check_run(n_scans, tr)
    kernels = _kernels(hrf_model, tr, fir_delays)
    selected = _select_events(events, conditions)
    columns: dict[str, NDArray[np.float64]] = {}
    parent: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for cond in conditions:
        rows = selected[selected["trial_type"] == cond]
        regs = _condition_columns(cond, rows, n_scans, tr, kernels, cond in derivs)
        reason = _empty_reason(rows, regs, n_scans, tr)
        if reason:
            dropped[cond] = reason
            continue
        columns.update(regs)
        parent.update(dict.fromkeys(regs, cond))
    kept = tuple(c for c in conditions if c not in dropped)
    if not kept:
        raise ValueError(
            f"run has no usable events for any modelled condition ({dropped}); check that the "
            "events file belongs to this run, or leave the run out of the model"
        )
    for name, values in _check_confounds(confounds, n_scans).items():
        if name in columns:
            raise ValueError(f"confound {name!r} has the name of a task column; rename it")
        columns[name] = values
        parent[name] = name
    raw = np.column_stack(list(columns.values()))
    filtered = highpass_fsl(raw, tr, highpass_cutoff_s, axis=0, add_mean=False)
    heights = dict(zip(columns, filtered.max(axis=0) - filtered.min(axis=0), strict=True))
    matrix = pd.DataFrame(filtered - filtered.mean(axis=0), columns=list(columns))
    return Design(
        matrix=matrix,
        conditions=kept,
        regressor_parent=parent,
        dropped=dropped,
        peak_heights={k: float(v) for k, v in heights.items()},
        hrf_model=hrf_model,
        tr=float(tr),
        highpass_cutoff_s=None if highpass_cutoff_s is None else float(highpass_cutoff_s),
    )


def _check_model(
    conditions: Sequence[str],
    derivative_conditions: Sequence[str],
    hrf_model: str,
    fir_delays: int | None,
) -> tuple[tuple[str, ...], frozenset[str]]:
    """Validate the model options; return the conditions and the derivative set."""
    if isinstance(conditions, str):
        raise ValueError(f"conditions must be a sequence of names, got the string {conditions!r}")
    conds = tuple(conditions)
    if not conds or len(set(conds)) != len(conds):
        raise ValueError(f"conditions must be non-empty and unique, got {list(conds)}")
    derivs = frozenset(derivative_conditions)
    if unknown := sorted(derivs - set(conds)):
        raise ValueError(
            f"derivative_conditions {unknown} are not in conditions {list(conds)}; add or remove"
        )
    if hrf_model not in HRF_MODELS:
        raise ValueError(f"hrf_model must be one of {HRF_MODELS}, got {hrf_model!r}")
    if hrf_model == "fir":
        if fir_delays is None or int(fir_delays) != fir_delays or fir_delays < 1:
            raise ValueError(f"hrf_model='fir' needs fir_delays >= 1 (volumes), got {fir_delays}")
        if derivs:
            raise ValueError("FIR designs take no temporal derivatives; pass no derivatives")
    elif fir_delays is not None:
        raise ValueError(f"fir_delays={fir_delays} needs hrf_model='fir', not {hrf_model!r}")
    return conds, derivs


def _check_run(n_scans: int, tr: float) -> None:
    """Validate the run length and repetition time."""
    if int(n_scans) != n_scans or n_scans < 2:
        raise ValueError(f"n_scans must be an integer >= 2, got {n_scans}")
    if not (np.isfinite(tr) and tr >= GRID_DT_S):
        raise ValueError(f"tr must be a number of seconds >= {GRID_DT_S}, got {tr}")


def _kernels(hrf_model: str, tr: float, fir_delays: int | None) -> dict[str, NDArray[np.float64]]:
    """Column-name suffix -> kernel on the 0.05 s grid, for one condition."""
    if hrf_model == "fir":
        return {f"_delay_{k}": fir_kernel(k, tr, GRID_DT_S) for k in range(int(fir_delays or 0))}
    if hrf_model == "glover":
        return {"": glover_hrf(GRID_DT_S)}
    return {"": double_gamma_hrf(GRID_DT_S)}


def _select_events(events: pd.DataFrame, conditions: tuple[str, ...]) -> pd.DataFrame:
    """Validated onset, duration, height and trial_type of the modelled conditions' rows."""
    if not isinstance(events, pd.DataFrame):
        raise TypeError(f"events must be a pandas DataFrame, got {type(events).__name__}")
    if missing := [c for c in _REQUIRED_EVENT_COLUMNS if c not in events.columns]:
        raise ValueError(
            f"events lack the BIDS column(s) {missing}; found {list(events.columns)}. "
            "Events need onset, duration and trial_type"
        )
    heights = [c for c in _HEIGHT_COLUMNS if c in events.columns]
    if len(heights) > 1:
        raise ValueError("events have both 'modulation' and 'amplitude' columns; keep one")
    rows = events[events["trial_type"].isin(conditions)]
    out = pd.DataFrame({"trial_type": rows["trial_type"]})
    for name in ("onset", "duration", *heights):
        out[name] = _numeric_column(rows[name], name)
    out["height"] = out[heights[0]] if heights else 1.0
    if (out["duration"] < 0).any():
        row = out.index[out["duration"] < 0][0]
        raise ValueError(f"events row {row} has duration {out.at[row, 'duration']} s; must be >= 0")
    return out


def _numeric_column(values: pd.Series, name: str) -> pd.Series:
    """Events column as finite float64, or ValueError naming the first bad row and value."""
    numeric = pd.to_numeric(values, errors="coerce").astype(np.float64)
    bad = ~np.isfinite(numeric.to_numpy())
    if bad.any():
        row = values.index[np.flatnonzero(bad)[0]]
        raise ValueError(
            f"events column {name!r} has the non-numeric or missing value {values.at[row]!r} "
            f"in row {row}; fix or drop that event"
        )
    return numeric


def _condition_columns(
    cond: str,
    rows: pd.DataFrame,
    n_scans: int,
    tr: float,
    kernels: dict[str, NDArray[np.float64]],
    derivative: bool,
) -> dict[str, NDArray[np.float64]]:
    """One condition's unfiltered columns: one per kernel, plus the derivative if asked."""
    args = (rows["onset"], rows["duration"], rows["height"])
    regs = {
        cond + suffix: convolve_events(*args, n_scans=n_scans, tr=tr, dt=GRID_DT_S, hrf=kernel)
        for suffix, kernel in kernels.items()
    }
    if derivative:
        regs[f"{cond}_derivative"] = temporal_derivative(regs[cond])
    return regs


def temporal_derivative(regressor: NDArray[np.float64]) -> NDArray[np.float64]:
    """Central difference of a regressor, orthogonalised against the (demeaned) regressor.

    Parameters
    ----------
    regressor : ndarray, shape (n_scans,)
        Convolved, unfiltered regressor.

    Returns
    -------
    ndarray, shape (n_scans,)
        ``(x[k+1] - x[k-1]) / 2`` per volume (one-sided at the ends), minus its projection on
        the demeaned regressor, so that the demeaned pair is exactly orthogonal.
    """
    diff = np.gradient(regressor)
    centred = regressor - regressor.mean()
    norm = centred @ centred
    return diff if norm == 0 else diff - (diff @ centred) / norm * centred


def _empty_reason(
    rows: pd.DataFrame, regs: dict[str, NDArray[np.float64]], n_scans: int, tr: float
) -> str:
    """Why a condition cannot be modelled in this run ('' when it can)."""
    if rows.empty:
        return "no events in this run"
    if (rows["height"] == 0).all():
        return "every event has height 0"
    if all(not np.any(reg) for reg in regs.values()):
        return f"no event falls within the run (0 to {n_scans * tr:g} s)"
    return ""


def _check_confounds(confounds: pd.DataFrame | None, n_scans: int) -> dict[str, NDArray]:
    """Confound columns as float64 arrays (first-row NaN -> 0), validated."""
    if confounds is None:
        return {}
    if not isinstance(confounds, pd.DataFrame):
        raise TypeError(f"confounds must be a pandas DataFrame, got {type(confounds).__name__}")
    if len(confounds) != n_scans:
        raise ValueError(
            f"confounds have {len(confounds)} rows but the run has {n_scans} volumes; "
            "pass the confounds of this run (after any dropped dummy volumes)"
        )
    out: dict[str, NDArray] = {}
    for name in confounds.columns:
        values = pd.to_numeric(confounds[name], errors="coerce").to_numpy(np.float64, copy=True)
        if np.isnan(values[0]) and pd.isna(confounds[name].iloc[0]):
            values[0] = 0.0
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"confound {name!r} has the value {confounds[name].iloc[row]!r} in row {row}; "
                "only the first row may be NaN (fMRIPrep derivatives): fill or drop the column"
            )
        out[str(name)] = values
    return out
