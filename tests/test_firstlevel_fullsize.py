"""Full size (2 mm, 98 x 98 x 75 x 188): both runs of one simulated session through every stage
with FILM and run-level fixed effects; the planted P40 - P0 and anticipation effects are
recovered at their native locations: the session's effect (COPE) map peaks within 4 mm of the
planted peak with z > 5 there, and the z map's own peak (which also follows the noise variance)
within 6 mm; each single run finds them too (effect peak within 6 mm, z > 5). A few minutes on
2 cores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from firstlevel_truth import local_peak, roi_recovery
from rich.console import Console

from infra.arrays import array_attrs, read_array
from infra.bids import discover
from infra.clusters import make_executor
from infra.demo import write_demo_study
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.storage import Store
from infra.study import load_study
from processing.simulate import simulate_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the fixture runs ~10 min
SESSION = "sub-01_ses-pre_task-cuff"
CASES = [("P40vsP0", 1.0), ("anticipation", 0.75)]


@pytest.fixture(scope="module")
def full_session(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    simulate_study(out / "bids", subjects=1, seed=0, size="full")
    path = write_demo_study(out)
    doc = yaml.safe_load(path.read_text())
    doc["select"] = {"subjects": ["01"], "sessions": ["pre"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    dataset = discover(study.dataset_url, study.tasks, ["01"], ["pre"])
    ctx = PlanContext(study, dataset, Store(study.store_url))
    executor = make_executor("local", workers=2)
    try:
        reports = run_pipeline(ctx, executor, Console(quiet=True))
    finally:
        executor.close()
    assert not [r.error for rep in reports for r in rep.failed]
    return out / "bids" / "derivatives" / "truth", Manifest(ctx.store), ctx.store


@pytest.mark.parametrize(("contrast", "min_psc"), CASES)
def test_session_recovers_planted_effects_at_native_locations(full_session, contrast, min_psc):
    truth, manifest, store = full_session
    session = manifest.get("fixed_effects", SESSION)
    assert session.outputs["runs"][contrast] == [f"{SESSION}_run-1", f"{SESSION}_run-2"]
    found = roi_recovery(
        store, session.outputs["nifti"], truth, "sub-01", "ses-pre", contrast, min_psc
    )
    assert found, f"no planted ROI above {min_psc}% signal change"
    for roi, where in found.items():
        assert where["effect_mm"] <= 4.0 and where["z_at_effect"] > 5.0, (roi, found)
        assert where["z_peak_mm"] <= 6.0 and where["z_peak"] > 5.0, (roi, found)


@pytest.mark.parametrize("run", ["run-1", "run-2"])
@pytest.mark.parametrize(("contrast", "min_psc"), CASES)
def test_each_run_finds_the_planted_effects(full_session, run, contrast, min_psc):
    truth, manifest, store = full_session
    maps = manifest.get("glm_maps", f"{SESSION}_{run}")
    found = roi_recovery(
        store, maps.outputs["nifti"], truth, "sub-01", "ses-pre", contrast, min_psc
    )
    assert found
    for roi, where in found.items():  # one run: the peak may move a voxel or two
        assert where["effect_mm"] <= 6.0 and where["z_peak"] > 4.0, (roi, found)


@pytest.mark.parametrize(("contrast", "min_psc"), CASES)
def test_planted_mni_effects_found_in_the_normalised_maps(full_session, contrast, min_psc):
    """After first level + fixed effects + normalisation (T1w -> MNI, EPI -> T1w): the MNI
    effect map peaks within 4 mm of each planted MNI coordinate, with effect / sqrt(variance)
    above 5 there; the warped brain mask covers the template brain."""
    truth, manifest, store = full_session
    record = manifest.get("normalise", "sub-01")
    assert record.state == "done" and not record.outputs["failed"], record.reason
    assert record.outputs["source"] == "T1w" and record.outputs["qc"]["Dice"] >= 0.95
    maps = record.outputs["sessions"][SESSION]
    effect = read_array(store, maps["maps"][f"{contrast}:effect"])
    variance = read_array(store, maps["maps"][f"{contrast}:variance"])
    affine = np.asarray(array_attrs(store, maps["maps"][f"{contrast}:effect"])["affine"])
    rois = json.loads((truth / "truth.json").read_text())["rois"]
    session = manifest.get("fixed_effects", SESSION).outputs["nifti"]
    planted = roi_recovery(store, session, truth, "sub-01", "ses-pre", contrast, min_psc)
    assert planted
    for roi in (r for r in rois if r["name"] in planted):
        peak_mm, _ = local_peak(effect, affine, roi["mni_mm"], 12.0)
        distance = float(np.linalg.norm(peak_mm - np.asarray(roi["mni_mm"])))
        ijk = np.rint(np.linalg.solve(affine, [*peak_mm, 1.0])[:3]).astype(int)[::-1]
        z_like = effect[tuple(ijk)] / np.sqrt(variance[tuple(ijk)])
        assert distance <= 4.0 and z_like > 5.0, (roi["name"], distance, z_like)
