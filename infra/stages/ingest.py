"""Engine side of the ``ingest`` stage: plan tasks from a dataset listing, convert each run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import zarr

from infra.bids import BoldRun, SourceFile
from infra.ingest import INGEST_VERSION, ingest_run, sha256_of
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan
from infra.storage import Store, filesystem
from infra.tasks import TaskSpec
from processing.stages import stage

STAGE = stage("ingest")
CODE_VERSION = f"ingest-{STAGE.version}.{INGEST_VERSION}"


def _fingerprints(run: BoldRun) -> dict[str, Any]:
    sidecar = json.dumps(run.sidecar, sort_keys=True).encode()
    return {
        "bold": run.bold.fingerprint,
        "events": run.events.fingerprint if run.events else None,
        "sidecar_sha256": hashlib.sha256(sidecar).hexdigest(),
    }


def plan_ingest(ctx: PlanContext) -> StagePlan:
    """Tasks for runs that are new or changed; records of runs already up to date.

    A run is up to date when its last record is ``done`` with the same source fingerprints
    (ETag or size+mtime), the same merged sidecar and the same code version: no file is read.
    Unlike later stages, the key is only known after hashing the content, in the task itself.
    """
    previous = ctx.load(STAGE.name)
    plan = StagePlan(STAGE.name)
    dataset, store = ctx.dataset, ctx.store
    for run in dataset.runs:
        prints = _fingerprints(run)
        old = previous.get(run.key)
        fresh = (
            old is not None
            and old.state == "done"
            and old.code_version == CODE_VERSION
            and {k: old.inputs.get(k) for k in prints} == prints
        )
        if fresh and not ctx.force:
            plan.current.append(old)
            continue
        record = TaskRecord(
            stage=STAGE.name,
            unit=run.key,
            subject=run.subject,
            session=run.session,
            attempts=old.attempts if old else 0,
            inputs=prints,
            code_version=CODE_VERSION,
        )
        payload = {"dataset_url": dataset.url, "run": run, "previous": old}
        spec = TaskSpec(STAGE.name, run.key, store.url, record, run_ingest, payload, ctx.retries)
        plan.todo.append(spec)
    return plan


def _sha(dataset_url: str, source: SourceFile | None) -> str | None:
    if source is None:
        return None
    return sha256_of(filesystem(dataset_url)[0], source.path)


def run_ingest(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Convert one run, or only refresh its record when the content did not change."""
    run: BoldRun = spec.payload["run"]
    dataset_url: str = spec.payload["dataset_url"]
    store = Store(spec.store_url)
    record.inputs["bold_sha256"] = _sha(dataset_url, run.bold)
    record.inputs["events_sha256"] = _sha(dataset_url, run.events)
    record.key = content_key(
        stage=STAGE.name,
        code=CODE_VERSION,
        bold=record.inputs["bold_sha256"],
        events=record.inputs["events_sha256"],
        sidecar=record.inputs["sidecar_sha256"],
    )
    old: TaskRecord | None = spec.payload.get("previous")
    if old is not None and old.state == "done" and old.key == record.key:
        if _complete(store, old.outputs.get("zarr")):
            record.reason = "content unchanged (fingerprint changed only)"
            return old.outputs
    result = ingest_run(dataset_url, run, store, sha=record.inputs["bold_sha256"])
    record.warnings = list(result.warnings)
    return {
        "zarr": result.zarr_key,
        "shape": list(result.shape),
        "dtype": result.dtype,
        "chunk_volumes": result.chunk_volumes,
        "run": asdict(run.bold) | {"entities": run.entities},
    }


def _complete(store: Store, key: str | None) -> bool:
    if not key or not store.exists(key):
        return False
    try:
        group = zarr.open_group(store=store.zarr_store(key), mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError):
        return False
    return bool(group.attrs.get("boldcloud", {}).get("complete"))
