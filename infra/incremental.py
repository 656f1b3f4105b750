"""New or changed subjects: a snapshot of source hashes per subject-session (``run --new-only``).

``manifest/sources.json`` holds, per unit (``sub-01_ses-pre``, or ``sub-01`` without sessions), a
SHA-256 over the content of everything that unit's subject-level tasks read: each run's BOLD,
events and confounds files, its merged JSON sidecar, and the subject's T1w. Each file's hash is
stored beside its cheap fingerprint (ETag on S3, size+mtime locally); a file whose fingerprint
did not change is not read again, and the ingest records' hashes seed the cache. The snapshot is
rewritten after a run, with the units whose subject-level tasks all succeeded.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from infra.bids import Dataset, SourceFile
from infra.ingest import sha256_of
from infra.manifest import Manifest, TaskRecord
from infra.storage import Store, filesystem
from processing.stages import STAGES

SOURCES_KEY = "manifest/sources.json"
GROUP_STAGES: frozenset[str] = frozenset(s.name for s in STAGES if s.granularity == "group")


@dataclass
class Changes:
    """What differs between the BIDS source and the snapshot of the last run."""

    dataset: Dataset
    hashes: dict[str, str]  # unit -> content hash, as found now
    files: dict[str, list[str]]  # path -> [fingerprint, sha256], as found now
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    group_pending: bool = False  # the group stages did not finish in the last run

    @property
    def todo(self) -> set[str]:
        """Units whose subject-level tasks run."""
        return set(self.new) | set(self.changed)

    @property
    def work(self) -> bool:
        """Whether anything needs running."""
        return bool(self.todo or self.deleted or self.group_pending)

    def keep(self, record: TaskRecord) -> bool:
        """Whether a planned task runs: group stages and tasks of new or changed units do."""
        if record.stage in GROUP_STAGES or record.subject is None:
            return True
        subject, session = record.subject, record.session
        if session is None:  # subject-level unit: any new or changed session of the subject
            return any(_subject(u) == subject for u in self.todo)
        return unit_name(subject, session) in self.todo


def unit_name(subject: str, session: str | None) -> str:
    """``sub-01_ses-pre``, or ``sub-01`` when the dataset has no sessions."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def split_unit(unit: str) -> tuple[str, str | None]:
    """Inverse of :func:`unit_name`: ``("01", "pre")`` or ``("01", None)``."""
    subject, _, session = unit.partition("_ses-")
    return subject[len("sub-") :], session or None


def _subject(unit: str) -> str:
    return split_unit(unit)[0]


def read_snapshot(store: Store) -> dict[str, Any]:
    """The last snapshot, or an empty one."""
    try:
        return store.read_json(SOURCES_KEY)
    except FileNotFoundError:
        return {"units": {}, "files": {}, "group_current": True}


def _ingest_cache(store: Store) -> dict[tuple[str, str], str]:
    """(path, fingerprint) -> sha256 from the ingest records (bold and events)."""
    cache = {}
    for rec in Manifest(store).records("ingest"):
        bold = rec.outputs.get("run") or {}
        if rec.state == "done" and bold.get("path") and rec.inputs.get("bold_sha256"):
            cache[(bold["path"], bold.get("fingerprint"))] = rec.inputs["bold_sha256"]
    return cache


class _Hasher:
    """Content hashes of source files, read only when the fingerprint is unknown."""

    def __init__(self, dataset: Dataset, snapshot: dict[str, Any], store: Store) -> None:
        self.fs = filesystem(dataset.url)[0]
        self.cache = {(p, fp): sha for p, (fp, sha) in snapshot.get("files", {}).items()}
        self.cache.update(_ingest_cache(store))
        self.files: dict[str, list[str]] = {}

    def __call__(self, source: SourceFile | None) -> str | None:
        if source is None:
            return None
        sha = self.cache.get((source.path, source.fingerprint))
        if sha is None:
            sha = sha256_of(self.fs, source.path)
        self.files[source.path] = [source.fingerprint, sha]
        return sha


def source_hashes(dataset: Dataset, hasher: _Hasher) -> dict[str, str]:
    """Content hash per unit of everything its subject-level tasks read."""
    parts: dict[str, list[Any]] = {}
    for run in dataset.runs:
        unit = unit_name(run.subject, run.session)
        sidecar = hashlib.sha256(json.dumps(run.sidecar, sort_keys=True).encode()).hexdigest()
        files = [hasher(run.bold), hasher(run.events), hasher(run.confounds)]
        parts.setdefault(unit, []).append([run.key, *files, sidecar])
    for unit, runs in parts.items():
        runs.append(["T1w", hasher(dataset.anatomicals.get(_subject(unit)))])
    return {
        unit: hashlib.sha256(json.dumps(sorted(p, key=str)).encode()).hexdigest()
        for unit, p in parts.items()
    }


def find_changes(dataset: Dataset, store: Store) -> Changes:
    """Compare the source with the store's snapshot.

    Parameters
    ----------
    dataset : Dataset
        The discovered BIDS source (the study's selection applied).
    store : Store
        The study's store (snapshot at ``manifest/sources.json``).

    Returns
    -------
    Changes
        New, changed and deleted units, and the hashes to record after a successful run.
    """
    snapshot = read_snapshot(store)
    hasher = _Hasher(dataset, snapshot, store)
    hashes = source_hashes(dataset, hasher)
    before: dict[str, str] = snapshot.get("units", {})
    return Changes(
        dataset=dataset,
        hashes=hashes,
        files=hasher.files,
        new=sorted(u for u in hashes if u not in before),
        changed=sorted(u for u in hashes if u in before and before[u] != hashes[u]),
        deleted=sorted(u for u in before if u not in hashes),
        group_pending=not snapshot.get("group_current", True),
    )


def record_sources(store: Store, changes: Changes, records: list[TaskRecord]) -> dict[str, Any]:
    """Rewrite the snapshot after a run: units with a failed subject-level task keep their old
    hash (so the next ``--new-only`` retries them); deleted units are dropped (reported once)."""
    old = read_snapshot(store)
    failed = {
        (r.subject, r.session)
        for r in records
        if r.state == "failed" and r.subject and r.stage not in GROUP_STAGES
    }
    units = {}
    for unit, digest in changes.hashes.items():
        subject, session = split_unit(unit)
        if (subject, session) not in failed and (subject, None) not in failed:
            units[unit] = digest
        elif unit in old.get("units", {}):
            units[unit] = old["units"][unit]
    group_ok = not any(r.state == "failed" and r.stage in GROUP_STAGES for r in records)
    snapshot = {
        "written": time.time(),
        "units": dict(sorted(units.items())),
        "files": changes.files,
        "group_current": group_ok,
    }
    store.write_json(SOURCES_KEY, snapshot)
    return snapshot


def snapshot_sources(
    store: Store,
    dataset: Dataset,
    changes: Changes | None,
    records: list[TaskRecord],
    console: Any,
) -> None:
    """:func:`record_sources` after a run (hashing the source first after a plain ``run``); a
    failure only warns: the run's results stand, the next ``--new-only`` rechecks more units."""
    try:
        record_sources(store, changes or find_changes(dataset, store), records)
    except OSError as err:
        console.print(
            f"[yellow]warning[/] could not record the source snapshot {SOURCES_KEY} ({err}); "
            "the next run --new-only will re-check those subjects (finished tasks are kept).",
            highlight=False,
        )


def describe_changes(changes: Changes) -> list[str]:
    """Human lines: what is new, changed, deleted (nothing is deleted from the store)."""
    lines = []
    if changes.new:
        lines.append(f"new: {', '.join(changes.new)}")
    if changes.changed:
        lines.append(f"changed (source content differs): {', '.join(changes.changed)}")
    if changes.deleted:
        lines.append(
            f"deleted from the source: {', '.join(changes.deleted)} (their results are kept; "
            "the group stages are recomputed from the subjects present)"
        )
    if changes.group_pending:
        lines.append("group stages did not finish last time: running them again")
    return lines or ["nothing new or changed in the source since the last run"]
