"""Task specs and the wrapper every executor runs: records each attempt in the manifest.

A task is plain data (:class:`TaskSpec`); :func:`execute` runs it anywhere (this process or a
Dask worker), since it only needs the store URL to write its record.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infra.manifest import Manifest, TaskRecord
from infra.storage import Store

# Input errors: retrying cannot help, the user must fix the file.
NON_RETRYABLE: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError)


Handler = Callable[["TaskSpec", TaskRecord], dict[str, Any]]


@dataclass
class TaskSpec:
    """One unit of work: a stage applied to one unit (run, session, chunk...)."""

    stage: str
    unit: str
    store_url: str
    record: TaskRecord
    run: Handler  # engine-side adapter: I/O around the stage's kernels; returns outputs
    payload: dict[str, Any] = field(default_factory=dict)
    retries: int = 2

    @property
    def task_id(self) -> str:
        """``<stage>/<unit>``."""
        return f"{self.stage}/{self.unit}"


def execute(spec: TaskSpec) -> TaskRecord:
    """Run a task with retries, writing its record before and after every attempt.

    Returns the final record (state ``done`` or ``failed``); never raises for task errors, so
    one bad run cannot stop the others.
    """
    manifest = Manifest(Store(spec.store_url))
    record = spec.record
    for attempt in range(spec.retries + 1):
        record.mark_running()
        manifest.put(record)
        try:
            record.outputs = spec.run(spec, record)
        except Exception as err:
            last = attempt == spec.retries or isinstance(err, NON_RETRYABLE)
            if last:
                record.mark_finished(
                    "failed", f"{type(err).__name__}: {err}", traceback.format_exc()
                )
                manifest.put(record)
                return record
            time.sleep(min(2**attempt, 10))
            continue
        record.mark_finished("done")
        manifest.put(record)
        return record
    raise AssertionError("unreachable")
