"""Full size (2 mm, 98 x 98 x 75 x 188): one simulated run through every stage with FILM; the
planted P40 - P0 and anticipation effects are recovered at their native locations (peak within
4 mm of the planted peak, z > 5). About 2-3 minutes on 2 cores."""

from __future__ import annotations

import pytest
import yaml
from firstlevel_truth import roi_recovery
from rich.console import Console

from infra.bids import discover
from infra.clusters import make_executor
from infra.demo import write_demo_study
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.storage import Store
from infra.study import load_study
from processing.simulate import simulate_study

pytestmark = pytest.mark.slow
RUN = "sub-01_ses-pre_task-cuff_run-1"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    simulate_study(out / "bids", subjects=1, seed=0, size="full")
    path = write_demo_study(out)
    doc = yaml.safe_load(path.read_text())
    doc["select"] = {"subjects": ["01"], "sessions": ["pre"], "runs": [1]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    dataset = discover(study.dataset_url, study.tasks, ["01"], ["pre"])
    dataset.runs = [r for r in dataset.runs if r.key == RUN]
    ctx = PlanContext(study, dataset, Store(study.store_url))
    executor = make_executor("local", workers=2)
    try:
        reports = run_pipeline(ctx, executor, Console(quiet=True))
    finally:
        executor.close()
    assert not [r.error for rep in reports for r in rep.failed]
    return out, ctx.store


@pytest.mark.parametrize(("contrast", "min_psc"), [("P40vsP0", 1.0), ("anticipation", 0.75)])
def test_planted_effects_recovered_at_native_locations(full_run, contrast, min_psc):
    out, store = full_run
    maps = Manifest(store).get("glm_maps", RUN)
    truth = out / "bids" / "derivatives" / "truth"
    found = roi_recovery(
        store, maps.outputs["nifti"], truth, "sub-01", "ses-pre", contrast, min_psc
    )
    assert found, f"no planted ROI above {min_psc}% signal change"
    for roi, (distance_mm, z) in found.items():
        assert distance_mm <= 4.0 and z > 5.0, (roi, distance_mm, z, found)
