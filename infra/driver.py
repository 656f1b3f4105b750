"""The driver of a submitted job (``boldcloud driver JOB --store URL``), run on the cluster side.

It loads the job's study from the store, runs the pipeline (:func:`infra.runner.run_study`) on
the job's cluster profile, keeps ``job.json`` up to date and streams its log to the store.

Cancel protocol: ``boldcloud cancel`` writes ``jobs/<id>/cancel``. A watcher thread polls for
it every ``poll_s``; the executor wrapper then stops between tasks: it submits nothing more,
cancels the pending futures (closing the Dask generator does that), and the driver marks the
job ``cancelled`` and exits. A task that keeps running longer than ``grace_s`` after the
request is interrupted (KeyboardInterrupt in the main thread). SIGTERM (``scancel``, ``qdel``,
``kubectl delete``) stops the driver the same way. Finished tasks are in the manifest, so a new
submit resumes.
"""

from __future__ import annotations

import _thread
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from infra.joblog import LogStream
from infra.jobs import FINAL_STATES, Job, mark_final, now_iso
from infra.storage import Store

BATCH_ID_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "JOB_ID")


class JobStopped(BaseException):
    """The job was cancelled or terminated; a BaseException so no task-level handler eats it."""


class CancelWatcher:
    """Polls the store for the job's cancel request in a background thread.

    Parameters
    ----------
    job : Job
        The job to watch.
    poll_s : float
        Seconds between polls.
    grace_s : float
        After a request, seconds to wait for the driver to stop between tasks before
        interrupting the main thread.
    """

    def __init__(self, job: Job, poll_s: float = 2.0, grace_s: float = 30.0) -> None:
        self.job = job
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def start(self) -> CancelWatcher:
        """Start polling (daemon thread)."""
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        while not self.finished.wait(self.poll_s):
            try:
                requested = self.job.cancel_requested()
            except Exception:  # a store hiccup: ask again at the next poll
                continue
            if requested:
                self.cancelled.set()
                if not self.finished.wait(self.grace_s):
                    _thread.interrupt_main()
                return


class CancellableExecutor:
    """Wraps an executor so a cancel request stops it between tasks.

    Parameters
    ----------
    inner : Executor
        The real executor (its other attributes, e.g. ``client``, are passed through).
    cancelled : threading.Event
        Set when the job is to stop.
    """

    def __init__(self, inner: Any, cancelled: threading.Event) -> None:
        self.inner = inner
        self.cancelled = cancelled

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], keys: Iterable[str]
    ) -> Iterator[tuple[Any, Any]]:
        """The inner executor's results until a cancel request; then stop and cancel the rest."""
        if self.cancelled.is_set():
            raise JobStopped("cancel requested")
        results = self.inner.map_unordered(fn, items, keys)
        try:
            for pair in results:
                yield pair
                if self.cancelled.is_set():
                    raise JobStopped("cancel requested")
        finally:
            results.close()  # the Dask executor cancels its unfinished futures here

    def close(self) -> None:
        """Close the inner executor."""
        self.inner.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise JobStopped(f"terminated by signal {signum}")


def _driver_fields() -> dict[str, Any]:
    batch = next((os.environ[v] for v in BATCH_ID_VARIABLES if os.environ.get(v)), None)
    return {"host": socket.gethostname(), "pid": os.getpid(), "batch_id": batch}


def _load_job_study(job: Job, workdir: Path) -> Any:
    from infra.study import load_study

    path = workdir / "study.yaml"
    path.write_bytes(job.store.read_bytes(job.key("study.yaml")))
    return load_study(str(path), store_override=job.store.url)


def _pipeline(job: Job, record: dict[str, Any], watcher: CancelWatcher, console: Console) -> int:
    """Load the study, start the cluster, run; returns run_study's exit code."""
    from infra.clusters import make_executor
    from infra.runner import run_study

    with tempfile.TemporaryDirectory(prefix="boldcloud-driver-") as workdir:
        study = _load_job_study(job, Path(workdir))
        if study.issues:
            raise ValueError("; ".join(str(i) for i in study.issues))
        inner = make_executor(record["cluster"], workers=record.get("workers"), study=study)
        executor = CancellableExecutor(inner, watcher.cancelled)
        console.print(f"Job {job.id}: running on {inner.description}", highlight=False)
        try:
            return run_study(
                study, executor, console, record.get("retries", 2), stages=record.get("stages")
            )
        finally:
            executor.close()


def run_driver(store_url: str, job_id: str, poll_s: float = 2.0, grace_s: float = 30.0) -> int:
    """Run job ``job_id`` of the store at ``store_url`` to its end; returns the exit code.

    Parameters
    ----------
    store_url : str
        The study's store (where ``jobs/<job_id>/`` is).
    job_id : str
        The job to run.
    poll_s, grace_s : float
        Cancel polling interval and grace period (see :class:`CancelWatcher`).
    """
    job = Job(Store(store_url), job_id)
    record = job.read()
    if record["state"] in FINAL_STATES:
        print(f"job {job_id} is already {record['state']}: submit the study again to rerun it.")
        return 2
    log = LogStream(job).start()
    watcher = CancelWatcher(job, poll_s, grace_s)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    state, code, error = "failed", 1, None
    try:
        fields = {"started": now_iso(), "started_unix": time.time(), "driver": _driver_fields()}
        job.update(state="running", **fields)
        if job.cancel_requested():
            raise JobStopped("cancel requested before the driver started")
        watcher.start()
        code = _pipeline(job, record, watcher, Console(width=120, force_terminal=False))
        state = "done" if code == 0 else "failed"
        error = None if code == 0 else "some tasks failed: boldcloud status JOB lists them"
    except (JobStopped, KeyboardInterrupt) as err:
        requested = watcher.cancelled.is_set() or job.cancel_requested()
        state, code = ("cancelled", 130) if requested else ("failed", 143)
        error = str(err) or ("cancel requested" if requested else "interrupted")
        print(f"Job {job_id} stopped: {error}. Finished tasks are recorded; submit to resume.")
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    finally:
        watcher.finished.set()
        signal.signal(signal.SIGTERM, previous)
        print(f"Job {job_id}: {state} (exit code {code})")
        log.stop()  # the last upload comes before the final state: 'logs --follow' relies on it
        mark_final(job, state, code, error)
    return code
