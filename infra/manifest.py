"""The run manifest: one small JSON record per task, the single source of truth for status.

Records live at ``manifest/tasks/<stage>/<unit>.json`` and are written whole in one atomic PUT
(a rename locally), so concurrent workers never corrupt each other and S3's lack of rename does
not matter. ``manifest/index.json`` is a compacted summary rewritten at the end of each run for
fast status reads; the records stay authoritative.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from infra.storage import Store

State = Literal["pending", "running", "done", "failed", "excluded"]
STATES: tuple[str, ...] = ("pending", "running", "done", "failed", "excluded")
TASKS_PREFIX = "manifest/tasks"
INDEX_KEY = "manifest/index.json"


def content_key(**parts: Any) -> str:
    """A stable SHA-256 over JSON-serialisable parts (sorted keys), used as a task key."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class TaskRecord:
    """Everything known about one task (stage x unit [x chunk])."""

    stage: str
    unit: str  # e.g. sub-01_ses-pre_task-cuff_run-1, or sub-01_ses-pre_..._chunk-3
    key: str = ""  # hash of stage, code version, parameters and input hashes
    state: State = "pending"
    attempts: int = 0
    subject: str | None = None
    session: str | None = None
    error: str | None = None
    traceback: str | None = None
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    duration_s: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)  # name -> fingerprint / sha256
    params: dict[str, Any] = field(default_factory=dict)
    code_version: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None  # why excluded / skipped

    @property
    def task_id(self) -> str:
        """``<stage>/<unit>``: unique within a store."""
        return f"{self.stage}/{self.unit}"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for storage."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TaskRecord:
        """Inverse of :meth:`to_json`, ignoring fields this version does not know."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in obj.items() if k in known})

    def mark_running(self) -> None:
        """State running, one more attempt, this host as worker."""
        self.state = "running"
        self.attempts += 1
        self.started = time.time()
        self.finished = self.duration_s = None
        self.worker = socket.gethostname()
        self.error = self.traceback = None

    def mark_finished(self, state: State, error: str | None = None, tb: str | None = None) -> None:
        """Final state with timings."""
        self.state = state
        self.finished = time.time()
        self.duration_s = None if self.started is None else self.finished - self.started
        self.error, self.traceback = error, tb


class Manifest:
    """Task records of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_key(self, stage: str, unit: str) -> str:
        """Store key of a task's record."""
        return f"{TASKS_PREFIX}/{stage}/{unit}.json"

    def get(self, stage: str, unit: str) -> TaskRecord | None:
        """The record of a task, or None if it never ran."""
        key = self.record_key(stage, unit)
        if not self.store.exists(key):
            return None
        return TaskRecord.from_json(self.store.read_json(key))

    def put(self, record: TaskRecord) -> None:
        """Write a record atomically."""
        self.store.write_json(self.record_key(record.stage, record.unit), record.to_json())

    def records(self, stage: str | None = None) -> list[TaskRecord]:
        """All records (of one stage), read in one batched request."""
        prefix = f"{TASKS_PREFIX}/{stage}" if stage else TASKS_PREFIX
        keys = self.store.list(prefix, suffix=".json")
        if not keys:
            return []
        paths = [self.store.path(k) for k in keys]
        blobs = (
            self.store.fs.cat(paths)
            if len(paths) > 1
            else {paths[0]: self.store.read_bytes(keys[0])}
        )
        return [TaskRecord.from_json(json.loads(blobs[p])) for p in paths]

    def write_index(self, records: Iterable[TaskRecord] | None = None) -> dict[str, Any]:
        """Rewrite ``manifest/index.json`` (counts per stage and state, failures)."""
        records = list(self.records() if records is None else records)
        index = summarise(records)
        self.store.write_json(INDEX_KEY, index)
        return index


def summarise(records: Iterable[TaskRecord]) -> dict[str, Any]:
    """Counts per stage and state plus the failed and excluded tasks."""
    counts: dict[str, Counter] = {}
    failed, excluded = [], []
    for rec in records:
        counts.setdefault(rec.stage, Counter())[rec.state] += 1
        if rec.state == "failed":
            failed.append({"task": rec.task_id, "error": rec.error, "attempts": rec.attempts})
        if rec.state == "excluded":
            excluded.append({"task": rec.task_id, "reason": rec.reason})
    return {
        "updated": time.time(),
        "stages": {stage: dict(c) for stage, c in counts.items()},
        "failed": failed,
        "excluded": excluded,
    }
