"""The simulated reference study: design rules, reproducibility, headers and ground truth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from processing.firstlevel.hrf import convolve_events
from processing.geometry import apply_affine, rigid_matrix, rms_displacement, volume_center_mm
from processing.simulate import effects, load_subject_transform, simulate_study
from processing.simulate.design import make_events, roles_for
from processing.simulate.effects import effect_maps, mni_blobs
from processing.simulate.phenotype import clinical_scores
from processing.simulate.planting import plant_amplitudes
from processing.simulate.specs import ROIS, ROLE_RUNS, stream

MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three small subjects (sub-02 always carries bad-motion runs), int16."""
    return simulate_study(tmp_path_factory.mktemp("a") / "bids", subjects=3, size="small", seed=0)


@pytest.fixture(scope="module")
def uint16_pair(tmp_path_factory):
    """The same one-subject uint16 study twice, and once with another seed."""
    base = tmp_path_factory.mktemp("repro")
    args = {"subjects": 1, "size": "small", "bold_dtype": "uint16"}
    return (
        simulate_study(base / "one", seed=7, **args),
        simulate_study(base / "two", seed=7, **args),
        simulate_study(base / "other", seed=8, **args),
    )


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """Two subjects at two sites, int16 with scaling."""
    out = tmp_path_factory.mktemp("sites") / "bids"
    return simulate_study(out, subjects=2, sites=2, size="small", seed=3, bold_dtype="int16-scaled")


def _truth(summary) -> dict:
    return json.loads((summary.truth_dir / "truth.json").read_text())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ---------------------------------------------------------------- design (no images needed)


def _check_design(events: pd.DataFrame, run_s: float) -> None:
    assert list(events.columns) == ["onset", "duration", "trial_type"]
    kinds = events["trial_type"].tolist()
    assert kinds[0::2] == ["anticipation"] * 6
    assert kinds[1::2] == ["P40", "P0", "P40", "P0", "P0", "P40"]
    onset, dur = events["onset"].to_numpy(), events["duration"].to_numpy()
    assert np.all(np.diff(onset) > 0) and onset[0] >= 0
    np.testing.assert_allclose(dur[1::2], 10.0)
    assert np.all((dur[0::2] >= 4.0) & (dur[0::2] <= 10.0))
    np.testing.assert_allclose(onset[1::2], onset[0::2] + dur[0::2], atol=1e-9)  # cue then cuff
    cuff_end = onset[1::2] + dur[1::2]
    rests = np.r_[onset[2::2], run_s] - cuff_end
    assert np.all(rests[:-1] >= 10.0 - 1e-9) and np.all(rests[:-1] <= 20.0 + 1e-9)
    assert rests[-1] >= 10.0 - 1e-9  # the last block is followed by rest inside the run


@pytest.mark.parametrize("run_s", [188 * 1.28, 120 * 2.0, 160.0])
def test_event_design_rules_hold_for_many_draws(run_s):
    """160 s forces the shrink-to-fit rule (the unshrunk design averages 196 s)."""
    seen = set()
    for k in range(100):
        events = make_events(stream(11, "events", k), run_s)
        _check_design(events, run_s)
        seen.add(tuple(events["onset"]))
    assert len(seen) == 100  # jittered per run


def test_event_design_rejects_too_short_runs():
    with pytest.raises(ValueError, match="shorter than the minimum design"):
        make_events(stream(0), 100.0)


def test_attrition_pattern_for_twenty_subjects():
    for seed in (0, 1, 2):
        roles = roles_for(20, seed)
        runs = [
            (role, ses, bad)
            for role in roles
            for ses, plan in ROLE_RUNS[role].items()
            for bad in plan.values()
        ]
        assert sum(status == "bad" for _, _, status in runs) == 7
        usable = {
            ses: [any(s == "good" for s in ROLE_RUNS[r][ses].values()) for r in roles]
            for ses in ("pre", "post")
        }
        assert sum(usable["pre"]) == 18
        assert sum(a and b for a, b in zip(usable["pre"], usable["post"], strict=True)) == 14
        assert roles.count("dropout") == 1
        assert sum(sum(s == "good" for s in ROLE_RUNS[r]["post"].values()) == 1 for r in roles) == 3
    assert roles_for(20, 0) != roles_for(20, 1)  # the pattern depends on the seed
    assert roles_for(40, 0)[20:].count("pre_both_bad") == 2  # each block of 20 repeats it


def test_planted_correlations_reach_targets_with_twenty_subjects():
    roles = roles_for(20, 0)
    dropout = np.array([r == "dropout" for r in roles])
    clinical = clinical_scores(stream(0, "clinical"), 20, dropout)
    assert np.nanmean(clinical["promis_pain_intensity_pre"]) == pytest.approx(4.15, abs=0.25)
    assert np.nanmean(clinical["rmq_total_post"]) == pytest.approx(7.28, abs=0.3)
    usable = np.array(
        [
            all(any(s == "good" for s in ROLE_RUNS[r][ses].values()) for ses in ("pre", "post"))
            for r in roles
        ]
    )
    planted = plant_amplitudes(0, clinical, usable)
    assert len(planted.correlations) == 3
    for corr in planted.correlations:
        sample = corr["analysis_sample"]
        assert sample["n"] == 14
        assert sample["pearson"] == pytest.approx(corr["target_r"], abs=0.01)
        assert sample["spearman"] == pytest.approx(corr["target_r"], abs=0.1)


# ---------------------------------------------------------------- the written dataset


def test_dataset_layout_and_metadata(study):
    root = study.root
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["DatasetType"] == "raw"
    truth_desc = json.loads((study.truth_dir / "dataset_description.json").read_text())
    assert truth_desc["DatasetType"] == "derivative"
    assert (root / "README").read_text().startswith("# Simulated")
    sidecar = json.loads((root / "task-cuff_bold.json").read_text())
    assert sidecar["TaskName"] == "cuff" and sidecar["RepetitionTime"] == 1.28
    assert sidecar["EchoTime"] == 0.033 and sidecar["FlipAngle"] == 65
    parts = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str)
    assert list(parts.columns) == ["participant_id", "age", "sex", "site", "group"]
    assert parts["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    assert json.loads((root / "participants.json").read_text())["sex"]["Levels"]
    promis = pd.read_csv(root / "phenotype" / "promis.tsv", sep="\t")
    assert set(promis["session_id"]) == {"ses-pre", "ses-post"}
    assert promis["promis_pain_intensity"].between(0, 10).all()
    maia = pd.read_csv(root / "phenotype" / "maia.tsv", sep="\t")
    assert {"maia_body_listening", "maia_total"} <= set(maia.columns)
    assert (root / "phenotype" / "practice.tsv").exists()
    for sub in study.subjects:
        assert (root / sub / "ses-pre" / "anat" / f"{sub}_ses-pre_T1w.nii.gz").exists()
        assert not (root / sub / "ses-post" / "anat").exists()
    bolds = sorted(p.name for p in root.glob("sub-*/ses-*/func/*_bold.nii.gz"))
    assert bolds == sorted(r.bold.name for r in study.runs) and len(bolds) == 12
    assert all(r.events.exists() for r in study.runs)


def test_written_events_follow_the_design(study):
    onsets = set()
    for run in study.runs:
        events = pd.read_csv(run.events, sep="\t")
        _check_design(events, run.n_volumes * run.tr)
        onsets.add(tuple(events["onset"]))
    assert len(onsets) == len(study.runs)


def test_bold_and_t1w_headers_and_intensities(study):
    run = study.runs[0]
    img = nib.load(run.bold)
    hdr = img.header
    assert img.shape == (40, 48, 36, 188)
    assert hdr.get_data_dtype() == np.int16
    np.testing.assert_allclose(hdr.get_zooms(), (4.0, 4.0, 4.0, 1.28), rtol=1e-6)
    assert hdr.get_xyzt_units() == ("mm", "sec")
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), img.get_qform(), atol=1e-4)
    assert img.dataobj.slope == 1.0 and img.dataobj.inter == 0.0
    data = np.asanyarray(img.dataobj)
    truth_anat = study.truth_dir / run.subject / "anat"
    mask = nib.load(truth_anat / f"{run.subject}_space-T1w_res-bold_desc-brain_mask.nii.gz")
    assert mask.shape == img.shape[:3]
    brain = np.asanyarray(mask.dataobj).astype(bool)
    far = ndimage.distance_transform_edt(~brain, sampling=4.0) > 25  # well outside the head
    mean_vol = data.mean(axis=3)
    assert 400 < mean_vol[brain].mean() < 2000
    assert np.median(mean_vol[far]) < 10  # only noise outside the head
    t1 = nib.load(
        study.root / run.subject / "ses-pre" / "anat" / f"{run.subject}_ses-pre_T1w.nii.gz"
    )
    assert t1.ndim == 3 and t1.header.get_xyzt_units()[0] == "mm"
    assert int(t1.header["sform_code"]) == 1


def test_motion_truth_and_exclusions(study):
    runs = pd.read_csv(study.truth_dir / "runs.tsv", sep="\t")
    assert len(runs) == len(study.runs)
    flagged = set()
    for run in study.runs:
        motion = pd.read_csv(run.motion, sep="\t")
        assert list(motion.columns) == MOTION_COLUMNS and len(motion) == run.n_volumes
        params = motion.to_numpy()
        assert np.all(params[run.n_volumes // 2] == 0.0)  # the reference volume
        img = nib.load(run.bold)
        center = volume_center_mm(img.affine, img.shape)
        mats = rigid_matrix(params, center)
        rel = rms_displacement(mats[:-1], mats[1:], center)
        if rel.max() > 2.0:
            flagged.add((run.subject, run.session, run.run))
        else:
            assert rel.max() <= 1.5  # kept runs stay clearly below the threshold
    listed = runs[runs["exclude"]]
    assert (
        set(zip(listed["participant_id"], listed["session_id"], listed["run"], strict=True))
        == flagged
    )
    assert flagged == {(r.subject, r.session, r.run) for r in study.excluded_runs}
    assert len(flagged) >= 1


def test_the_image_moves_as_the_truth_says(study):
    """The brain's centre of mass in a moved volume sits where M_t puts the reference one."""
    run = max(study.runs, key=lambda r: r.max_rel_rms_mm)
    img = nib.load(run.bold)
    params = pd.read_csv(run.motion, sep="\t").to_numpy()
    far = int(np.argmax(np.linalg.norm(params[:, :3], axis=1)))
    assert np.linalg.norm(params[far, :3]) > 1.5
    ref = run.n_volumes // 2

    def com(t):
        vol = np.asanyarray(img.dataobj[..., t]).astype(float)
        vol[vol < 300] = 0
        return apply_affine(img.affine, ndimage.center_of_mass(vol))

    mats = rigid_matrix(params, volume_center_mm(img.affine, img.shape))
    predicted = apply_affine(mats[far], com(ref))
    assert np.linalg.norm(com(far) - predicted) < 0.6
    assert np.linalg.norm(com(far) - com(ref)) > 1.0


def test_transforms_round_trip_roi_coordinates(study):
    truth = _truth(study)
    for sub in study.subjects:
        tf = load_subject_transform(study.truth_dir, sub)
        native = truth["subjects"][sub]["roi_native_mm"]
        for roi in ROIS:
            back = tf.to_mni(np.array(native[roi.name]))
            assert np.linalg.norm(back - np.array(roi.mni_mm)) < 0.5
            there = tf.to_native(np.array(roi.mni_mm))
            assert np.linalg.norm(there - np.array(native[roi.name])) < 0.5
            assert np.linalg.norm(there - np.array(roi.mni_mm)) > 0.1  # native is not MNI


def test_planted_effect_maps_peak_at_the_rois(study):
    truth = _truth(study)
    sub = study.subjects[0]
    amps = truth["subjects"][sub]["amplitudes_psc"]
    func = study.truth_dir / sub / "ses-pre" / "func"
    native = nib.load(next(func.glob("*space-T1w_res-bold_contrast-P40_stat-psc_statmap.nii.gz")))
    mni = nib.load(
        next(func.glob("*space-MNI152NLin2009aSym_contrast-P40_stat-psc_statmap.nii.gz"))
    )
    assert int(mni.header["sform_code"]) == 4
    for img, centres in (
        (native, truth["subjects"][sub]["roi_native_mm"]),
        (mni, {r.name: r.mni_mm for r in ROIS}),
    ):
        data = np.asanyarray(img.dataobj)
        world = apply_affine(img.affine, np.moveaxis(np.indices(data.shape), 0, -1))
        for roi in ("rAI", "rTPJ"):
            near = np.linalg.norm(world - np.array(centres[roi]), axis=-1) < 10
            peak = np.unravel_index(np.argmax(np.where(near, data, -np.inf)), data.shape)
            assert np.linalg.norm(world[peak] - centres[roi]) <= 0.5 * np.sqrt(3) * 4.0 + 0.5
            assert 0.3 * amps["pre"][roi]["P40"] < data[peak] <= amps["pre"][roi]["P40"] + 1e-4


def _half_max_radius_mm(profile: np.ndarray, step_mm: float) -> float:
    """Distance from the centre sample to where a symmetric profile falls to half its peak."""
    centre = profile.size // 2
    half = profile[centre:] / profile[centre]
    k = int(np.argmax(half < 0.5))
    return step_mm * (k - 1 + (half[k - 1] - 0.5) / (half[k - 1] - half[k]))


def test_planted_change_has_its_own_extent_and_the_session_amplitude_at_the_centre(monkeypatch):
    """The pre response is drawn with the ROI's blob (8 mm FWHM) and the post - pre change with
    the change blob (here 15 mm; the default ROIs use their response's 8 mm); at the centre the
    post map equals the planted post amplitude."""
    roi = replace(next(r for r in ROIS if r.name == "rTPJ"), change_fwhm_mm=15.0)
    monkeypatch.setattr(effects, "ROIS", tuple(roi if r.name == "rTPJ" else r for r in ROIS))
    step = 0.5
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = np.asarray(roi.mni_mm) - 30.0
    shape = (121, 121, 121)  # the centre is voxel 60
    amps = {"pre": {"rTPJ": {"P40": 2.0}}, "post": {"rTPJ": {"P40": 0.8}}}
    blobs = mni_blobs(affine, shape)
    pre = effect_maps(blobs, amps, shape, "pre")["P40"]
    post = effect_maps(blobs, amps, shape, "post")["P40"]
    assert pre[60, 60, 60] == pytest.approx(2.0) and post[60, 60, 60] == pytest.approx(0.8)
    assert _half_max_radius_mm(pre[60, 60], step) == pytest.approx(roi.fwhm_mm / 2, abs=0.05)
    change = post[60, :, 60] - pre[60, :, 60]
    assert roi.change_extent_mm == 15.0
    assert _half_max_radius_mm(-change, step) == pytest.approx(7.5, abs=0.05)
    assert not effect_maps(blobs, amps, shape, "pre")["P0"].any()
    with pytest.raises(ValueError, match="no planted amplitudes for session 'mid'"):
        effect_maps(blobs, amps, shape, "mid")


def test_planted_activation_is_in_the_bold_data(study):
    """An OLS fit of the mean signal around the rAI peak of a kept run recovers the planted P40
    response (% signal change times the blob's mean height there)."""
    run = next(r for r in study.runs if not r.excluded and r.session == "ses-pre")
    amps = _truth(study)["subjects"][run.subject]["amplitudes_psc"]["pre"]["rAI"]
    func = study.truth_dir / run.subject / "ses-pre" / "func"
    p0 = nib.load(next(func.glob("*space-T1w_res-bold_contrast-P0_stat-psc_statmap.nii.gz")))
    blob = np.asanyarray(p0.dataobj) / amps["P0"]  # only rAI responds to P0
    near = blob > 0.5
    img = nib.load(run.bold)
    series = np.asanyarray(img.dataobj)[near].astype(float).mean(axis=0)
    events = pd.read_csv(run.events, sep="\t")
    regs = []
    for kind in ("anticipation", "P40", "P0"):
        sel = events[events["trial_type"] == kind]
        regs.append(convolve_events(sel["onset"], sel["duration"], 1.0, run.n_volumes, run.tr))
    t = np.linspace(-1, 1, run.n_volumes)
    design = np.column_stack([np.ones_like(t), t, t**2, *regs])
    beta, *_ = np.linalg.lstsq(design, series, rcond=None)
    expected = amps["P40"] * blob[near].mean()
    assert 100 * beta[4] / beta[0] == pytest.approx(expected, rel=0.5)


def test_truth_json_is_self_consistent(study):
    truth = _truth(study)
    assert truth["template"]["space"] == "MNI152NLin2009aSym"
    assert [r["name"] for r in truth["rois"]] == ["rAI", "rTPJ", "dlPFC", "vPCC"]
    assert [r["change_fwhm_mm"] for r in truth["rois"]] == [None, 8.0, 8.0, 8.0]
    assert truth["motion"]["excluded_runs"] == len(study.excluded_runs)
    for sub in study.subjects:
        entry = truth["subjects"][sub]
        for roi in ("rTPJ", "dlPFC", "vPCC"):
            cond = next(r.change_on for r in ROIS if r.name == roi)
            change = (
                entry["amplitudes_psc"]["post"][roi][cond]
                - entry["amplitudes_psc"]["pre"][roi][cond]
            )
            assert change == pytest.approx(entry["roi_change_psc"][roi], abs=1e-5)
    subjects = pd.read_csv(study.truth_dir / "subjects.tsv", sep="\t")
    assert subjects["role"].tolist() == list(study.roles)


def test_truth_json_correlations_match_targets_and_files(study):
    """With 3 subjects the planted correlation is exact over all of them (n < 4 fallback)."""
    truth = _truth(study)
    tables = {"promis_pain_intensity": "promis", "scs_total": "scs", "maia_body_listening": "maia"}
    assert [c["roi"] for c in truth["correlations"]] == ["rTPJ", "dlPFC", "vPCC"]
    for corr in truth["correlations"]:
        table = pd.read_csv(study.root / "phenotype" / f"{tables[corr['measure']]}.tsv", sep="\t")
        wide = table.pivot(index="participant_id", columns="session_id", values=corr["measure"])
        clinical = (wide["ses-post"] - wide["ses-pre"]).loc[list(study.subjects)].to_numpy()
        change = [truth["subjects"][s]["roi_change_psc"][corr["roi"]] for s in study.subjects]
        realised = corr["analysis_sample"]
        assert realised["n"] == 3
        assert realised["pearson"] == pytest.approx(corr["target_r"], abs=0.01)
        assert realised["pearson"] == pytest.approx(np.corrcoef(change, clinical)[0, 1], abs=1e-4)


def test_same_seed_same_bytes_other_seed_other_data(uint16_pair):
    one, two, other = uint16_pair
    first, second = _files(one.root), _files(two.root)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    third = _files(other.root)
    bold = "sub-01/ses-pre/func/sub-01_ses-pre_task-cuff_run-1_bold.nii.gz"
    events = "sub-01/ses-pre/func/sub-01_ses-pre_task-cuff_run-1_events.tsv"
    assert first[bold] != third[bold] and first[events] != third[events]
    assert nib.load(one.root / bold).get_data_dtype() == np.uint16


def test_float32_and_scaled_int16(tmp_path, two_sites):
    floats = simulate_study(tmp_path / "f", subjects=1, size="small", seed=2, bold_dtype="float32")
    img = nib.load(floats.runs[0].bold)
    assert img.get_data_dtype() == np.float32
    assert not np.allclose(np.asanyarray(img.dataobj[..., 0]) % 1, 0)  # not rounded
    scaled = nib.load(two_sites.runs[0].bold)
    assert scaled.get_data_dtype() == np.int16
    assert scaled.dataobj.slope not in (0.0, 1.0) and scaled.dataobj.inter != 0.0
    raw = np.asanyarray(scaled.dataobj.get_unscaled())
    assert raw.max() > 20000  # the int16 range is used
    values = scaled.get_fdata(dtype=np.float32)
    assert values.min() >= -scaled.dataobj.slope and 300 < values.mean() < 2000


def test_sites_differ_in_tr_and_grid(two_sites):
    parts = pd.read_csv(two_sites.root / "participants.tsv", sep="\t", dtype=str)
    assert parts["site"].tolist() == ["1", "2"]
    root_tr = json.loads((two_sites.root / "task-cuff_bold.json").read_text())["RepetitionTime"]
    by_site = {r.site: r for r in two_sites.runs}
    one, two = nib.load(by_site["1"].bold), nib.load(by_site["2"].bold)
    assert root_tr == 1.28 and one.header.get_zooms()[3] == pytest.approx(1.28)
    assert two.header.get_zooms() == pytest.approx((5.0, 5.0, 5.0, 2.0))
    assert one.shape[3] == 188 and two.shape[3] == 120 and one.shape[:3] != two.shape[:3]
    sidecar = by_site["2"].bold.with_name(by_site["2"].bold.name.replace(".nii.gz", ".json"))
    assert json.loads(sidecar.read_text())["RepetitionTime"] == 2.0
    assert not by_site["1"].bold.with_name(sidecar.name.replace("sub-02", "sub-01")).exists()
    runs = pd.read_csv(two_sites.truth_dir / "runs.tsv", sep="\t")
    assert sorted(set(runs["repetition_time"])) == [1.28, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subjects": 0}, "subjects"),
        ({"sites": 3, "subjects": 2}, "sites"),
        ({"size": "huge"}, "size"),
        ({"bold_dtype": "int8"}, "bold_dtype"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_study(tmp_path, **kwargs)
