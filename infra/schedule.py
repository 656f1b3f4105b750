"""Scheduled reprocessing: ``boldcloud run --new-only`` (one cycle) and ``boldcloud watch``.

A cycle takes the study's run lease (:mod:`infra.lease`), compares the BIDS source with the
store's snapshot (:mod:`infra.incremental`), and only when something is new, changed or deleted
starts the cluster and runs the subject-level tasks of the new or changed units plus the group
stages. ``watch`` repeats the cycle every interval; a failing cycle is logged and the next one
runs; SIGTERM or Ctrl-C stops it between or during cycles (finished tasks stay recorded).
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from rich.console import Console

from infra.bids import discover
from infra.incremental import describe_changes, find_changes
from infra.lease import LEASE_BUSY, Lease, LeaseHeld, take_lease
from infra.storage import Store
from infra.study import Study

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_interval(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``1h`` (or a plain number of seconds).

    Raises
    ------
    ValueError
        Naming the bad value and the accepted forms.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"interval {text!r} is not understood: use a positive number with s, m or h "
            "(e.g. 30s, 15m, 1h)."
        )
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def run_new_only(
    study: Study,
    make_executor: Callable[[], Any],
    console: Console,
    retries: int = 2,
    wait: bool = False,
    lease: Lease | None = None,
) -> int:
    """One ``--new-only`` cycle; returns the exit code (0 also when nothing was new).

    Parameters
    ----------
    study : Study
        The loaded, valid study.
    make_executor : callable
        Starts the executor; called only when there is work.
    console : Console
        Where progress and findings are printed.
    retries : int
        Attempts after the first for a failing task.
    wait : bool
        Wait for a held lease instead of raising :class:`infra.lease.LeaseHeld`.
    lease : Lease, optional
        A lease the caller already holds.
    """
    from infra.runner import run_study

    store = Store(study.store_url)
    with nullcontext(lease) if lease else take_lease(store, console, wait) as held:
        dataset = discover(
            study.dataset_url, study.tasks, study.select("subjects"), study.select("sessions")
        )
        changes = find_changes(dataset, store)
        for line in describe_changes(changes):
            console.print(line, highlight=False)
        if not changes.work:
            return 0
        executor = make_executor()
        try:
            return run_study(study, executor, console, retries, lease=held, changes=changes)
        finally:
            executor.close()


class _Stop(Exception):
    """SIGTERM received."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Stop()


def watch(
    study: Study,
    make_executor: Callable[[], Any],
    console: Console,
    every_s: float,
    retries: int = 2,
    max_cycles: int | None = None,
) -> int:
    """Run :func:`run_new_only` every ``every_s`` seconds until stopped.

    Returns 0 after SIGTERM, Ctrl-C or ``max_cycles`` cycles; a failing or refused cycle is
    logged and does not stop the loop.
    """
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    cycle = 0
    try:
        while max_cycles is None or cycle < max_cycles:
            cycle += 1
            started = time.time()
            _log(console, f"cycle {cycle}: looking for new or changed subjects")
            code = _cycle(study, make_executor, console, retries)
            _log(console, f"cycle {cycle}: exit code {code} after {time.time() - started:.1f} s")
            if max_cycles is not None and cycle >= max_cycles:
                break
            time.sleep(max(0.0, every_s - (time.time() - started)))
    except (_Stop, KeyboardInterrupt):
        _log(console, "stopping (signal received); finished tasks are recorded")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _cycle(study: Study, make_executor: Callable[[], Any], console: Console, retries: int) -> int:
    try:
        return run_new_only(study, make_executor, console, retries)
    except LeaseHeld as err:
        console.print(f"[yellow]skipped[/] {err}", highlight=False)
        return LEASE_BUSY
    except (_Stop, KeyboardInterrupt):
        raise
    except Exception as err:  # a failing cycle must not end the scheduler
        console.print(f"[red]cycle failed[/] {type(err).__name__}: {err}", highlight=False)
        return 1


def _log(console: Console, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    console.print(f"[{stamp}] watch: {message}", highlight=False)
