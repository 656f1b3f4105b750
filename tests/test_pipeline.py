"""End to end on a simulated study: ingest -> motion -> preprocess -> filter on a local Dask
cluster; recovered motion and exclusions match the simulator's truth; a rerun does nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from infra.arrays import read_array, read_tsv
from infra.bids import discover
from infra.clusters import make_executor
from infra.demo import write_demo_study
from infra.manifest import Manifest
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.storage import Store
from infra.study import load_study
from processing.simulate import simulate_study

QUIET = Console(quiet=True)
MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    simulate_study(out / "bids", subjects=2, seed=0, size="small")
    t1w = out / "bids/sub-02/ses-pre/anat/sub-02_ses-pre_T1w.nii.gz"  # corrupt: EPI -> MNI fallback
    t1w.write_bytes(t1w.read_bytes()[:5000])
    study = load_study(str(write_demo_study(out)))
    assert study.issues == []
    ctx = PlanContext(study, discover(study.dataset_url, study.tasks), Store(study.store_url))
    executor = make_executor("local", workers=2)
    try:
        reports = run_pipeline(ctx, executor, QUIET)
        again = run_pipeline(PlanContext(study, ctx.dataset, ctx.store), executor, QUIET)
    finally:
        executor.close()
    return out, ctx.store, reports, again


def test_every_stage_ran_without_failures(finished):
    _, _, reports, _ = finished
    assert [r.stage for r in reports] == [
        "ingest",
        "motion_reference",
        "motion_estimate",
        "motion",
        "preprocess",
        "filter",
        "design",
        "glm_autocorr",
        "glm_autocorr_smooth",
        "glm",
        "glm_maps",
        "fixed_effects",
        "normalise",
        "group_stack",
        "group_fit",
        "group_permutation",
        "group_inference",
        "group_roi",
        "group_report",
    ]
    assert all(not r.failed for r in reports), [r.error for rep in reports for r in rep.failed]
    assert len(reports[0].done) == 8


def test_rerun_is_a_noop(finished):
    _, _, _, again = finished
    assert all(r.ran == [] for r in again)


def test_exclusions_match_the_planted_truth(finished):
    out, store, _, _ = finished
    truth = pd.read_csv(out / "bids" / "derivatives" / "truth" / "runs.tsv", sep="\t")
    expected = {
        f"{r.participant_id}_{r.session_id}_task-cuff_run-{r.run}"
        for r in truth.itertuples()
        if str(r.exclude).lower() == "true"
    }
    records = Manifest(store).records("motion")
    found = {r.unit for r in records if r.outputs["excluded"]}
    assert found == expected and expected, (found, expected)
    filtered = {r.unit: r.state for r in Manifest(store).records("filter")}
    assert all(filtered[u] == "excluded" for u in expected)


def test_recovered_motion_matches_truth(finished):
    out, store, _, _ = finished
    errors = []
    for rec in Manifest(store).records("motion"):
        if rec.outputs["excluded"]:
            continue
        sub, ses = rec.unit.split("_")[:2]
        truth_file = next(
            (out / "bids" / "derivatives" / "truth").rglob(
                f"{rec.unit}_desc-truemotion_timeseries.tsv"
            )
        )
        truth = pd.read_csv(truth_file, sep="\t")[MOTION].to_numpy()
        est = read_tsv(store, rec.outputs["confounds"])[MOTION].to_numpy()
        errors.append(est - truth)
        assert (sub, ses) == (f"sub-{rec.subject}", f"ses-{rec.session}")
    err = np.concatenate(errors)
    trans_rms = np.sqrt(np.mean(err[:, :3] ** 2))
    rot_rms_deg = np.degrees(np.sqrt(np.mean(err[:, 3:] ** 2)))
    assert trans_rms < 0.1 and rot_rms_deg < 0.1, (trans_rms, rot_rms_deg)


def test_filtered_runs_are_scaled_highpassed_and_spatially_chunked(finished):
    _, store, _, _ = finished
    import zarr

    rec = next(r for r in Manifest(store).records("filter") if r.state == "done")
    array = zarr.open_array(store=store.zarr_store(rec.outputs["bold"]), mode="r")
    assert array.chunks[0] == array.shape[0]  # whole time series per chunk
    data = np.asarray(array[:])
    mask = data.std(axis=0) > 0
    assert abs(np.median(data[:, mask]) - 10000) < 300  # grand-mean scaled (median of 4-D)
    chunks = sorted(
        (r for r in Manifest(store).records("preprocess") if r.unit.startswith(rec.unit)),
        key=lambda r: r.unit,
    )
    before = np.concatenate(
        [
            np.asarray(zarr.open_array(store=store.zarr_store(c.outputs["bold"]), mode="r")[:])
            for c in chunks
        ]
    )
    before *= rec.outputs["scale_factor"]

    def drift(x):  # amplitude of the in-mask mean series at periods of 240 and 120 s
        series = x[:, mask].mean(axis=1)
        return np.abs(np.fft.rfft(series - series.mean())[1:3]).sum()

    assert drift(data) < 0.5 * drift(before), (drift(data), drift(before))
    assert rec.outputs["tsnr_median"] > 20
    assert store.exists(rec.outputs["mask"]) and store.exists(rec.outputs["overlay"])


def test_motion_outputs_transforms_and_absolute_rms(finished):
    from processing.geometry import rigid_params, volume_center_mm

    _, store, _, _ = finished
    rec = next(r for r in Manifest(store).records("motion") if not r.outputs["excluded"])
    table = read_tsv(store, rec.outputs["confounds"])
    assert {"framewise_displacement", "rmsd", "rmsd_abs"} <= set(table.columns)
    assert table["rmsd"].iloc[0] == 0 and (table["rmsd_abs"] >= 0).all()
    matrices = read_tsv(store, rec.outputs["transforms"]).to_numpy().reshape(-1, 4, 4)
    from infra.arrays import run_attrs

    raw = Manifest(store).get("ingest", rec.unit).outputs
    affine = np.asarray(run_attrs(store, raw["zarr"])["affine"])
    center = volume_center_mm(affine, tuple(reversed(raw["shape"][1:])))
    np.testing.assert_allclose(rigid_params(matrices, center), table[MOTION].to_numpy(), atol=1e-6)


def test_first_level_recovers_planted_effects(finished):
    """Small grid (4 mm voxels): each session's fixed-effects effect map peaks within 1.5 voxels
    of the planted P40 - P0 effects (>= 1% signal change) with z > 3 there (full size:
    tests/test_firstlevel_fullsize.py)."""
    from firstlevel_truth import roi_recovery

    out, store, _, _ = finished
    sessions = [r for r in Manifest(store).records("fixed_effects") if r.state == "done"]
    assert sessions
    found = {}
    for rec in sessions:
        sub, ses = rec.unit.split("_")[:2]
        truth = out / "bids" / "derivatives" / "truth"
        found[rec.unit] = roi_recovery(store, rec.outputs["nifti"], truth, sub, ses, "P40vsP0")
        assert found[rec.unit]
    hits = [(r["effect_mm"], r["z_at_effect"]) for rois in found.values() for r in rois.values()]
    assert sum(d <= 6.0 and z > 3.0 for d, z in hits) >= 0.75 * len(hits), found


def test_sessions_combine_usable_runs_or_say_why_not(finished):
    out, store, _, _ = finished
    records = {r.unit: r for r in Manifest(store).records("fixed_effects")}
    truth = pd.read_csv(out / "bids" / "derivatives" / "truth" / "runs.tsv", sep="\t")
    for (sub, ses), runs in truth.groupby(["participant_id", "session_id"]):
        rec = records[f"{sub}_{ses}_task-cuff"]
        usable = runs[runs["exclude"].astype(str).str.lower() != "true"]
        if usable.empty:
            assert rec.state == "excluded" and "no usable run" in rec.reason
            continue
        assert rec.state == "done"
        assert len(rec.outputs["runs"]["P40vsP0"]) == len(usable)
        dof = rec.outputs["dof"]["P40vsP0"]
        run_dof = 188 - 12  # 3 conditions + derivatives + 6 motion columns
        assert dof == (run_dof if len(usable) == 1 else min(len(usable) * run_dof, 1000) - 1)
        assert (len(usable) == 1) == ("P40vsP0" in rec.outputs["passed_through"])
        side = store.read_json(rec.outputs["nifti"]["P40vsP0:z"].replace(".nii.gz", ".json"))
        assert side["Method"] == "fixed_effects" and side["DegreesOfFreedom"] == dof
        # The simulator's runs are aligned: between-run registration is skipped (maps unchanged).
        alignment = rec.outputs["alignment"]
        assert len(alignment) == len(usable) - 1
        assert all(not a["registered"] and a["offset_mm"] < 0.25 for a in alignment.values())


def test_block_stages_equal_the_in_memory_reference(finished):
    """The engine's FILM in blocks (glm_autocorr -> glm_autocorr_smooth -> glm -> glm_maps)
    gives the maps of processing.firstlevel.volume.fit_run on the whole run at once."""
    from infra.arrays import array_attrs
    from infra.stages.firstlevel import run_model
    from processing.firstlevel.volume import fit_run
    from processing.preprocess.highpass import highpass_sigma_volumes

    out, store, _, _ = finished
    manifest = Manifest(store)
    maps = next(r for r in manifest.records("glm_maps") if r.state == "done")
    design = manifest.get("design", maps.unit)
    bold_key = manifest.get("filter", maps.unit).outputs["bold"]
    mask = read_array(store, manifest.get("motion_reference", maps.unit).outputs["mask"]) > 0
    study = load_study(str(out / "study.yaml"))
    ctx = PlanContext(study, None, store)
    model, _ = run_model(ctx)
    cutoff = ctx.param("preprocessing.highpass_cutoff_s")
    assert model.noise_model == "film"
    reference = fit_run(
        read_array(store, bold_key),
        mask,
        np.asarray(array_attrs(store, bold_key)["affine"]),
        read_tsv(store, design.outputs["design"]).to_numpy(),
        design.outputs["columns"],
        model.contrasts,
        model.noise_model,
        dropped=design.outputs["dropped"],
        highpass_sigma=highpass_sigma_volumes(design.outputs["tr_s"], cutoff),
    )
    assert reference.dof == maps.outputs["dof"]
    for name in ("sigmasquared", "P40vsP0:effect", "P40vsP0:variance", "P40vsP0:z"):
        ours = read_array(store, maps.outputs["maps"][name])
        np.testing.assert_allclose(ours[mask], reference.get(name)[mask], rtol=1e-4, atol=1e-5)


def test_normalise_warps_session_maps_and_falls_back_without_a_usable_t1w(finished):
    """sub-01: T1w -> MNI (affine + SyN) and EPI -> T1w; sub-02's T1w is truncated, so its mean
    EPI goes straight to MNI with a warning. Both give MNI 2 mm maps; variance stays >= 0."""
    _, store, _, _ = finished
    records = {r.unit: r for r in Manifest(store).records("normalise")}
    assert set(records) == {"sub-01", "sub-02"}
    good, fallback = records["sub-01"], records["sub-02"]
    assert good.state == "done" and good.outputs["source"] == "T1w", good.reason
    assert not good.outputs["failed"] and good.outputs["qc"]["Dice"] >= 0.9
    assert fallback.state == "done" and fallback.outputs["source"] == "bold"
    assert "unreadable" in fallback.outputs["fallback"]
    assert any("straight to the template" in w for w in fallback.warnings)
    for rec in records.values():
        assert rec.outputs["space"] == "MNI152NLin2009aSym"
        for session in rec.outputs["sessions"].values():
            variance = read_array(store, session["maps"]["P40vsP0:variance"])
            assert variance.shape == (95, 117, 99) and variance.min() >= 0
            assert session["nifti"]["P40vsP0:effect"].endswith(
                "_space-MNI152NLin2009aSym_res-2_contrast-P40vsP0_stat-effect_statmap.nii.gz"
            )
    transforms = good.outputs["transforms"]
    assert transforms["warp"].endswith(
        "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_desc-warp_xfm.nii.gz"
    )


def test_mni_variance_maps_stay_calibrated_to_the_resampled_effects(finished):
    """effect / sqrt(variance) spreads as much over the MNI brain as over the native brain: the
    normalised variance is the variance of the resampled effect (the noise's lag-1 correlation
    from the run residuals), not the interpolated variance, which made the MNI spread ~0.68x."""
    _, store, _, _ = finished
    manifest = Manifest(store)
    ratios = []
    for rec in manifest.records("normalise"):
        for session, warped in rec.outputs["sessions"].items():
            native = manifest.get("fixed_effects", session).outputs
            lag1 = native["noise_lag1"]
            assert warped["noise_lag1"] == lag1 and all(0.1 < v < 0.95 for v in lag1), lag1

            def spread(maps, mask_key):
                mask = read_array(store, mask_key) > 0
                effect = read_array(store, maps["P0:effect"])[mask]
                variance = read_array(store, maps["P0:variance"])[mask]
                keep = variance > 0
                return float(np.std(effect[keep] / np.sqrt(variance[keep])))

            ratios.append(
                spread(warped["maps"], warped["mask"]) / spread(native["maps"], native["mask"])
            )
    assert ratios and all(0.88 < r < 1.12 for r in ratios), ratios
