"""Submitted jobs: their record and layout in the store, readable from any machine.

A job is one submission of a study (``boldcloud submit``). Everything about it lives under
``jobs/<job-id>/`` in the study's store, so ``status``, ``logs`` and ``cancel`` work from any
machine that can read the store:

============== =========================================================================
job.json       the record: id, study, cluster profile, submitter host, submitted time,
               state (submitted, running, done, failed, cancelled), driver host/pid/batch id,
               started/finished times, exit code. Written by the submitter once, then only by
               the driver (and by ``cancel`` when no driver ever started).
study.yaml     the study file as submitted (dataset and store as absolute URLs)
launch.json    how the driver was started (written by the submitter): launcher, pid or batch
               job id, the rendered batch script or Kubernetes manifest key
driver.log     the driver's console output, rewritten whole every few seconds (S3 has no
               append)
cancel         present when a cancel was requested (who, when); the driver honours it between
               tasks
============== =========================================================================

No credential is ever written here: records hold names, hosts, times and states only.
"""

from __future__ import annotations

import getpass
import re
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import Any

from infra.storage import Store

JOBS_PREFIX = "jobs"
STATES = ("submitted", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")


class JobError(ValueError):
    """A job that does not exist or cannot do what was asked; the message says how to fix it."""


def new_job_id(study_name: str) -> str:
    """A unique, sortable, DNS-safe id: ``<study>-<UTC time>-<random>``.

    Parameters
    ----------
    study_name : str
        The study's ``name``; reduced to lower-case letters, digits and dashes.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", study_name.lower()).strip("-")[:24] or "job"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stem}-{stamp}-{secrets.token_hex(3)}"


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def who() -> str:
    """``user@host`` of this process (for cancel requests and submissions)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Job:
    """One job's objects under ``jobs/<job_id>/`` in ``store``.

    Parameters
    ----------
    store : Store
        The study's store.
    job_id : str
        The id ``boldcloud submit`` printed.
    """

    def __init__(self, store: Store, job_id: str) -> None:
        if not JOB_ID.match(job_id):
            raise JobError(
                f"{job_id!r} is not a job id (lower-case letters, digits and dashes, as printed "
                "by 'boldcloud submit'); list the jobs with 'boldcloud status --store URL'."
            )
        self.store = store
        self.id = job_id

    def key(self, name: str) -> str:
        """Store key of one of the job's objects."""
        return f"{JOBS_PREFIX}/{self.id}/{name}"

    def exists(self) -> bool:
        """Whether the job was submitted to this store."""
        return self.store.exists(self.key("job.json"))

    def read(self) -> dict[str, Any]:
        """The job record; :class:`JobError` naming the store when there is none."""
        if not self.exists():
            known = list_jobs(self.store)[-5:]
            hint = f" Recent jobs there: {', '.join(known)}." if known else " It has no jobs."
            raise JobError(
                f"no job {self.id!r} in store {self.store.url}: pass the store the job was "
                f"submitted to (--store URL or --study FILE).{hint}"
            )
        return self.store.read_json(self.key("job.json"))

    def write(self, record: dict[str, Any]) -> None:
        """Replace the job record (one atomic write)."""
        self.store.write_json(self.key("job.json"), record)

    def update(self, **fields: Any) -> dict[str, Any]:
        """Read, change ``fields`` and write back the record; returns it."""
        record = self.read()
        record.update(fields)
        self.write(record)
        return record

    def launch_info(self) -> dict[str, Any]:
        """What the submitter recorded about starting the driver (empty before that)."""
        key = self.key("launch.json")
        return self.store.read_json(key) if self.store.exists(key) else {}

    def request_cancel(self) -> None:
        """Write the cancel request the driver polls for."""
        self.store.write_json(self.key("cancel"), {"requested": now_iso(), "by": who()})

    def cancel_requested(self) -> bool:
        """Whether a cancel request exists."""
        return self.store.exists(self.key("cancel"))

    def write_log(self, text: bytes) -> None:
        """Replace ``driver.log`` with ``text`` (the whole log so far)."""
        self.store.write_bytes(self.key("driver.log"), text)

    def read_log(self) -> str:
        """The driver's log so far ('' before the driver wrote any)."""
        key = self.key("driver.log")
        if not self.store.exists(key):
            return ""
        return self.store.read_bytes(key).decode(errors="replace")


def list_jobs(store: Store) -> list[str]:
    """Ids of the jobs submitted to ``store``, oldest first (ids sort by submission time)."""
    keys = store.list(JOBS_PREFIX, suffix="/job.json")
    return sorted({k.split("/")[1] for k in keys}, key=lambda i: (i.rsplit("-", 3)[-3:], i))


def new_record(
    job_id: str, study_name: str, store_url: str, cluster: str, **extra: Any
) -> dict[str, Any]:
    """The first job record, written by the submitter.

    Parameters
    ----------
    job_id, study_name, store_url, cluster : str
        Id, the study's name, its store and the cluster profile (or scheduler address).
    **extra
        Further fields (``workers``, ``stages``, ``retries``).
    """
    return {
        "id": job_id,
        "study": study_name,
        "store": store_url,
        "cluster": cluster,
        "submitted": now_iso(),
        "submitted_by": who(),
        "state": "submitted",
        "driver": {},
        "started": None,
        "finished": None,
        "exit_code": None,
        "error": None,
        **extra,
    }


def mark_final(job: Job, state: str, exit_code: int | None, error: str | None = None) -> None:
    """Record a final state with the finish time (and wall time when the driver started)."""
    if state not in FINAL_STATES:
        raise ValueError(f"{state!r} is not a final job state; use one of {sorted(FINAL_STATES)}")
    record = job.read()
    finished = time.time()
    started = record.get("started_unix")
    record.update(
        state=state,
        exit_code=exit_code,
        error=error,
        finished=now_iso(),
        wall_s=None if started is None else round(finished - started, 1),
    )
    job.write(record)
