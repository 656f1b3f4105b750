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

import contextlib
import io
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console
from scipy import ndimage, stats

from infra.arrays import read_array, read_tsv, write_array, write_tsv
from infra.bids import discover
from infra.cli import main
from infra.clusters import make_executor
from infra.dashboard.pages import results
from infra.demo import write_demo_study
from infra.derivatives import write_png
from infra.manifest import Manifest, TaskRecord
from infra.pipeline import PlanContext
from infra.runner import run_pipeline
from infra.stages.group_stack import plan_group_stack
from infra.stages.report import REPORT_KEY
from infra.storage import Store
from infra.study import load_study
from processing.firstlevel.design_qc import plot_design
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
    plot = write_png(store, "work/fake/design.png", lambda path: plot_design(design, path))
    _fake_motion(runs, manifest)
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
                                    outputs={"design": tsv, "plot": plot}))  # fmt: skip
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
            if failed:  # as the normalise stage records a QC failure
                rec.reason = "registration failed QC: Dice 0.61 < 0.85"
                rec.warnings.append(rec.reason + " (maps written for inspection, not used)")
        manifest.put(rec)


def _fake_motion(runs: pd.DataFrame, manifest: Manifest) -> None:
    """``motion`` records of every run with the simulator's displacement and exclusion verdict
    (the report's motion QC table; max FD stands in as the largest translation jump)."""
    for r in runs.itertuples():
        unit = f"{r.participant_id}_{r.session_id}_task-cuff_run-{r.run}"
        bad = str(r.exclude).lower() == "true"
        outputs = {"max_fd_mm": float(r.max_translation_jump_mm), "excluded": bad,
                   "max_rel_rms_mm": float(r.max_rel_rms_mm), "n_fd_over_0p5": 0,
                   "reason": r.reason if bad else None}  # fmt: skip
        manifest.put(TaskRecord("motion", unit, key="m-" + unit, state="done", outputs=outputs,
                                params={"preprocessing.motion_exclusion_mm": 2.0}))  # fmt: skip


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The simulated study and a store holding the upstream records (no group stage run yet)."""
    out = tmp_path_factory.mktemp("group")
    simulate_study(out / "bids", subjects=N_SUBJECTS, seed=0, size="small")
    study = _study(out)
    dataset = discover(study.dataset_url, study.tasks)
    store = Store(study.store_url)
    _fake_upstream(out / "bids", store, dataset)
    return out, study, dataset, store


@pytest.fixture(scope="module")
def group(upstream):
    out, study, dataset, store = upstream
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
    # the peak of the planted change, or a listed local maximum of its cluster, is near
    peaks = read_tsv(store, rec.outputs["files"]["peaks"])
    peaks = peaks[peaks.cluster.isin(sig.cluster) & (peaks.side == "negative")]
    rtpj = next(np.array(r.mni_mm) for r in ROIS if r.name == "rTPJ")
    xyz = peaks[["x_mm", "y_mm", "z_mm"]].to_numpy()
    assert np.linalg.norm(xyz - rtpj, axis=1).min() <= 10.0, peaks


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


def _covariate_study(out):
    """The test study with one Dataset node: per-session maps on [1, age], testing age's slope."""
    path = out / "study-age.yaml"
    doc = yaml.safe_load((out / "study.yaml").read_text())
    nodes = [n for n in doc["model"]["Nodes"] if n["Level"] != "Dataset"]
    nodes.append({"Level": "Dataset", "Name": "ageBySession", "GroupBy": ["session", "contrast"],
                  "Model": {"Type": "glm", "X": [1, "age"]},
                  "Contrasts": [{"Name": "age", "ConditionList": ["age"], "Weights": [1],
                                 "Test": "t"}]})  # fmt: skip
    doc["model"]["Nodes"] = nodes
    keep = [e for e in doc["model"]["Edges"] if not e["Destination"].startswith("group")]
    doc["model"]["Edges"] = keep
    doc["model"]["Edges"].append({"Source": "session", "Destination": "ageBySession"})
    doc["boldcloud"]["group_level"].update({"contrasts": ["P40vsP0"], "variance_groups": "scanner"})
    doc["boldcloud"]["inference"].update({"n_permutations": 40, "batch_size": 40})
    doc["boldcloud"]["roi"]["maps"] = []
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    assert study.issues == [], study.issues
    return study


def test_a_covariate_study_runs_with_freedman_lane_and_drops_a_missing_score(upstream):
    """participants.tsv age as a covariate (sub-03's age missing) and a two-level scanner column
    as variance groups: planned, stacked, fitted and permuted (rows, Freedman-Lane, within the
    scanner groups); sub-03 is left out with a record warning saying why."""
    out, _, _, store = upstream
    study = _covariate_study(out)
    dataset = discover(study.dataset_url, study.tasks)
    participants = dataset.participants.copy()
    participants.loc[participants.participant_id == "sub-03", "age"] = np.nan
    participants["scanner"] = ["A" if i % 2 else "B" for i in range(len(participants))]
    dataset.participants = participants
    executor = make_executor("inprocess")
    stages = ["group_stack", "group_fit", "group_permutation", "group_inference"]
    try:
        reports = run_pipeline(PlanContext(study, dataset, store), executor, QUIET, stages=stages)
    finally:
        executor.close()
    for report in reports:
        assert not report.failed, [r.error for r in report.failed]
    label = "ses-pre_task-cuff_contrast-P40vsP0Age"
    stack = _records(store, "group_stack")[label]
    design = stack.outputs["design"]
    assert design["columns"] == ["intercept", "age"] and design["permutation"] == "rows"
    assert stack.outputs["subjects"] == ["01", "04", "05", "06", "08", "09", "10"]
    assert "missing age" in stack.outputs["excluded"]["03"]
    assert any("sub-03: missing age" in w for w in stack.warnings)
    ages = participants.set_index("participant_id").loc[[f"sub-{s}" for s in design["subjects"]]]
    np.testing.assert_allclose([r[1] for r in design["matrix"]], ages.age - ages.age.mean())
    block = next(r for u, r in _records(store, "group_fit").items() if u.startswith(label))
    assert block.state == "done" and block.outputs["ols_dof"] == 5  # 7 subjects - 2 regressors
    sel = tuple(slice(a, b) for a, b in block.outputs["block"])
    effect = read_array(store, stack.outputs["effect"], (slice(None), *sel)).reshape(7, -1)
    maps = read_array(store, block.outputs["maps"]).reshape(len(block.outputs["names"]), -1)
    mask = maps[block.outputs["names"].index("mask")] > 0.5
    ols_t = maps[block.outputs["names"].index("ols_t")]
    assert mask.any()
    x = np.asarray(design["matrix"])
    beta, rss, *_ = np.linalg.lstsq(x, effect[:, mask].astype(float), rcond=None)
    t_age = beta[1] / np.sqrt(rss / 5 * np.linalg.inv(x.T @ x)[1, 1])
    np.testing.assert_allclose(ols_t[mask], t_age, rtol=1e-3, atol=1e-3)
    inference = _records(store, "group_inference")[label]
    assert inference.state == "done" and inference.outputs["inference"]["n_permutations"] == 40
    assert inference.outputs["inference"]["rearrangement"] == "rows"
    assert sorted(design["group_names"]) == ["A", "B"]
    assert sorted(inference.outputs["inference"]["exchangeability_blocks"]) == ["A", "B"]


# ---------------------------------------------------------------- boldcloud report + Chromium
@pytest.fixture(scope="module")
def cli_report(group, tmp_path_factory):
    """``boldcloud report`` on the fixture's store with --out, from a study file that now asks for
    200 permutations: nothing re-ran, so the methods must still describe the 100 that did."""
    out, store, _, _, _ = group
    doc = yaml.safe_load((out / "study.yaml").read_text())
    doc["boldcloud"]["inference"]["n_permutations"] = 200
    changed = out / "study-changed.yaml"
    changed.write_text(yaml.safe_dump(doc, sort_keys=False))
    local = tmp_path_factory.mktemp("report-copy")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["report", str(changed), "--store", store.url, "--out", str(local)])
    return code, printed.getvalue(), local


def test_report_command_writes_the_store_report_and_a_local_copy(group, cli_report, tmp_path):
    out, store, _, _, _ = group
    code, printed, local = cli_report
    assert code == 0, printed
    assert store.full_url(REPORT_KEY) in printed and str(local / "report.html") in printed
    page = store.read_bytes(REPORT_KEY).decode()
    assert (local / "report.html").read_text() == page
    links = re.findall(r'href="([^"#][^"]*)"', page)
    assert links and all((local / link).is_file() for link in links if link != "data:,")
    methods = page.split('id="methods"')[1]
    assert "100 random sign flips" in methods and "200 random" not in methods
    empty = main(["report", str(out / "study.yaml"), "--store", str(tmp_path / "empty")])
    assert empty == 1


def test_report_opens_in_chromium_with_every_section(cli_report):
    """The copied report in headless Chromium: no console error, every image decodes, each
    section has its rows, and the methods name the parameters that ran."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium (`make system-deps`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (dev extras)")
    _, _, local = cli_report
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"]  # fmt: skip
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=args, headless=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((local / "report.html").as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            rows = {sel: page.locator(sel).count() for sel in ROW_SELECTORS}
            methods = page.inner_text("section#methods")
        finally:
            browser.close()
    assert errors == []
    assert len(widths) >= 10 and min(widths) > 0, widths
    assert rows["table.cohort tbody tr"] == N_SUBJECTS
    assert rows["table.excluded-runs tbody tr"] >= 2 and rows["table.excluded-sessions tbody tr"]
    assert rows["table.motion tbody tr"] >= 30
    assert rows["table.warnings tbody tr"] >= 1  # the failed registration's record warning
    assert rows["section#designs img"] >= 1 + 6  # first level + one group design per analysis
    assert rows["section#group img"] >= 4 and rows["section#group .clusters tbody tr"] >= 2
    assert rows["section#roi table"] == 3 and rows["section#roi tbody tr"] >= 3
    assert rows["section#roi img.scatter"] >= 1
    assert rows["section#clinical table"] == 2 and rows["section#clinical tbody tr"] >= 2
    for ran in ("FLAME1", "100 random sign flips", "exhaustive", "64 for N = 6", "Z > 2.3",
                "cluster-extent FWE-corrected P < 0.05", "MNI152NLin2009aSym 4 mm", "above 2 mm",
                "4 mm spheres", "Spearman", "boldcloud", "numpy", "scipy", "nibabel", "dipy",
                "dask"):  # fmt: skip
        assert ran in methods, (ran, methods)


ROW_SELECTORS = (
    "table.warnings tbody tr", "table.cohort tbody tr", "table.excluded-runs tbody tr",
    "table.excluded-sessions tbody tr",
    "table.motion tbody tr", "section#designs img", "section#group img",
    "section#group .clusters tbody tr", "section#roi table", "section#roi tbody tr",
    "section#roi img.scatter", "section#clinical table", "section#clinical tbody tr",
)  # fmt: skip
