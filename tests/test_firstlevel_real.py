"""The real studyforrest localizer run through every first-level stage (FILM): all categories
> baseline peaks in occipital cortex, faces > scrambled images in ventral occipito-temporal
cortex. The z-map figures are copied to the test's tmp dir (``figures/``) for a human look."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPO, STUDYFORREST, requires_shared
from rich.console import Console

from infra.arrays import array_attrs, read_array
from infra.bids import discover
from infra.clusters import make_executor
from infra.derivatives import read_nifti
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.storage import Store
from infra.study import load_study
from processing.firstlevel.figures import peak_voxel

pytestmark = [requires_shared(), pytest.mark.shared]
RUN = "sub-01_task-oneback_run-1"


@pytest.fixture(scope="module")
def localizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("localizer")
    doc = yaml.safe_load((REPO / "docs/examples/studyforrest-localizer.yaml").read_text())
    doc["dataset"], doc["store"] = str(STUDYFORREST), str(out / "store")
    (out / "study.yaml").write_text(yaml.safe_dump(doc))
    study = load_study(str(out / "study.yaml"))
    assert study.issues == []
    ctx = PlanContext(study, discover(study.dataset_url, study.tasks), Store(study.store_url))
    executor = make_executor("local", workers=2)
    try:
        reports = run_pipeline(ctx, executor, Console(quiet=True))
    finally:
        executor.close()
    failed = [r.error for rep in reports for r in rep.failed]
    assert not failed, failed
    maps = {r.unit: r for r in Manifest(ctx.store).records("glm_maps")}[RUN]
    figures = out / "figures"
    figures.mkdir()
    for key in maps.outputs["figures"].values():
        (figures / key.rsplit("/", 1)[-1]).write_bytes(ctx.store.read_bytes(key))
    return ctx.store, maps, figures


def _peak_mm(store, maps, contrast):
    z, affine = read_nifti(store, maps.outputs["nifti"][f"{contrast}:z"])
    mask, _ = read_nifti(store, maps.outputs["nifti"]["sigmasquared"])
    inside = mask > 0
    zyx = np.array(peak_voxel(z, inside))
    peak = (affine @ np.r_[zyx[::-1], 1.0])[:3]
    ijk = np.argwhere(inside)[:, ::-1]
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return peak, world, float(z[tuple(zyx)])


def test_all_categories_peak_in_occipital_cortex(localizer):
    store, maps, _ = localizer
    peak, world, z = _peak_mm(store, maps, "allVsBaseline")
    y_back, y_front = world[:, 1].min(), world[:, 1].max()
    assert z > 8
    assert (peak[1] - y_back) / (y_front - y_back) < 0.3, (peak, y_back, y_front)


def test_faces_over_scrambled_peak_in_ventral_occipitotemporal_cortex(localizer):
    store, maps, _ = localizer
    peak, world, z = _peak_mm(store, maps, "faceVsScramble")
    y_back, y_front = world[:, 1].min(), world[:, 1].max()
    z_low, z_high = world[:, 2].min(), world[:, 2].max()
    assert z > 5
    assert (peak[1] - y_back) / (y_front - y_back) < 0.6, (peak, y_back, y_front)
    assert (peak[2] - z_low) / (z_high - z_low) < 0.5, (peak, z_low, z_high)
    assert abs(peak[0]) > 20  # lateral (fusiform / inferior temporal), not the midline


def test_outputs_are_named_and_described(localizer):
    store, maps, figures = localizer
    key = maps.outputs["nifti"]["faceVsScramble:effect"]
    assert key.endswith(f"{RUN}_contrast-faceVsScramble_stat-effect_statmap.nii.gz")
    side = store.read_json(key.replace(".nii.gz", ".json"))
    assert side["Contrast"]["Weights"] == [[1.0, -1.0]]
    assert side["NoiseModel"] == "film" and side["DegreesOfFreedom"] == 156 - 18
    assert "anyCategory:F" in maps.outputs["nifti"]
    assert sorted(p.name for p in figures.glob("*.png")) == sorted(
        f"{RUN}_contrast-{c}_stat-z_statmap.png"
        for c in ("allVsBaseline", "faceVsScramble", "houseVsScramble", "anyCategory")
    )


def test_epi_only_normalisation_puts_the_visual_peak_in_mni_occipital_cortex(localizer):
    """No T1w in this dataset: the mean EPI is registered straight to MNI152NLin2009aSym (affine
    + SyN), flagged in the record; the all-categories > baseline peak (effect / sqrt(variance))
    lands in occipital cortex (y < -70 mm). The QC overlay is saved beside the z-map figures."""
    store, _, figures = localizer
    record = Manifest(store).get("normalise", "sub-01")
    assert record.state == "done", record.error
    assert record.outputs["source"] == "bold" and "no T1w" in record.outputs["fallback"]
    assert any("straight to the template" in w for w in record.warnings)
    session = record.outputs["sessions"]["sub-01_task-oneback"]
    effect = read_array(store, session["maps"]["allVsBaseline:effect"])
    variance = read_array(store, session["maps"]["allVsBaseline:variance"])
    mask = read_array(store, session["mask"]) > 0
    affine = np.asarray(array_attrs(store, session["mask"])["affine"])
    z_like = np.where(mask & (variance > 0), effect / np.sqrt(np.maximum(variance, 1e-12)), 0)
    zyx = np.unravel_index(np.argmax(z_like), z_like.shape)
    peak = affine @ np.r_[np.array(zyx)[::-1], 1.0]
    assert z_like[zyx] > 8 and peak[1] < -70, (peak, z_like[zyx])
    for key in record.outputs["figures"].values():
        (figures / key.rsplit("/", 1)[-1]).write_bytes(store.read_bytes(key))
    assert list(figures.glob("*_reg.png"))
