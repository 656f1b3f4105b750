"""Ingest: exact round trip, incremental re-ingest, resume after a kill, bad inputs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from conftest import STUDYFORREST, make_tiny_bids, requires_shared, write_bold
from rich.console import Console

from infra.bids import discover
from infra.executors import LocalExecutor
from infra.ingest import IncompleteRunError, export_nifti, open_run_group, run_zarr_key
from infra.manifest import Manifest
from infra.runner import run_ingest
from infra.storage import Store

QUIET = Console(quiet=True)


def ingest(bids, store_path, **kw):
    dataset = discover(str(bids))
    store = Store(str(store_path))
    return dataset, store, run_ingest(dataset, store, LocalExecutor(), QUIET, **kw)


def assert_round_trip(source: str, store: Store, key: str, tmp_path) -> None:
    out = tmp_path / "roundtrip.nii.gz"
    export_nifti(store, key, str(out))
    a, b = nib.load(source), nib.load(str(out))
    assert a.get_data_dtype() == b.get_data_dtype()
    np.testing.assert_array_equal(
        np.asarray(a.dataobj.get_unscaled()), np.asarray(b.dataobj.get_unscaled())
    )
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.header.binaryblock == b.header.binaryblock
    assert a.header.get_slope_inter() == b.header.get_slope_inter()
    with gzip.open(source, "rb") as f1, gzip.open(str(out), "rb") as f2:
        assert f1.read() == f2.read()  # byte-identical uncompressed NIfTI


@pytest.mark.parametrize(
    ("dtype", "slope", "inter"),
    [("int16", None, None), ("uint16", None, None), ("float32", None, None), ("int16", 0.5, 100.0)],
)
def test_round_trip_is_exact(tmp_path, dtype, slope, inter):
    bids = make_tiny_bids(
        tmp_path / "bids", subjects=("01",), runs=(1,), dtype=dtype, slope=slope, inter=inter
    )
    dataset, store, report = ingest(bids, tmp_path / "store")
    assert [r.state for r in report.ran] == ["done"]
    run = dataset.runs[0]
    key = run_zarr_key(run)
    assert_round_trip(run.bold.path, store, key, tmp_path)
    attrs = open_run_group(store, key).attrs["boldcloud"]
    assert attrs["dtype"] == dtype
    assert attrs["tr_s"] == 2.0 and attrs["sform_code"] == 1 and attrs["qform_code"] == 1
    if slope is not None:
        assert (attrs["scl_slope"], attrs["scl_inter"]) == (slope, inter)


def test_xarray_sees_named_dims_and_volume_chunks(tmp_path, tiny_bids):
    dataset, store, _ = ingest(tiny_bids, tmp_path / "store")
    ds = xr.open_zarr(store.path(run_zarr_key(dataset.runs[0])), consolidated=False)
    bold = ds["0"]
    assert bold.dims == ("t", "z", "y", "x") and bold.shape == (12, 4, 5, 6)
    assert bold.encoding["chunks"][1:] == (4, 5, 6)  # whole volumes per chunk
    assert ds.attrs["boldcloud"]["entities"] == {
        "sub": "01",
        "ses": "pre",
        "task": "demo",
        "run": "1",
    }
    assert list(ds.attrs["boldcloud"]["events"]["trial_type"][:2]) == ["A", "B"]


@requires_shared()
def test_real_studyforrest_run_round_trips(tmp_path):
    dataset, store, report = ingest(STUDYFORREST, tmp_path / "store")
    assert [r.state for r in report.ran] == ["done"]
    run = dataset.runs[0]
    assert_round_trip(run.bold.path, store, run_zarr_key(run), tmp_path)
    attrs = open_run_group(store, run_zarr_key(run)).attrs["boldcloud"]
    assert attrs["tr_s"] == 2.0 and attrs["dtype"] == "uint16"
    assert attrs["sidecar"]["TaskName"] == "oneback"  # inherited from the root sidecar


def test_reingest_is_a_noop_and_changes_are_reconverted(tmp_path, tiny_bids):
    _, store, first = ingest(tiny_bids, tmp_path / "store")
    assert len(first.done) == 4
    _, _, second = ingest(tiny_bids, tmp_path / "store")
    assert second.ran == [] and len(second.up_to_date) == 4
    # Touch one file (same content): the task runs but converts nothing.
    touched = next(tiny_bids.rglob("sub-01_ses-pre_task-demo_run-1_bold.nii.gz"))
    os.utime(touched, (time.time() + 10, time.time() + 10))
    zarr_chunk_dir = store.path(f"{run_zarr_key(discover(str(tiny_bids)).runs[0])}/0")
    before = os.path.getmtime(zarr_chunk_dir)
    _, _, third = ingest(tiny_bids, tmp_path / "store")
    assert [r.reason for r in third.ran] == ["content unchanged (fingerprint changed only)"]
    assert os.path.getmtime(zarr_chunk_dir) == before
    # Change the data of one run: only that run is converted again, with the new content.
    changed = next(tiny_bids.rglob("sub-02_ses-pre_task-demo_run-2_bold.nii.gz"))
    new = np.full((6, 5, 4, 12), 7, dtype=np.int16)
    write_bold(changed, new)
    dataset, _, fourth = ingest(tiny_bids, tmp_path / "store")
    assert [r.unit for r in fourth.ran] == ["sub-02_ses-pre_task-demo_run-2"]
    run = next(r for r in dataset.runs if r.key == "sub-02_ses-pre_task-demo_run-2")
    np.testing.assert_array_equal(open_run_group(store, run_zarr_key(run))["0"][:], 7)


def test_incomplete_run_is_refused(tmp_path, tiny_bids):
    dataset, store, _ = ingest(tiny_bids, tmp_path / "store")
    key = run_zarr_key(dataset.runs[0])
    group = open_run_group(store, key)
    import zarr

    zarr.open_group(store=store.zarr_store(key), mode="r+").attrs["boldcloud"] = {"complete": False}
    with pytest.raises(IncompleteRunError, match="incomplete"):
        open_run_group(store, key)
    assert group is not None


def test_killed_ingest_resumes_without_redoing_finished_runs(tmp_path):
    bids = make_tiny_bids(
        tmp_path / "bids",
        subjects=("01", "02", "03", "04"),
        sessions=("pre", "post"),
        shape=(40, 40, 30, 60),
    )
    store_path = tmp_path / "store"
    cmd = [
        sys.executable,
        "-m",
        "infra.cli",
        "ingest",
        str(bids),
        "--store",
        str(store_path),
        "--cluster",
        "inprocess",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = Manifest(Store(str(store_path)))
    deadline = time.time() + 120
    while time.time() < deadline:
        done = [r for r in manifest.records("ingest") if r.state == "done"]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    finished = {r.unit: r.finished for r in manifest.records("ingest") if r.state == "done"}
    assert 2 <= len(finished) < 16, "the kill must land mid-ingest"
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    records = {r.unit: r for r in manifest.records("ingest")}
    assert len(records) == 16 and all(r.state == "done" for r in records.values())
    for unit, when in finished.items():
        assert records[unit].finished == when, f"{unit} was redone after the kill"
    for run in discover(str(bids)).runs:  # every run, including the interrupted one, is whole
        assert_round_trip(run.bold.path, Store(str(store_path)), run_zarr_key(run), tmp_path)
