"""The evoked-pain task design: jittered anticipation, cuff blocks and rest, per run."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from processing.firstlevel.hrf import convolve_events
from processing.simulate.specs import (
    ANTICIPATION_S,
    BLOCK,
    BLOCK_ORDER,
    CONDITIONS,
    CUFF_S,
    LEAD_IN_S,
    MOTION_ROLES,
    MOTION_SLOTS,
    OTHER_ROLES,
    OTHER_SLOTS,
    REST_S,
    stream,
)

__all__ = ["condition_regressors", "make_events", "roles_for"]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def make_events(rng: np.random.Generator, run_duration_s: float) -> pd.DataFrame:
    """Events of one run of the cuff task.

    Six cuff blocks of 10 s in the fixed order P40, P0, P40, P0, P0, P40 follow a 4 s lead-in.
    Each block is preceded by an anticipation cue of ``a_i ~ U(4, 10)`` s and followed by rest of
    ``r_i ~ U(10, 20)`` s. Fitting rule: if the lead-in plus all cues, blocks and rests would
    exceed ``run_duration_s``, every jittered part is shrunk towards its minimum by one common
    factor ``k = (T - minimum) / (sum of jitter)`` (``a_i = 4 + k (a_i - 4)``,
    ``r_i = 10 + k (r_i - 10)``, rounded down to whole ms) so the design ends within a few ms of
    the end of the run ``T``; otherwise the time after the last rest is more rest. All times are
    whole milliseconds.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the jitter (one generator per run).
    run_duration_s : float
        ``n_volumes * TR`` in seconds; must be at least the 148 s minimum design.

    Returns
    -------
    pandas.DataFrame
        Columns ``onset``, ``duration`` (s) and ``trial_type`` (anticipation, P40, P0), 12 rows
        sorted by onset.
    """
    n_blocks = len(BLOCK_ORDER)
    a_min, a_max = (_ms(v) for v in ANTICIPATION_S)
    r_min, r_max = (_ms(v) for v in REST_S)
    cuff, lead, total = _ms(CUFF_S), _ms(LEAD_IN_S), _ms(run_duration_s)
    fixed = lead + n_blocks * (a_min + cuff + r_min)
    if fixed > total:
        raise ValueError(
            f"run_duration_s={run_duration_s} is shorter than the minimum design "
            f"({fixed / 1000} s); use more volumes or a longer TR"
        )
    extra_a = np.rint(rng.uniform(0, a_max - a_min, n_blocks)).astype(np.int64)
    extra_r = np.rint(rng.uniform(0, r_max - r_min, n_blocks)).astype(np.int64)
    slack = int(extra_a.sum() + extra_r.sum())
    if fixed + slack > total:
        scale = (total - fixed) / slack
        extra_a = np.floor(extra_a * scale).astype(np.int64)
        extra_r = np.floor(extra_r * scale).astype(np.int64)
    rows = []
    t = lead
    for block, kind in enumerate(BLOCK_ORDER):
        antic = a_min + int(extra_a[block])
        rows.append((t, antic, "anticipation"))
        rows.append((t + antic, cuff, kind))
        t += antic + cuff + r_min + int(extra_r[block])
    return pd.DataFrame(
        {
            "onset": [r[0] / 1000 for r in rows],
            "duration": [r[1] / 1000 for r in rows],
            "trial_type": [r[2] for r in rows],
        }
    )


def condition_regressors(events: pd.DataFrame, n_volumes: int, tr: float) -> NDArray[np.float64]:
    """HRF-convolved unit regressors of the three conditions.

    Parameters
    ----------
    events : pandas.DataFrame
        ``onset``, ``duration`` (s), ``trial_type``.
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).

    Returns
    -------
    ndarray, shape (3, n_volumes)
        Rows in the order of ``CONDITIONS`` (anticipation, P40, P0), plateau 1.
    """
    regs = np.zeros((len(CONDITIONS), n_volumes))
    for row, cond in enumerate(CONDITIONS):
        sel = events[events["trial_type"] == cond]
        if len(sel):
            regs[row] = convolve_events(sel["onset"], sel["duration"], 1.0, n_volumes, tr)
    return regs


def roles_for(n_subjects: int, seed: int) -> list[str]:
    """Attrition role of each subject (see ``specs.ROLE_RUNS``).

    Each block of 20 subjects holds the paper's attrition pattern: the motion roles sit in slots
    1, 5, 9, 13 and the other attrition roles in slots 3, 7, 11, 15, 17 (0-based), shuffled
    within those slots by the seed; all other subjects are ``normal``.

    Parameters
    ----------
    n_subjects : int
        Number of subjects.
    seed : int
        Study seed.

    Returns
    -------
    list of str
        One role per subject.
    """
    roles: list[str] = []
    for start in range(0, n_subjects, BLOCK):
        rng = stream(seed, "roles", start // BLOCK)
        block = ["normal"] * BLOCK
        for slots, kinds in ((MOTION_SLOTS, MOTION_ROLES), (OTHER_SLOTS, OTHER_ROLES)):
            for slot, pick in zip(slots, rng.permutation(len(kinds)), strict=True):
                block[slot] = kinds[pick]
        roles.extend(block)
    return roles[:n_subjects]
