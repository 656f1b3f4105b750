"""Group stages on a simulated 10-subject study (small grid): which subjects enter, FLAME1
blocks, sign-flip permutation clusters at the planted effects, ROI/clinical tables and the HTML
report; permutation results are independent of the batch split.

The upstream records (``fixed_effects``, ``design``, ``normalise``) are written by the fixture
from the simulator's planted MNI truth plus smooth noise, with the simulator's run exclusions and
one subject failing registration QC: the group stages then see the manifest as after a real run,
in ~1.5 minutes instead of ~35 (normalisation alone is ~6 min per subject on 2 cores). A real
8-subject run (``boldcloud simulate`` + every stage) was checked by hand; see docs/design.md.
"""

from __future__ import annotations

import zlib

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from scipy import ndimage, stats

from infra.arrays import read_array, read_tsv, write_array, write_tsv
from infra.bids import discover
from infra.clusters import make_executor
from infra.dashboard.pages import results
from infra.demo import write_demo_study
from infra.manifest import Manifest, TaskRecord
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.stages.group import plan_group_stack
from infra.stages.group_model import group_analyses
from infra.storage import Store
from infra.study import load_study
from processing.group.flame import flame1
from processing.normalise.template import load_template
from processing.simulate import simulate_study
from processing.simulate.specs import ROIS

QUIET = Console(quiet=True)
GROUP_STAGES = ["group_stack", "group_fit", "group_permutation", "group_inference", "group_roi"]
PRE = "ses-pre_task-cuff_contrast-P40vsP0"
PAIRED = "ses-postMinusPre_task-cuff_contrast-P40vsP0"
N_SUBJECTS = 10
FAILED_QC = "07"  # its registration is marked as failing QC
CONTRASTS = {"P40": {"P40": 1.0}, "P0": {"P0": 1.0}, "P40vsP0": {"P40": 1.0, "P0": -1.0},
             "anticipation": {"anticipation": 1.0}}  # fmt: skip


def _study(out, **inference):
    path = write_demo_study(out)
    doc = yaml.safe_load(path.read_text())
    doc["boldcloud"]["group_level"]["contrasts"] = ["P40vsP0", "anticipation"]
    doc["boldcloud"]["inference"].update({"n_permutations": 100, "batch_size": 40, **inference})
    doc["boldcloud"]["roi"]["coordinates"] = [
        {"name": "rTPJ", "mni_mm": [56, -44, 30], "contrast": "P40"}
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    assert study.issues == [], study.issues
    return study


def _fake_upstream(bids, store: Store, dataset) -> None:
    """Records and MNI maps as ``fixed_effects``/``design``/``normalise`` would leave them, built
    from the simulator's planted MNI truth (percent signal change) plus smooth noise: the group
    stages see the manifest exactly as after a real run, in seconds instead of ~15 minutes."""
    truth = bids / "derivatives" / "truth"
    runs = pd.read_csv(truth / "runs.tsv", sep="\t")
    bad = {f"{r.participant_id}_{r.session_id}_task-cuff_run-{r.run}"
           for r in runs.itertuples() if str(r.exclude).lower() == "true"}  # fmt: skip
    template = load_template(4)
    attrs = {"affine": template.affine.tolist(), "space": template.space}
    dims = ("z", "y", "x")
    manifest = Manifest(store)
    sessions: dict[str, list[str]] = {}
    for run in (r.key for r in dataset.runs):
        sessions.setdefault(run.rsplit("_run-", 1)[0], []).append(run)
    design = pd.DataFrame({"P40": [0, 1, 0, 0], "P0": [0, 0, 1, 0], "anticipation": [1, 0, 0, 0]})
    subjects: dict[str, dict] = {}
    for key, members in sorted(sessions.items()):
        sub, ses = key.split("_")[:2]
        usable = [r for r in members if r not in bad]
        fe = TaskRecord("fixed_effects", key, key="fe-" + key, subject=sub[4:], session=ses[4:])
        if not usable:
            fe.state, fe.reason = (
                "excluded",
                f"no usable run in this session ({len(members)} excluded for motion)",
            )
            manifest.put(fe)
            continue
        for run in usable:
            tsv = write_tsv(store, f"work/fake/{run}_design.tsv", design)
            manifest.put(TaskRecord("design", run, key="d-" + run, state="done",
                                    outputs={"design": tsv}))  # fmt: skip
        fe.state, fe.outputs = "done", {"runs": {c: usable for c in CONTRASTS}}
        manifest.put(fe)
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        psc = {}
        for cond in ("P40", "P0", "anticipation"):
            name = f"{key}_space-{template.space}_contrast-{cond}_stat-psc_statmap.nii.gz"
            psc[cond] = nib.load(truth / sub / ses / "func" / name).get_fdata().T
        maps = {}
        for contrast, weights in CONTRASTS.items():
            signal = sum(w * psc[c] for c, w in weights.items())
            noise = ndimage.gaussian_filter(rng.standard_normal(signal.shape), 1.0) * 1.2
            effect = ((signal + noise) * 100 * template.mask).astype(np.float32)  # PSC = effect/100
            variance = (np.full(signal.shape, 0.5e4) * template.mask).astype(np.float32)
            prefix = f"work/fake/{key}/contrast-{contrast}"
            maps[f"{contrast}:effect"] = write_array(
                store, prefix + "_stat-effect", effect, dims, attrs=attrs
            )
            maps[f"{contrast}:variance"] = write_array(
                store, prefix + "_stat-variance", variance, dims, attrs=attrs
            )
        mask = write_array(
            store, f"work/fake/{key}/mask", template.mask.astype(np.uint8), dims, attrs=attrs
        )
        mean_image = (template.mask * 10000.0).astype(np.float32)
        mean = write_array(store, f"work/fake/{key}/mean", mean_image, dims, attrs=attrs)
        subjects.setdefault(sub, {})[key] = {"maps": maps, "mask": mask, "mean": mean}
    for sub in sorted({k.split("_")[0] for k in sessions}):
        rec = TaskRecord("normalise", sub, key="n-" + sub, subject=sub[4:])
        if sub not in subjects:
            rec.state, rec.reason = "excluded", "no session with a usable run"
        else:
            rec.state = "done"
            failed = sub == f"sub-{FAILED_QC}"
            rec.outputs = {"sessions": subjects[sub], "failed": failed, "space": template.space}
            if failed:
                rec.reason = "registration failed QC: Dice 0.61 < 0.85"
        manifest.put(rec)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    out = tmp_path_factory.mktemp("group")
    simulate_study(out / "bids", subjects=N_SUBJECTS, seed=0, size="small")
    study = _study(out)
    dataset = discover(study.dataset_url, study.tasks)
    store = Store(study.store_url)
    _fake_upstream(out / "bids", store, dataset)
    ctx = PlanContext(study, dataset, store)
    executor = make_executor("local", workers=2)
    try:
        reports = run_pipeline(ctx, executor, QUIET, stages=[*GROUP_STAGES, "group_report"])
        first = _records(store, "group_inference")
        # the same permutations split into one batch per analysis instead of three
        rebatched = _study(out, batch_size=100)
        ctx2 = PlanContext(rebatched, dataset, store)
        again = run_pipeline(ctx2, executor, QUIET, stages=["group_permutation", "group_inference"])
    finally:
        executor.close()
    return out, store, reports, first, again


def _records(store, stage):
    return {r.unit: r for r in Manifest(store).records(stage)}


def test_group_stages_ran_without_failures(group):
    _, store, reports, _, _ = group
    by_stage = {r.stage: r for r in reports}
    # 100 random sign flips in 3 batches of <= 40 (pre, post); 2^6 = 64 exhaustive (paired)
    assert len(by_stage["group_permutation"].done) == 2 * (3 + 3 + 2)
    for name in [*GROUP_STAGES, "group_report"]:
        assert not by_stage[name].failed, [r.error for r in by_stage[name].failed]
    assert by_stage["group_stack"].done and by_stage["group_report"].done
    assert len(_records(store, "group_stack")) == 6  # 2 contrasts x (pre, post, post - pre)


def test_excluded_subjects_are_listed_with_reasons(group):
    _, store, _, _, _ = group
    stacks = _records(store, "group_stack")
    pre = stacks[PRE].outputs
    # sub-02 lost both pre runs to motion (the simulator's roles); sub-07 failed QC
    assert sorted(pre["excluded"]) == ["02", "07"]
    assert "ses-pre excluded" in pre["excluded"]["02"]
    assert "registration failed QC" in pre["excluded"]["07"]
    assert pre["subjects"] == ["01", "03", "04", "05", "06", "08", "09", "10"]
    paired = stacks[PAIRED].outputs
    assert sorted(paired["excluded"]) == ["02", "04", "06", "07"]
    assert "ses-post" in paired["excluded"]["04"]  # dropout: no post session at all
    assert "ses-post excluded" in paired["excluded"]["06"]
    assert paired["subjects"] == ["01", "03", "05", "08", "09", "10"]
    stack = read_array(store, pre["effect"])
    assert stack.shape == (8, 48, 59, 50)
    np.testing.assert_allclose(
        read_array(store, paired["effect"])[0],
        _map(store, "01", "post", "P40vsP0") - _map(store, "01", "pre", "P40vsP0"),
        rtol=1e-5, atol=1e-3,
    )  # fmt: skip


def _map(store, subject, session, contrast, stat="effect"):
    rec = _records(store, "normalise")[f"sub-{subject}"]
    key = rec.outputs["sessions"][f"sub-{subject}_ses-{session}_task-cuff"]["maps"]
    return read_array(store, key[f"{contrast}:{stat}"])


def test_too_few_subjects_is_an_excluded_analysis_with_reasons(group):
    """With sub-01..03 only, ses-pre has 2 usable subjects: skipped cheaply, saying why."""
    out, store, _, _, _ = group
    study = load_study(str(out / "study.yaml"))
    dataset = discover(study.dataset_url, study.tasks, ["01", "02", "03"])
    plan = plan_group_stack(PlanContext(study, dataset, store))
    excluded = {r.unit: r.reason for r in plan.excluded}
    assert set(excluded) == {PRE, PAIRED, PRE.replace("P40vsP0", "anticipation"),
                             PAIRED.replace("P40vsP0", "anticipation")}  # fmt: skip
    assert "2 usable subject(s)" in excluded[PRE]
    assert "sub-02: ses-pre excluded" in excluded[PRE]


def test_fit_blocks_equal_flame1_of_the_whole_stack(group):
    _, store, _, _, _ = group
    pre = _records(store, "group_stack")[PRE].outputs
    block = next(r for u, r in _records(store, "group_fit").items() if u.startswith(PRE + "_block"))
    sel = tuple(slice(a, b) for a, b in block.outputs["block"])
    effect = read_array(store, pre["effect"], (slice(None), *sel)).reshape(8, -1)
    variance = read_array(store, pre["variance"], (slice(None), *sel)).reshape(8, -1)
    mask = read_array(store, pre["mask"], sel).ravel().astype(bool)
    ref = flame1(effect.astype(float), variance.astype(float), np.ones((8, 1)), [1.0], mask=mask)
    maps = read_array(store, block.outputs["maps"]).reshape(len(block.outputs["names"]), -1)
    z = maps[block.outputs["names"].index("z")]
    np.testing.assert_allclose(z[mask], ref.z[mask], rtol=1e-4, atol=1e-4)
    assert block.outputs["dof"] == 7


def test_planted_effect_is_a_significant_cluster_near_its_coordinate(group):
    _, store, _, _, _ = group
    rec = _records(store, "group_inference")[PRE]
    table = read_tsv(store, rec.outputs["files"]["clusters"])
    sig = table[(table.p_fwe <= 0.05) & (table.side == "positive")]
    assert len(sig), table
    peaks = read_tsv(store, rec.outputs["files"]["peaks"])
    peaks = peaks[peaks.cluster.isin(sig.cluster) & (peaks.side == "positive")]
    planted = [np.array(r.mni_mm) for r in ROIS if r.name in ("rAI", "rTPJ")]
    xyz = peaks[["x_mm", "y_mm", "z_mm"]].to_numpy()
    nearest = min(np.linalg.norm(xyz - c, axis=1).min() for c in planted)
    assert nearest <= 10.0, (nearest, peaks)
    for name in ("z", "thresholded", "clusterindex", "mask", "thumbnail"):
        assert store.exists(rec.outputs["files"][name])
    assert rec.outputs["files"]["z"].endswith(
        "group/ses-pre_task-cuff_space-MNI152NLin2009aSym_contrast-P40vsP0_stat-z_statmap.nii.gz"
    )


def test_nothing_significant_far_from_planted_effects(group):
    _, store, _, _, _ = group
    rec = _records(store, "group_inference")[PRE]
    table = read_tsv(store, rec.outputs["files"]["clusters"])
    sig = table[table.p_fwe <= 0.05]
    planted = np.array([r.mni_mm for r in ROIS])
    for row in sig.itertuples():
        cog = np.array([row.cog_x_mm, row.cog_y_mm, row.cog_z_mm])
        assert np.linalg.norm(planted - cog, axis=1).min() < 30.0, row


def test_paired_analysis_finds_the_planted_decrease(group):
    """rTPJ's P40 response was planted to decrease post: a negative paired cluster there."""
    _, store, _, _, _ = group
    rec = _records(store, "group_inference")[PAIRED]
    assert rec.outputs["n"] == 6
    assert rec.outputs["inference"]["n_permutations"] == 64  # 2^6, exhaustive
    assert rec.outputs["inference"]["exhaustive"]
    table = read_tsv(store, rec.outputs["files"]["clusters"])
    assert (table.p_fwe >= 1 / 64).all()
    sig = table[table.p_fwe <= 0.05]
    assert list(sig.side) == ["negative"], table.head()
    peak = sig[["peak_x_mm", "peak_y_mm", "peak_z_mm"]].to_numpy()[0]
    rtpj = next(np.array(r.mni_mm) for r in ROIS if r.name == "rTPJ")
    assert np.linalg.norm(peak - rtpj) <= 10.0, peak


def test_permutation_maxima_do_not_depend_on_the_batch_split(group):
    _, store, _, first, again = group
    by_stage = {r.stage: r for r in again}
    done = by_stage["group_permutation"].done
    assert len(done) == 6 and all(r.outputs["n_batches"] == 1 for r in done)
    second = _records(store, "group_inference")
    for unit, rec in first.items():
        if rec.state != "done":
            continue
        a = read_tsv(store, rec.outputs["files"]["clusters"])
        b = read_tsv(store, second[unit].outputs["files"]["clusters"])
        pd.testing.assert_frame_equal(a, b)


def test_roi_and_clinical_tables(group):
    _, store, _, _, _ = group
    roi = _records(store, "group_roi")["study"]
    assert roi.state == "done", roi.error
    files = roi.outputs["files"]
    rois = read_tsv(store, files["rois"])
    # the significant paired cluster gives an ROI, plus the study file's coordinate
    assert set(rois.source) == {"groupPostVsPre:P40vsP0", "study file"}
    psc = read_tsv(store, files["psc"])
    assert set(psc.session) == {"pre", "post"} and "sub-07" not in set(psc.subject)
    corr = read_tsv(store, files["correlations"])
    row = corr[(corr.roi == "rTPJ") & (corr.score == "promis_pain_intensity_change")]
    spearman = row[row.method == "spearman"].iloc[0]
    assert spearman.n == 6 and spearman.r > 0.3  # planted r = +0.66
    assert {"n_robust", "r_robust", "dropped_subject"} <= set(corr.columns)
    assert roi.outputs["files"]["scatter"]
    paired = read_tsv(store, files["clinical_paired"])
    assert {"measure", "n", "t", "p", "d_z", "d_av"} <= set(paired.columns)
    assert set(paired.measure) >= {"promis_pain_intensity", "rmq_total"}
    pre = pd.read_csv(next((store_root(store) / "../bids/phenotype").glob("promis.tsv")), sep="\t")
    wide = pre.pivot(index="participant_id", columns="session_id", values="promis_pain_intensity")
    both = wide.dropna()
    expected = stats.ttest_rel(both["ses-post"], both["ses-pre"])
    got = paired.set_index("measure").loc["promis_pain_intensity"]
    assert got.n == len(both)
    np.testing.assert_allclose(
        [got.t, got.p], [expected.statistic, expected.pvalue], rtol=1e-7
    )  # TSV: 8 digits


def store_root(store):
    from pathlib import Path

    return Path(store.url)


def test_report_lists_exclusions_and_clusters(group):
    _, store, _, _, _ = group
    rec = _records(store, "group_report")["report"]
    page = store.read_bytes(rec.outputs["report"]).decode()
    assert "sub-02" in page and "ses-pre excluded" in page
    assert PRE in page and "data:image/png;base64," in page
    assert "significant cluster" in page and "Methods" in page
    found = results(store)
    assert rec.outputs["report"] in found["reports"]
    assert any(k.endswith("_desc-clusters_contrast-P40vsP0_table.tsv")
               or "desc-clusters" in k for k in (t["key"] for t in found["tables"]))  # fmt: skip


def test_group_model_parsing_of_the_reference_study():
    study = load_study("docs/examples/reference-study.yaml")
    found = group_analyses(
        study.doc["model"], ["cuff"], ["pre", "post"], ["P40", "P0", "P40vsP0", "anticipation"]
    )
    labels = [a.label for a in found]
    assert len(found) == 12
    assert "ses-pre_task-cuff_contrast-P40vsP0" in labels
    assert "ses-postMinusPre_task-cuff_contrast-anticipation" in labels
    paired = next(a for a in found if a.session_label == "postMinusPre")
    assert paired.kind == "paired" and paired.sessions == ("post", "pre")
    assert paired.weights == (1.0, -1.0)


def test_group_model_rejects_unknown_contrasts_and_dataset_contrasts():
    study = load_study("docs/examples/reference-study.yaml")
    model = study.doc["model"]
    with pytest.raises(ValueError, match="not first-level t contrasts"):
        group_analyses(model, ["cuff"], ["pre", "post"], ["P40"], only=["P50"])
    bad = {**model, "Nodes": [*model["Nodes"][:-1], {**model["Nodes"][-1],
           "Contrasts": [{"Name": "x", "ConditionList": [1], "Weights": [1]}]}]}  # fmt: skip
    with pytest.raises(ValueError, match="explicit Contrasts"):
        group_analyses(bad, ["cuff"], ["pre", "post"], ["P40"])
