"""What the detail pages show, gathered from the store: failures, one subject, results, cluster.

Each function returns plain data for a template (and the JSON API). Only a few full records and
small files are read per page; the overview never comes here.
"""

from __future__ import annotations

import csv
import io
import posixpath
import shlex
from collections.abc import Sequence
from typing import Any

import yaml

from infra.dashboard.cache import ManifestCache, Task
from infra.dashboard.views import natural_key
from infra.storage import Store
from processing.stages import STAGES

# Store areas the dashboard may serve files from, and the media types it serves.
FILE_PREFIXES = ("derivatives/", "group/", "reports/")
MEDIA_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tsv": "text/tab-separated-values; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
FD_STAGE = "motion"  # the stage whose outputs hold the confounds TSV and the motion verdict
# QC numbers shown per run: (stage, output) -> label.
METRICS = {
    ("motion", "max_fd_mm"): "max framewise displacement (mm)",
    ("motion", "max_rel_rms_mm"): "max TR-to-TR RMS (mm)",
    ("motion", "n_fd_over_0p5"): "volumes with FD > 0.5 mm",
    ("filter", "tsnr_median"): "median tSNR in the mask",
    ("filter", "mask_voxels"): "brain mask voxels",
}
THRESHOLD_PARAM = "preprocessing.motion_exclusion_mm"
CLUSTER_KEY = "manifest/cluster.json"  # written by record_cluster, read by the cluster page


def safe_key(key: str) -> str | None:
    """``key`` if it names a servable file under :data:`FILE_PREFIXES`, else None.

    Refuses ``..``, absolute paths, backslashes and unknown extensions, so a request can never
    leave the store's results areas.
    """
    if not key or "\\" in key or key.startswith("/") or "\x00" in key:
        return None
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    if not key.startswith(FILE_PREFIXES) or media_type(key) is None:
        return None
    return key


def media_type(key: str) -> str | None:
    """The media type the dashboard serves ``key`` with (None: not served)."""
    return MEDIA_TYPES.get(posixpath.splitext(key)[1].lower())


def run_of(unit: str) -> str:
    """The run a chunk or block unit belongs to."""
    return unit.split("_chunk-")[0].split("_block-")[0]


def study_info(store: Store) -> dict[str, Any]:
    """Name and dataset of the study file the last run copied into the store (if any)."""
    try:
        doc = yaml.safe_load(store.read_bytes("study.yaml")) or {}
    except (FileNotFoundError, OSError, yaml.YAMLError):
        return {}
    if not isinstance(doc, dict):
        return {}
    name = doc.get("name") or (doc.get("model") or {}).get("Name")
    return {"name": name, "dataset": doc.get("dataset")}


def retry_command(task: Task, store_url: str, study: dict[str, Any]) -> str:
    """The command that retries a failed task.

    Ingest failures retry that subject's runs; any other stage reruns the study, which redoes
    only what failed or never ran (finished tasks are skipped).
    """
    store = shlex.quote(store_url)
    if task.stage == "ingest":
        dataset = shlex.quote(str(study.get("dataset") or "BIDS_ROOT"))
        subject = f" --subject {shlex.quote(task.subject)}" if task.subject else ""
        return f"boldcloud ingest {dataset} --store {store}{subject}"
    return f"boldcloud run study.yaml --store {store}"


def failure_details(
    cache: ManifestCache, tasks: Sequence[Task], store_url: str, subject: str | None = None
) -> list[dict[str, Any]]:
    """Every failed task (of one subject) with its full error, traceback and retry command."""
    study = study_info(cache.store)
    failed = [t for t in tasks if t.state == "failed" and (subject is None or t.subject == subject)]
    failed.sort(key=lambda t: (natural_key(t.subject or ""), t.stage, t.unit))
    records = {r.task_id: r for r in cache.full(failed)}
    out = []
    for task in failed:
        rec = records.get(task.task_id)
        out.append(
            {
                "task": task.task_id,
                "stage": task.stage,
                "unit": task.unit,
                "subject": task.subject,
                "error": rec.error if rec else task.error,
                "traceback": rec.traceback if rec else None,
                "attempts": task.attempts,
                "worker": task.worker,
                "finished": task.finished,
                "retry": retry_command(task, store_url, study),
            }
        )
    return out


def _pngs(outputs: Any, label: str = "") -> list[tuple[str, str]]:
    """(label, key) of every ``.png`` store key in a record's outputs, at any depth."""
    found: list[tuple[str, str]] = []
    if isinstance(outputs, str):
        if outputs.lower().endswith(".png"):
            found.append((label, outputs))
    elif isinstance(outputs, dict):
        for name, value in outputs.items():
            found += _pngs(value, f"{label} {name}".strip())
    elif isinstance(outputs, list):
        for value in outputs:
            found += _pngs(value, label)
    return found


def motion_trace(
    store: Store, confounds_key: str, threshold: float | None, width: int = 640, height: int = 140
) -> dict[str, Any] | None:
    """Framewise displacement and TR-to-TR RMS of a run as SVG polylines, with the threshold.

    The exclusion criterion is the TR-to-TR (relative) RMS displacement against
    ``preprocessing.motion_exclusion_mm``; the threshold line is drawn on that scale.
    """
    try:
        text = store.read_bytes(confounds_key).decode()
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return None

    def column(name: str) -> list[float]:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name) or 0.0))
            except ValueError:  # "n/a" in the first row
                values.append(0.0)
        return values

    fd, rms = column("framewise_displacement"), column("rmsd")
    if len(fd) < 2:
        return None
    top = max(max(fd), max(rms), (threshold or 0.0) * 1.15, 1e-6)
    pad = 4.0

    def y(v: float) -> float:
        return round(height - pad - (height - 2 * pad) * v / top, 1)

    def points(values: list[float]) -> str:
        step = (width - 2 * pad) / (len(values) - 1)
        return " ".join(f"{pad + i * step:.1f},{y(v)}" for i, v in enumerate(values))

    return {
        "width": width,
        "height": height,
        "fd": points(fd),
        "rms": points(rms),
        "threshold": threshold,
        "threshold_y": y(threshold) if threshold is not None else None,
        "top_mm": top,
        "max_fd": max(fd),
        "max_rms": max(rms),
        "n_volumes": len(fd),
        "over_threshold": sum(v > threshold for v in rms) if threshold is not None else None,
    }


def subject_details(cache: ManifestCache, tasks: Sequence[Task], subject: str) -> dict[str, Any]:
    """One subject: per run its stage states, QC images, motion trace and exclusion reasons."""
    mine = [t for t in tasks if t.subject == subject]
    runs: dict[str, dict[str, Any]] = {}
    for task in mine:
        run = runs.setdefault(
            run_of(task.unit),
            {
                "unit": run_of(task.unit),
                "stages": {},
                "excluded": [],
                "images": [],
                "trace": None,
                "metrics": [],
            },
        )
        states = run["stages"].setdefault(task.stage, {})
        states[task.state] = states.get(task.state, 0) + 1
        if task.state == "excluded" and task.reason and task.reason not in run["excluded"]:
            run["excluded"].append(task.reason)
    # Full records of the run-level tasks that wrote QC outputs.
    with_outputs = [t for t in mine if t.state == "done" and t.unit in runs]
    for rec in cache.full(with_outputs):
        run = runs[rec.unit]
        run["images"] += [
            (f"{rec.stage}: {label}" if label else rec.stage, key)
            for label, key in _pngs(rec.outputs)
        ]
        for (stage, name), label in METRICS.items():
            value = rec.outputs.get(name) if rec.stage == stage else None
            if isinstance(value, int | float):
                run["metrics"].append((label, value))
        if rec.stage == FD_STAGE:
            if rec.outputs.get("excluded") and rec.reason:
                reason = f"motion: {rec.reason}"
                if reason not in run["excluded"]:
                    run["excluded"].insert(0, reason)
            threshold = rec.params.get(THRESHOLD_PARAM)
            confounds = rec.outputs.get("confounds")
            if confounds:
                run["trace"] = motion_trace(cache.store, confounds, threshold)
    for run in runs.values():
        run["images"].sort(key=lambda item: item[0])
        run["state"] = _run_state(run["stages"])
    ordered = sorted(runs.values(), key=lambda r: natural_key(r["unit"]))
    wider = {s.name for s in STAGES if s.granularity in ("session", "subject")}
    is_run = {r["unit"]: not (set(r["stages"]) & wider) for r in ordered}
    return {
        "subject": subject,
        "tasks": len(mine),
        "runs": [r for r in ordered if is_run[r["unit"]]],
        "sessions": [r for r in ordered if not is_run[r["unit"]]],
    }


def _run_state(stages: dict[str, dict[str, int]]) -> str:
    states = {s for counts in stages.values() for s in counts}
    for state in ("failed", "running", "pending"):
        if state in states:
            return state
    return "done" if "done" in states else "excluded"


RESULT_AREAS = ("group", "reports", "derivatives/boldcloud/group")


def results(store: Store, limit_rows: int = 50) -> dict[str, Any]:
    """Group results (images, tables) and HTML reports under :data:`RESULT_AREAS`, if any."""
    keys = [k for area in RESULT_AREAS for k in store.list(area) if safe_key(k)]
    images = [k for k in keys if media_type(k) in ("image/png", "image/jpeg")]
    reports = [k for k in keys if k.endswith(".html")]
    tables = []
    for key in (k for k in keys if k.endswith(".tsv")):
        try:
            rows = list(csv.reader(io.StringIO(store.read_bytes(key).decode()), delimiter="\t"))
        except (OSError, UnicodeDecodeError):
            continue
        if rows:
            tables.append(
                {
                    "key": key,
                    "columns": rows[0],
                    "rows": rows[1 : limit_rows + 1],
                    "more": max(0, len(rows) - 1 - limit_rows),
                }
            )
    return {"images": images, "tables": tables, "reports": reports, "empty": not keys}


def cluster_links(store: Store, explicit: str | None = None) -> dict[str, Any]:
    """The Dask dashboard address and cluster description, if known.

    From ``explicit`` (``boldcloud dashboard --dask-dashboard``), else ``manifest/cluster.json``
    or a ``cluster`` entry in ``manifest/index.json`` when the run recorded one.
    """
    info: dict[str, Any] = {}
    for key, pick in ((CLUSTER_KEY, lambda d: d), ("manifest/index.json", _cluster)):
        try:
            found = pick(store.read_json(key))
        except (FileNotFoundError, OSError, ValueError):
            continue
        if isinstance(found, dict) and found:
            info = found
            break
    if explicit:
        info = {**info, "dashboard_link": explicit}
    link = info.get("dashboard_link")
    if link and not str(link).startswith(("http://", "https://")):
        info.pop("dashboard_link")
    return info


def record_cluster(
    store: Store, dashboard_link: str | None, description: str = "", **extra: Any
) -> None:
    """Record the running cluster in ``manifest/cluster.json`` for the cluster page.

    For the runner to call once its executor is up, e.g. with a Dask client's
    ``dashboard_link`` and the executor's description.
    """
    info = {"dashboard_link": dashboard_link, "description": description, **extra}
    store.write_json(CLUSTER_KEY, {k: v for k, v in info.items() if v is not None})


def _cluster(index: Any) -> dict[str, Any]:
    return index.get("cluster", {}) if isinstance(index, dict) else {}
