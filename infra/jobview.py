"""``boldcloud status JOB`` and ``boldcloud logs JOB``: a submitted job, read from the store."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infra.jobs import FINAL_STATES, Job, list_jobs
from infra.storage import Store

STATE_STYLES = {"running": "blue", "done": "green", "failed": "red", "cancelled": "yellow"}


def store_url_for(store: str | None, study: str | None) -> str:
    """The store URL from ``--store`` or from a study file's ``store:``.

    Raises
    ------
    ValueError
        When neither gives one (the message says what to pass).
    """
    if store:
        return store
    if study:
        from infra.study import load_study

        url = load_study(study).store_url
        if url:
            return url
        raise ValueError(f"{study} has no 'store:': pass --store URL.")
    raise ValueError("no store: pass --store URL (or --study FILE with 'store:').")


def _driver_text(record: dict[str, Any], launch: dict[str, Any]) -> str:
    driver = record.get("driver") or {}
    parts = []
    if driver.get("host"):
        parts.append(f"pid {driver.get('pid')} on {driver['host']}")
    batch = driver.get("batch_id") or launch.get("batch_id")
    if batch:
        parts.append(f"{launch.get('launcher', 'batch')} job {batch}")
    if launch.get("launcher") == "kubernetes":
        parts.append(f"Kubernetes Job {launch.get('name')}")
    if not parts and launch.get("pid"):
        parts.append(f"process {launch['pid']} on {launch.get('host')} (not started yet)")
    return ", ".join(parts) or "not started yet"


def job_table(job: Job) -> Table:
    """One row per field of the job record (state coloured)."""
    record, launch = job.read(), job.launch_info()
    state = record["state"]
    if state == "running" and job.cancel_requested():
        state = "running (cancel requested)"
    if state == "running" and _driver_vanished(record.get("driver") or {}):
        state = "running? (the driver process is gone: killed? submit again to resume)"
    table = Table(title=f"job {job.id}", title_justify="left", box=box.SIMPLE, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("state", f"[{STATE_STYLES.get(record['state'], '')}]{state}[/]"),
        ("study", record.get("study")),
        ("store", record.get("store")),
        ("cluster", record.get("cluster")),
        ("submitted", f"{record.get('submitted')} by {record.get('submitted_by')}"),
        ("driver", _driver_text(record, launch)),
        ("started", record.get("started")),
        ("finished", record.get("finished")),
        ("exit code", record.get("exit_code")),
        ("stages", ", ".join(record.get("stages") or []) or "all"),
        ("error", record.get("error")),
    ]
    for name, value in rows:
        if value not in (None, ""):
            table.add_row(name, value if name == "state" else Text(str(value)))
    return table


def _driver_vanished(driver: dict[str, Any]) -> bool:
    """Whether the driver ran on this machine and its process no longer exists."""
    if driver.get("host") != socket.gethostname() or not driver.get("pid"):
        return False
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def print_job_status(job: Job, console: Console) -> int:
    """The job's record and the store's per-stage progress and failures; exit code 0, or 1
    when the job failed."""
    from infra.dashboard.terminal import print_status

    console.print(job_table(job))
    print_status(job.store, console)
    return 1 if job.read()["state"] == "failed" else 0


def print_jobs(store: Store, console: Console, last: int = 10) -> None:
    """The last ``last`` jobs of the store with their states (nothing when there are none)."""
    ids = list_jobs(store)[-last:]
    if not ids:
        return
    table = Table(title="jobs", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("job", no_wrap=True)  # ids are copied from here: never wrapped
    for column in ("state", "cluster", "submitted"):
        table.add_column(column)
    for job_id in ids:
        record = Job(store, job_id).read()
        style = STATE_STYLES.get(record["state"], "")
        row = [job_id, f"[{style}]{record['state']}[/]", record["cluster"], record["submitted"]]
        table.add_row(*row)
    console.print(table)


def stream_log(
    job: Job, follow: bool = False, poll_s: float = 2.0, out: TextIO | None = None
) -> int:
    """Print the driver's log; with ``follow``, keep printing what is added until the job ends.

    Parameters
    ----------
    job : Job
        The job.
    follow : bool
        Wait for new output until the job reaches a final state.
    poll_s : float
        Seconds between reads of the log while following.
    out : file, optional
        Where to write (default stdout).
    """
    out = out or sys.stdout
    shown = 0
    while True:
        final = job.read()["state"] in FINAL_STATES  # read first: the last upload precedes it
        text = job.read_log()
        if len(text) < shown:  # the log was trimmed at its start: print it whole again
            shown = 0
        out.write(text[shown:])
        out.flush()
        shown = len(text)
        if not follow or final:
            return 0
        time.sleep(poll_s)
