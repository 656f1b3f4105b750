"""Each bad input gets an error naming the file and the fix; the other runs still ingest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_bids, write_bold
from rich.console import Console

from infra.bids import discover
from infra.executors import LocalExecutor
from infra.runner import run_ingest
from infra.storage import Store

QUIET = Console(quiet=True)
GOOD_RUN = "sub-02_ses-pre_task-demo_run-1"


def bold_path(bids, stem="sub-01_ses-pre_task-demo_run-1"):
    return next(bids.rglob(f"{stem}_bold.nii.gz"))


def events_path(bids, stem="sub-01_ses-pre_task-demo_run-1"):
    return next(bids.rglob(f"{stem}_events.tsv"))


def truncate(bids):
    path = bold_path(bids)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt(bids):
    path = bold_path(bids)
    blob = bytearray(path.read_bytes())
    blob[200:400] = b"\x00" * 200
    path.write_bytes(bytes(blob))


def three_d(bids):
    write_bold(bold_path(bids), np.zeros((6, 5, 4), dtype=np.int16))


def no_tr(bids):
    (bids / "task-demo_bold.json").write_text(json.dumps({"TaskName": "demo"}))
    write_bold(bold_path(bids), np.zeros((6, 5, 4, 12), dtype=np.int16), tr=0.0)


def events_without_trial_type(bids):
    pd.DataFrame({"onset": [0.0], "duration": [1.0]}).to_csv(
        events_path(bids), sep="\t", index=False
    )


def negative_duration(bids):
    pd.DataFrame({"onset": [0.0, 4.0], "duration": [1.0, -2.0], "trial_type": ["A", "B"]}).to_csv(
        events_path(bids), sep="\t", index=False
    )


def onset_past_end(bids):
    pd.DataFrame({"onset": [0.0, 30.0], "duration": [1.0, 1.0], "trial_type": ["A", "B"]}).to_csv(
        events_path(bids), sep="\t", index=False
    )


CASES = [
    (truncate, "truncated|corrupt"),
    (corrupt, "corrupt|cannot read"),
    (three_d, "must be 4-D"),
    (no_tr, "no repetition time"),
    (events_without_trial_type, "missing column.*trial_type"),
    (negative_duration, "duration=-2, which must not be negative"),
    (onset_past_end, r"onset=30.*past the end of the run \(24.00 s"),
]


@pytest.mark.parametrize(("spoil", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_run_fails_with_its_file_and_others_go_on(tmp_path, spoil, message):
    bids = make_tiny_bids(tmp_path / "bids")
    spoil(bids)
    dataset = discover(str(bids))
    report = run_ingest(dataset, Store(str(tmp_path / "store")), LocalExecutor(), QUIET, retries=0)
    failed = {r.unit: r for r in report.failed}
    assert list(failed) == ["sub-01_ses-pre_task-demo_run-1"]
    error = failed["sub-01_ses-pre_task-demo_run-1"].error
    assert "sub-01_ses-pre_task-demo_run-1" in error
    assert pytest.importorskip("re").search(message, error), error
    assert GOOD_RUN in {r.unit for r in report.done}
    assert len(report.done) == 3


def test_header_tr_disagreeing_with_sidecar_warns_and_sidecar_wins(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids", tr=2.0)
    write_bold(bold_path(bids), np.zeros((6, 5, 4, 12), dtype=np.int16), tr=2.5)
    report = run_ingest(discover(str(bids)), Store(str(tmp_path / "s")), LocalExecutor(), QUIET)
    record = next(r for r in report.done if r.unit == "sub-01_ses-pre_task-demo_run-1")
    assert any(
        "header TR 2.5 s differs from sidecar RepetitionTime 2 s" in w for w in record.warnings
    )


def test_unknown_entity_and_participants_problems_are_reported(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    src = bold_path(bids)
    src.rename(src.with_name("sub-01_ses-pre_task-demo_foo-bar_run-1_bold.nii.gz"))
    pd.DataFrame({"subject": ["01"]}).to_csv(bids / "participants.tsv", sep="\t", index=False)
    dataset = discover(str(bids))
    messages = "\n".join(p.message for p in dataset.problems)
    assert "unknown BIDS entity 'foo'" in messages
    assert "no participant_id column" in messages
    assert len(dataset.runs) == 3  # the good runs remain


def test_cli_ingest_prints_summary_and_exits_nonzero_on_failure(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    truncate(bids)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "ingest",
            str(bids),
            "--store",
            str(tmp_path / "s"),
            "--cluster",
            "inprocess",
            "--retries",
            "0",
        ],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "FAILED ingest/sub-01_ses-pre_task-demo_run-1" in result.stdout
    assert "ran ok" in result.stdout and "│ ingest │      3 │" in result.stdout
