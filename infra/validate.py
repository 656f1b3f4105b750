"""`boldcloud validate`: a study file and the dataset it names, every problem at once."""

from __future__ import annotations

import gzip
import io
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from infra.bids import BoldRun, Dataset, discover
from infra.ingest import parse_header_bytes
from infra.storage import filesystem
from infra.study import Issue, Study
from processing.ingest import EventsError, NiftiInputError, inspect_bold_header, validate_events

# Confounds that boldcloud computes itself (motion correction), so the dataset need not have them.
DERIVED_CONFOUNDS = frozenset(
    {"trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "framewise_displacement"}
)


def dataset_issues(study: Study) -> tuple[Dataset | None, list[Issue]]:
    """Discover the study's dataset and check it against the model."""
    try:
        dataset = discover(
            study.dataset_url, study.tasks, study.select("subjects"), study.select("sessions")
        )
    except (FileNotFoundError, OSError) as err:
        return None, [Issue(study.path, "dataset", str(err), "point 'dataset' at a BIDS root.")]
    issues = [Issue(p.file, "-", p.message, severity=p.severity) for p in dataset.problems]
    if not dataset.runs:
        issues.append(
            Issue(
                study.path,
                "model.Input.task",
                f"no BOLD runs for task(s) {study.tasks} in {study.dataset_url}.",
                "check the task label and the select block.",
            )
        )
        return dataset, issues
    with ThreadPoolExecutor(max_workers=8) as pool:
        for found in pool.map(lambda run: check_run(dataset.url, run), dataset.runs):
            issues += found
    issues += _condition_issues(study, dataset)
    issues += _participant_issues(study, dataset)
    return dataset, issues


def check_run(dataset_url: str, run: BoldRun) -> list[Issue]:
    """Header (4-D, TR) and events checks for one run, reading only the header bytes."""
    fs, _ = filesystem(dataset_url)
    try:
        with fs.open(run.bold.path, "rb") as raw:
            handle = gzip.GzipFile(fileobj=raw) if run.bold.path.endswith(".gz") else raw
            header = parse_header_bytes(handle.read(540))
        info = inspect_bold_header(header, run.sidecar, source=run.bold.path)
    except (NiftiInputError, OSError, EOFError, ValueError) as err:
        return [Issue(run.bold.path, "header", str(err))]
    issues = [Issue(run.bold.path, "header", w, severity="warning") for w in info.warnings]
    if run.events is not None:
        try:
            table = pd.read_csv(
                io.BytesIO(fs.cat_file(run.events.path)), sep="\t", na_values=["n/a"]
            )
            validate_events(table, info.shape[3] * info.tr_s, source=run.events.path)
        except (EventsError, ValueError) as err:
            issues.append(Issue(run.events.path, "events", str(err)))
    return issues


def _condition_issues(study: Study, dataset: Dataset) -> list[Issue]:
    fs, _ = filesystem(dataset.url)
    paths = [r.events.path for r in dataset.runs if r.events is not None][:50]
    seen: set[str] = set()
    for blob in fs.cat(paths, on_error="omit").values() if paths else []:
        table = pd.read_csv(io.BytesIO(blob), sep="\t", na_values=["n/a"])
        if "trial_type" in table:
            seen |= set(table["trial_type"].dropna().astype(str))
    issues = []
    for i, node in enumerate(study.doc["model"]["Nodes"]):
        if node["Level"] != "Run":
            continue
        confounds = set(study.get("boldcloud.run_level.confounds", [])) | DERIVED_CONFOUNDS
        for column in node["Model"]["X"]:
            if str(column) not in seen and str(column) not in confounds and seen:
                issues.append(
                    Issue(
                        study.path,
                        f"model.Nodes.{i}.Model.X",
                        f"'{column}' is neither a trial_type in the events files "
                        f"({sorted(seen)}) nor a confound.",
                        "fix the spelling or add it to boldcloud.run_level.confounds.",
                    )
                )
    return issues


def _participant_issues(study: Study, dataset: Dataset) -> list[Issue]:
    issues = []
    column = study.get("boldcloud.group_level.variance_groups")
    table = dataset.participants
    if column and (table is None or column not in table.columns):
        have = [] if table is None else list(table.columns)
        issues.append(
            Issue(
                study.path,
                "boldcloud.group_level.variance_groups",
                f"participants.tsv has no column {column!r} (columns: {have}).",
                "name an existing participants.tsv column or use null.",
            )
        )
    return issues + _dataset_variable_issues(study, dataset)


def _dataset_variable_issues(study: Study, dataset: Dataset) -> list[Issue]:
    """Every Model.X variable of a Dataset node must be a participants/phenotype column."""
    tables = [dataset.participants, *dataset.phenotype.values()]
    columns = {str(c) for t in tables if t is not None for c in t.columns}
    columns -= {"participant_id", "session_id"}
    issues = []
    for i, node in enumerate(study.get("model.Nodes") or []):
        if node.get("Level") != "Dataset":
            continue
        for name in (node.get("Model") or {}).get("X") or []:
            if str(name) in ("1", "intercept") or str(name) in columns:
                continue
            issues.append(
                Issue(
                    study.path,
                    f"model.Nodes.{i}.Model.X",
                    f"Dataset node {node.get('Name')!r} uses {name!r}, which is not a column of "
                    f"participants.tsv or phenotype/*.tsv (columns: {sorted(columns)}).",
                    "fix the name or add the column to participants.tsv.",
                )
            )
    return issues
