"""Checks for BIDS ``_events.tsv`` tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("onset", "duration", "trial_type")


class EventsError(ValueError):
    """An events table that cannot drive a design matrix."""


def validate_events(events: pd.DataFrame, run_duration_s: float, source: str) -> pd.DataFrame:
    """Check an events table and return it with typed, sorted columns.

    Parameters
    ----------
    events : DataFrame
        As read from ``_events.tsv`` (``n/a`` already parsed as missing).
    run_duration_s : float
        Number of volumes times TR, in seconds; onsets must fall before it.
    source : str
        File name used in error messages.

    Returns
    -------
    DataFrame
        ``onset`` and ``duration`` as float seconds, ``trial_type`` as str, sorted by onset.

    Raises
    ------
    EventsError
        Missing columns, non-numeric or negative values, or onsets past the end of the run.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise EventsError(
            f"{source}: missing column(s) {missing}; an events file needs onset, duration and "
            f"trial_type (found {list(events.columns)})."
        )
    out = events.copy()
    for column in ("onset", "duration"):
        values = pd.to_numeric(out[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise EventsError(
                f"{source}: row {row + 1} has {column}={out[column].iloc[row]!r}; "
                f"{column} must be a number of seconds."
            )
        out[column] = values.astype(float)
    _check_range(out, "duration", out["duration"] < 0, source, "must not be negative")
    _check_range(out, "onset", out["onset"] < 0, source, "must not be negative")
    _check_range(
        out,
        "onset",
        out["onset"] >= run_duration_s,
        source,
        f"is past the end of the run ({run_duration_s:.2f} s = volumes x TR)",
    )
    if out["trial_type"].isna().any():
        row = int(np.flatnonzero(out["trial_type"].isna().to_numpy())[0])
        raise EventsError(f"{source}: row {row + 1} has no trial_type; name every event.")
    out["trial_type"] = out["trial_type"].astype(str)
    return out.sort_values("onset", kind="stable").reset_index(drop=True)


def _check_range(table: pd.DataFrame, column: str, bad: pd.Series, source: str, what: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise EventsError(
            f"{source}: row {row + 1} has {column}={table[column].iloc[row]:g}, which {what}."
        )
