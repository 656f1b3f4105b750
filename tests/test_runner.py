"""Task wrapper and executors: retries, attempts, errors, and Dask matching the reference loop."""

from __future__ import annotations

import pytest
from conftest import make_tiny_bids
from rich.console import Console

from infra.bids import discover
from infra.clusters import make_executor
from infra.executors import LocalExecutor
from infra.ingest import open_run_group, run_zarr_key
from infra.manifest import Manifest, TaskRecord, content_key
from infra.runner import execute_specs, run_ingest
from infra.storage import Store
from infra.tasks import TaskSpec

QUIET = Console(quiet=True)


def flaky(spec: TaskSpec, record: TaskRecord) -> dict:
    """Fails with an I/O error until its third attempt."""
    if record.attempts < 3:
        raise OSError(f"transient failure on attempt {record.attempts}")
    return {"value": spec.payload["x"] * 2}


def bad_input(spec: TaskSpec, record: TaskRecord) -> dict:
    raise ValueError("run.nii.gz: bad header; re-export it")


def spec(tmp_path, fn, unit="u1", retries=2, x=1):
    record = TaskRecord(stage="toy", unit=unit)
    return TaskSpec("toy", unit, str(tmp_path / "store"), record, fn, {"x": x}, retries)


def test_transient_errors_are_retried_and_attempts_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr("infra.tasks.time.sleep", lambda s: None)
    [record] = execute_specs([spec(tmp_path, flaky)], LocalExecutor(), QUIET, "toy")
    assert (record.state, record.attempts, record.outputs) == ("done", 3, {"value": 2})
    stored = Manifest(Store(str(tmp_path / "store"))).get("toy", "u1")
    assert stored.state == "done" and stored.attempts == 3 and stored.duration_s >= 0


def test_retries_exhausted_record_the_error(tmp_path, monkeypatch):
    monkeypatch.setattr("infra.tasks.time.sleep", lambda s: None)
    [record] = execute_specs([spec(tmp_path, flaky, retries=1)], LocalExecutor(), QUIET, "toy")
    assert record.state == "failed" and record.attempts == 2
    assert record.error == "OSError: transient failure on attempt 2"
    assert "Traceback" in record.traceback


def test_input_errors_are_not_retried(tmp_path):
    [record] = execute_specs([spec(tmp_path, bad_input)], LocalExecutor(), QUIET, "toy")
    assert record.state == "failed" and record.attempts == 1
    assert "re-export it" in record.error


def test_dask_executor_matches_the_reference_loop(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    dataset = discover(str(bids))
    ref, dsk = Store(str(tmp_path / "ref")), Store(str(tmp_path / "dask"))
    run_ingest(dataset, ref, LocalExecutor(), QUIET)
    executor = make_executor("local", workers=2)
    try:
        report = run_ingest(dataset, dsk, executor, QUIET)
    finally:
        executor.close()
    assert len(report.done) == 6
    workers = {r.worker for r in report.done}
    assert workers and None not in workers
    for run in dataset.runs:
        a = open_run_group(ref, run_zarr_key(run))["0"][:]
        b = open_run_group(dsk, run_zarr_key(run))["0"][:]
        assert (a == b).all()
    keys_ref = {r.unit: r.key for r in Manifest(ref).records()}
    keys_dsk = {r.unit: r.key for r in Manifest(dsk).records()}
    assert keys_ref == keys_dsk  # task keys depend on content, not on where it ran


def test_index_summarises_states(tmp_path):
    store = Store(str(tmp_path / "s"))
    manifest = Manifest(store)
    for unit, state in [("a", "done"), ("b", "failed"), ("c", "done")]:
        manifest.put(TaskRecord(stage="ingest", unit=unit, state=state, error="boom"))
    index = manifest.write_index()
    assert index["stages"] == {"ingest": {"done": 2, "failed": 1}}
    assert store.read_json("manifest/index.json")["failed"][0]["task"] == "ingest/b"


def test_content_key_is_order_independent_and_sensitive():
    assert content_key(a=1, b={"x": 1, "y": 2}) == content_key(b={"y": 2, "x": 1}, a=1)
    assert content_key(a=1) != content_key(a=2)


def test_unknown_cluster_kind_is_explained():
    with pytest.raises(ValueError, match="use 'local', 'inprocess' or a scheduler address"):
        make_executor("kubernetes-but-misspelt")


def test_plan_units_skips_done_and_invalidates_on_params_and_upstream(tmp_path):
    from infra.pipeline import PlanContext, Unit, plan_units
    from processing.stages import Stage

    def double(spec, record):
        return {"value": spec.payload["x"] * 2}

    stage = Stage(
        "toy",
        (),
        "1",
        ("raw:x",),
        ("work:y",),
        "run",
        "none",
        params=("preprocessing.smoothing_fwhm_mm",),
    )
    store = Store(str(tmp_path / "s"))
    units = [
        Unit("a", "01", None, {"raw": "k1"}, {"x": 1}),
        Unit("b", "02", None, {"raw": "k2"}, {"x": 2}),
        Unit("c", "03", None, {"raw": "k3"}, excluded="motion: 2.7 mm at volume 9"),
    ]
    ctx = PlanContext(None, None, store)
    plan = plan_units(stage, units, ctx, double)
    assert [s.unit for s in plan.todo] == ["a", "b"]
    assert [(r.unit, r.state, r.reason) for r in plan.excluded] == [
        ("c", "excluded", "motion: 2.7 mm at volume 9")
    ]
    assert plan.todo[0].payload["out"].startswith("work/toy/")
    assert plan.todo[0].record.params == {"preprocessing.smoothing_fwhm_mm": 5.0}
    ctx.update(execute_specs(plan.todo, LocalExecutor(), QUIET, "toy") + plan.excluded)
    again = plan_units(stage, units, ctx, double)
    assert again.todo == [] and len(again.current) == 3
    units[1].upstream = {"raw": "k2-new"}  # a re-ingested run invalidates only its own task
    assert [s.unit for s in plan_units(stage, units, ctx, double).todo] == ["b"]
    stage2 = Stage("toy", (), "2", ("raw:x",), ("work:y",), "run", "none")  # new kernel version
    assert len(plan_units(stage2, units, ctx, double).todo) == 2
