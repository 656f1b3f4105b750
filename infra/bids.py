"""Discover a BIDS dataset over fsspec: one recursive listing, names parsed by processing.ingest.

Works the same for a local folder and ``s3://bucket/prefix``; a dataset of thousands of subjects
costs one listing plus one batched read of the (small) JSON sidecars.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass, field

import pandas as pd

from infra.storage import filesystem
from processing.ingest import (
    BidsFile,
    BidsNameError,
    build_bids_name,
    inheritance_chain,
    merge_sidecars,
    parse_bids_name,
)


@dataclass(frozen=True)
class SourceFile:
    """A file of the dataset: its path on the filesystem and a cheap change fingerprint."""

    path: str
    size: int
    fingerprint: str  # ETag on S3, size+mtime locally: changes whenever the content does


@dataclass
class BoldRun:
    """One BOLD run and everything that describes it."""

    key: str  # BIDS stem without suffix, e.g. sub-01_ses-pre_task-cuff_run-1
    entities: dict[str, str]
    bold: SourceFile
    events: SourceFile | None
    sidecar: dict[str, object]
    sidecar_files: list[str]
    preprocessed: bool = False  # fMRIPrep desc-preproc input
    confounds: SourceFile | None = None

    @property
    def subject(self) -> str:
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        return self.entities.get("ses")


@dataclass(frozen=True)
class Problem:
    """A finding about the dataset: which file, what is wrong, and how to fix it."""

    file: str
    message: str
    severity: str = "error"  # or "warning"


@dataclass
class Dataset:
    """A listed BIDS dataset."""

    url: str
    runs: list[BoldRun]
    anatomicals: dict[str, SourceFile]  # subject -> T1w
    participants: pd.DataFrame | None
    phenotype: dict[str, pd.DataFrame]
    problems: list[Problem] = field(default_factory=list)

    def url_of(self, path: str) -> str:
        """A URL for a file path of this dataset."""
        return f"s3://{path}" if self.url.startswith("s3://") else path


def _fingerprint(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    return f"size:{info.get('size')}:mtime:{info.get('mtime') or info.get('LastModified')}"


def discover(
    url: str,
    tasks: list[str] | None = None,
    subjects: list[str] | None = None,
    sessions: list[str] | None = None,
) -> Dataset:
    """List a BIDS dataset and group its files into runs.

    Parameters
    ----------
    url : str
        Dataset root: local path or ``s3://bucket/prefix``.
    tasks, subjects, sessions : list of str, optional
        Keep only these labels (no ``sub-``/``ses-`` prefixes).

    Returns
    -------
    Dataset
        Runs sorted by key, with problems collected rather than raised, so one bad file never
        hides the others.
    """
    fs, root = filesystem(url)
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"BIDS dataset {url!r} not found (or not a folder). Check the study's 'dataset' "
            "field; relative paths are resolved from the study file's folder."
        )
    listing = fs.find(root, detail=True)
    problems: list[Problem] = []
    files: list[tuple[BidsFile, SourceFile]] = []
    for path, info in sorted(listing.items()):
        rel = path[len(root) + 1 :]
        if _ignored(rel):
            continue
        try:
            parsed = parse(path)
        except BidsNameError as err:
            problems.append(Problem(path, str(err)))
            continue
        if parsed is not None:
            size = int(info.get("size") or 0)
            files.append((parsed, SourceFile(path, size, _fingerprint(info))))
    keep = _selector(tasks, subjects, sessions)
    files = [(b, s) for b, s in files if keep(b)]
    sidecar_text = _read_all(fs, [s.path for b, s in files if b.extension == ".json"], problems)
    runs = _group_runs(files, sidecar_text, problems)
    anat = {
        b.entities["sub"]: s
        for b, s in files
        if b.suffix == "T1w" and b.extension in (".nii", ".nii.gz") and "sub" in b.entities
    }
    participants = _read_participants(fs, root, problems)
    phenotype = _read_phenotype(fs, root, problems)
    return Dataset(url, runs, anat, participants, phenotype, problems)


def parse(path: str) -> BidsFile | None:
    """Parse a path under a dataset, or None for files that carry no entities."""
    name = path.rsplit("/", 1)[-1]
    if "-" not in name.split("_", 1)[0]:
        return None  # dataset_description.json, participants.tsv, README...
    return parse_bids_name(path)


def _ignored(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    hidden = any(part.startswith(".") for part in rel.split("/"))
    return (
        hidden
        or top in {"derivatives", "sourcedata", "code", "phenotype", "stimuli"}
        or ("/" not in rel and not rel.endswith(".json"))
    )


def _selector(tasks, subjects, sessions):
    def keep(bids: BidsFile) -> bool:
        ent = bids.entities
        if subjects and "sub" in ent and ent["sub"] not in subjects:
            return False
        if sessions and "ses" in ent and ent["ses"] not in sessions:
            return False
        return not (tasks and "task" in ent and ent["task"] not in tasks)

    return keep


def _read_all(fs, paths: list[str], problems: list[Problem]) -> dict[str, dict]:
    if not paths:
        return {}
    raw = fs.cat(paths, on_error="return")
    parsed: dict[str, dict] = {}
    for path, blob in raw.items():
        try:
            if isinstance(blob, Exception):
                raise blob
            parsed[_norm(path)] = json.loads(blob)
        except (ValueError, OSError) as err:
            problems.append(Problem(path, f"unreadable JSON sidecar ({err}); fix or remove it."))
    return parsed


def _norm(path: str) -> str:
    return path.split("://", 1)[-1]


def _group_runs(files, sidecars: dict[str, dict], problems: list[Problem]) -> list[BoldRun]:
    jsons = [b for b, _ in files if b.extension == ".json"]
    events: dict[str, SourceFile] = {}
    confounds: dict[str, SourceFile] = {}
    for b, s in files:
        if b.suffix == "events" and b.extension == ".tsv":
            events[_run_key(b)] = s
        if b.suffix == "timeseries" and b.get("desc") == "confounds":
            confounds[_run_key(b)] = s
    runs = []
    for b, s in files:
        if b.suffix != "bold" or b.extension not in (".nii", ".nii.gz"):
            continue
        directory = posixpath.dirname(b.path)
        parents = [j for j in jsons if directory.startswith(posixpath.dirname(j.path))]
        chain = inheritance_chain(_as_json(b), parents)
        sidecar = merge_sidecars(sidecars.get(_norm(j.path), {}) for j in chain)
        key = _run_key(b)
        preprocessed = b.get("desc") == "preproc"
        if key not in events and not preprocessed:
            problems.append(
                Problem(b.path, f"no events file for run {key}; add {key}_events.tsv beside it.")
            )
        runs.append(
            BoldRun(
                key=key,
                entities={k: v for k, v in b.entities.items() if k not in ("space", "desc")},
                bold=s,
                events=events.get(key),
                sidecar=sidecar,
                sidecar_files=[j.path for j in chain],
                preprocessed=preprocessed,
                confounds=confounds.get(key),
            )
        )
    return sorted(runs, key=lambda r: r.key)


def _as_json(bold: BidsFile) -> BidsFile:
    return BidsFile(bold.path, dict(bold.entities), bold.suffix, ".json")


def _run_key(b: BidsFile) -> str:
    entities = {k: v for k, v in b.entities.items() if k not in ("space", "desc", "res", "den")}
    return build_bids_name(entities, "")[:-1]


def _read_participants(fs, root: str, problems: list[Problem]) -> pd.DataFrame | None:
    path = posixpath.join(root, "participants.tsv")
    if not fs.exists(path):
        return None
    table = _read_tsv(fs, path, problems)
    if table is not None and "participant_id" not in table.columns:
        problems.append(
            Problem(
                path,
                f"participants.tsv has no participant_id column (columns: {list(table.columns)});"
                " the first column must be participant_id with values like sub-01.",
            )
        )
        return None
    return table


def _read_phenotype(fs, root: str, problems: list[Problem]) -> dict[str, pd.DataFrame]:
    folder = posixpath.join(root, "phenotype")
    if not fs.isdir(folder):
        return {}
    tables = {}
    for path in sorted(fs.find(folder)):
        if path.endswith(".tsv"):
            table = _read_tsv(fs, path, problems)
            if table is not None:
                tables[posixpath.basename(path)[: -len(".tsv")]] = table
    return tables


def _read_tsv(fs, path: str, problems: list[Problem]) -> pd.DataFrame | None:
    try:
        return pd.read_csv(io.BytesIO(fs.cat_file(path)), sep="\t", na_values=["n/a"])
    except (ValueError, OSError) as err:
        problems.append(Problem(path, f"unreadable TSV ({err})."))
        return None
