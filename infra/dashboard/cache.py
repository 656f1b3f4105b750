"""An incremental, in-memory cache of a store's manifest records.

Reading every record on every refresh costs one GET (or ``open``) per task: 10,000 reads for a
study of 1,000 subjects. Instead a refresh is

1. one listing of ``manifest/tasks/`` *with details* (size plus mtime and inode locally, size
   plus ETag on S3): a few list requests on S3; locally a directory walk that skips stage
   folders whose mtime shows no record was written since the last walk;
2. one batched read of only the records whose fingerprint changed or that are new;
3. dropping records that disappeared.

Records are written whole and atomically (a rename locally, one PUT on S3), so a changed record
always has a new fingerprint (a new inode locally, a new ETag on S3) and a record read is never
half-written. Only the fields the overview needs are kept (:class:`Task`); the pages that need a
record's outputs or traceback read those few records in full with :meth:`ManifestCache.full`.
Refreshes are throttled (``min_interval_s``) and serialised by a lock, so many browser tabs
polling at once cost one listing per interval.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from infra.manifest import TASKS_PREFIX, TaskRecord
from infra.storage import Store

# Records read per batched request: bounds memory and lets s3fs run its requests concurrently.
READ_BATCH = 2000
# Local stores: a folder modified less than this before it was walked is walked again.
RACY_S = 2.0
# Local stores: every record file is stat'ed again at least this often.
FULL_RESCAN_S = 30.0


@dataclass(frozen=True, slots=True)
class Task:
    """The part of a task record the overview, ETA and cluster views need.

    Attributes mirror :class:`infra.manifest.TaskRecord`; ``key`` is the record's store key,
    used to read the full record on demand.
    """

    key: str
    stage: str
    unit: str
    state: str
    attempts: int = 0
    subject: str | None = None
    session: str | None = None
    error: str | None = None
    worker: str | None = None
    started: float | None = None
    finished: float | None = None
    duration_s: float | None = None
    reason: str | None = None

    @property
    def task_id(self) -> str:
        """``<stage>/<unit>``."""
        return f"{self.stage}/{self.unit}"

    @classmethod
    def from_json(cls, key: str, obj: dict[str, Any]) -> Task:
        """The slim view of a parsed record (long errors are cut to their first 500 chars)."""
        error = obj.get("error")
        if isinstance(error, str) and len(error) > 500:
            error = error[:500] + "..."
        return cls(
            key=key,
            stage=str(obj.get("stage", "")),
            unit=str(obj.get("unit", "")),
            state=str(obj.get("state", "pending")),
            attempts=int(obj.get("attempts") or 0),
            subject=obj.get("subject"),
            session=obj.get("session"),
            error=error,
            worker=obj.get("worker"),
            started=obj.get("started"),
            finished=obj.get("finished"),
            duration_s=obj.get("duration_s"),
            reason=obj.get("reason"),
        )


@dataclass
class RefreshStats:
    """What the last refresh did (shown on the cluster page, used by the benchmark)."""

    listed: int = 0
    read: int = 0
    removed: int = 0
    unreadable: int = 0
    list_s: float = 0.0
    read_s: float = 0.0
    at: float = 0.0
    errors: list[str] = field(default_factory=list)


def _fingerprint(info: dict[str, Any]) -> tuple:
    """What changes whenever an object is rewritten: ETag on S3, mtime + inode locally."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return (info.get("size"), etag)
    return (
        info.get("size"),
        info.get("mtime") or info.get("LastModified"),
        info.get("ino"),
    )


class ManifestCache:
    """Task records of one store, refreshed incrementally.

    Parameters
    ----------
    store : Store
        The study's store (local or ``s3://``).
    min_interval_s : float
        A call to :meth:`tasks` re-lists the store at most this often; calls in between reuse
        the last snapshot.
    """

    def __init__(self, store: Store, min_interval_s: float = 1.0) -> None:
        self.store = store
        self.min_interval_s = min_interval_s
        self.generation = 0  # bumped whenever any record was added, changed or removed
        self.stats = RefreshStats()
        self._entries: dict[str, tuple[tuple, Task]] = {}
        self._sorted: list[Task] | None = []
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._folders: dict[str, tuple[int, int, dict[str, tuple], list[str]]] = {}
        self._full_scan_ns = 0

    # ------------------------------------------------------------------ refresh
    def _list(self) -> dict[str, tuple]:
        """Store key -> fingerprint of every record file."""
        if not self.store.remote:
            return self._list_local()
        fs, base = self.store.fs, self.store.path(TASKS_PREFIX)
        if self.store.remote:
            fs.invalidate_cache(base)  # s3fs caches listings; we want the live state
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        start = len(self.store.root) + 1
        return {
            path[start:]: _fingerprint(info)
            for path, info in found.items()
            if path.endswith(".json") and info.get("type", "file") == "file"
        }

    def _list_local(self) -> dict[str, tuple]:
        """:meth:`_list` for a local store: a ``scandir`` walk that skips unchanged folders.

        Records are written by creating a temporary file and renaming it into the stage's
        folder, which updates the folder's mtime; a folder whose mtime is unchanged since the
        last walk, and was already older than :data:`RACY_S` then (so a write in the same
        clock tick as the walk cannot hide behind an equal mtime), is not re-read. Every
        :data:`FULL_RESCAN_S` seconds all files are stat'ed again anyway, in case another tool
        rewrote a record in place.
        """
        now = time.time_ns()
        full = now - self._full_scan_ns > FULL_RESCAN_S * 1e9
        walked: dict[str, tuple[int, int, dict[str, tuple], list[str]]] = {}
        found: dict[str, tuple] = {}
        stack = [TASKS_PREFIX]
        while stack:
            prefix = stack.pop()
            try:
                mtime = os.stat(self.store.path(prefix)).st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                continue
            cached = self._folders.get(prefix)
            if (
                not full
                and cached is not None
                and cached[0] == mtime
                and cached[1] - mtime > RACY_S * 1e9
            ):
                walked[prefix] = cached
            else:
                walked[prefix] = (mtime, now, *self._scan(prefix))
            found.update(walked[prefix][2])
            stack.extend(walked[prefix][3])
        self._folders = walked
        if full:
            self._full_scan_ns = now
        return found

    def _scan(self, prefix: str) -> tuple[dict[str, tuple], list[str]]:
        """Fingerprints of the records directly in ``prefix`` and its sub-folders' keys."""
        files: dict[str, tuple] = {}
        folders: list[str] = []
        try:
            entries = os.scandir(self.store.path(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return files, folders
        with entries:
            for entry in entries:
                key = f"{prefix}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    folders.append(key)
                elif entry.name.endswith(".json") and not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # replaced or removed meanwhile
                        continue
                    files[key] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return files, folders

    def _read(self, keys: list[str]) -> dict[str, dict[str, Any] | Exception]:
        """Parsed records of ``keys`` (an exception for each that could not be read)."""
        out: dict[str, dict[str, Any] | Exception] = {}
        if not self.store.remote:
            for key in keys:
                try:
                    with open(self.store.path(key), "rb") as handle:
                        out[key] = json.loads(handle.read())
                except (OSError, ValueError) as err:
                    out[key] = err
            return out
        for i in range(0, len(keys), READ_BATCH):
            batch = keys[i : i + READ_BATCH]
            paths = {self.store.path(k): k for k in batch}
            blobs = self.store.fs.cat(list(paths), on_error="return")
            if not isinstance(blobs, dict):  # fsspec returns bare bytes for a single path
                blobs = {next(iter(paths)): blobs}
            for path, blob in blobs.items():
                key = paths.get(path) or paths.get(path.split("://", 1)[-1])
                if key is None:
                    continue
                if isinstance(blob, Exception):
                    out[key] = blob
                    continue
                try:
                    out[key] = json.loads(blob)
                except ValueError as err:
                    out[key] = err
        return out

    def refresh(self) -> RefreshStats:
        """List the records and re-read those that are new or changed."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> RefreshStats:
        t0 = time.perf_counter()
        listing = self._list()
        t1 = time.perf_counter()
        entries = self._entries
        changed = [k for k, fp in listing.items() if k not in entries or entries[k][0] != fp]
        removed = [k for k in entries if k not in listing]
        stats = RefreshStats(listed=len(listing), list_s=t1 - t0, at=time.time())
        for key in removed:
            del entries[key]
        for key, obj in self._read(changed).items():
            if isinstance(obj, Exception):
                # Deleted between list and read, or unreadable: not cached, so retried next time.
                stats.unreadable += 1
                if len(stats.errors) < 5:
                    stats.errors.append(f"{key}: {type(obj).__name__}: {obj}")
                entries.pop(key, None)
                continue
            entries[key] = (listing[key], Task.from_json(key, obj))
            stats.read += 1
        stats.removed = len(removed)
        stats.read_s = time.perf_counter() - t1
        if stats.read or stats.removed:
            self.generation += 1
            self._sorted = None
        self.stats = stats
        self._checked = time.monotonic()
        return stats

    def tasks(self, max_age_s: float | None = None) -> list[Task]:
        """Every task, sorted by stage then unit (see :meth:`snapshot`)."""
        return self.snapshot(max_age_s)[1]

    def snapshot(self, max_age_s: float | None = None) -> tuple[int, list[Task]]:
        """The generation and every task (sorted by stage then unit), taken together.

        Parameters
        ----------
        max_age_s : float, optional
            Re-list the store when the last listing is older than this; defaults to
            ``min_interval_s``; 0 forces a refresh.
        """
        limit = self.min_interval_s if max_age_s is None else max_age_s
        with self._lock:
            if time.monotonic() - self._checked >= limit:
                self._refresh()
            if self._sorted is None:
                self._sorted = sorted(
                    (task for _, task in self._entries.values()), key=lambda t: (t.stage, t.unit)
                )
            return self.generation, self._sorted

    # ------------------------------------------------------------------ full records
    def full(self, tasks: Iterable[Task]) -> list[TaskRecord]:
        """The complete records (outputs, traceback, params...) of ``tasks``, in order."""
        wanted = [t.key for t in tasks]
        parsed = self._read(wanted)
        return [
            TaskRecord.from_json(parsed[k])
            for k in wanted
            if k in parsed and not isinstance(parsed[k], Exception)
        ]
