"""First-level design matrix (FSL FEAT conventions) and its checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix
from nilearn.glm.first_level.hemodynamic_models import glover_hrf as nilearn_glover_hrf
from scipy import stats

from processing.firstlevel.design import build_design
from processing.firstlevel.design_qc import DesignError, check_design, plot_design
from processing.firstlevel.hrf import convolve_events, glover_hrf
from processing.preprocess.highpass import highpass_fsl

TR, N_SCANS = 1.28, 188  # the reference study
CONDITIONS = ("anticipation", "P40", "P0")
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def reference_events() -> pd.DataFrame:
    """Eight trials: a 2 s anticipation cue, then 8 s of cuff pressure (P40 or P0)."""
    rows = []
    for trial in range(8):
        start = 10.0 + 28.0 * trial
        rows.append((start, 2.0, "anticipation"))
        rows.append((start + 3.0, 8.0, "P40" if trial % 2 else "P0"))
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def motion(n_scans: int = N_SCANS, seed: int = 0) -> pd.DataFrame:
    walk = np.cumsum(np.random.default_rng(seed).normal(0, 0.02, (n_scans, 6)), axis=0)
    return pd.DataFrame(walk, columns=list(MOTION))


def fsl_regressor(onsets, durations, heights, n_scans: int, tr: float) -> np.ndarray:
    """FEAT's double-gamma regressor written out from its definition (events on the 0.05 s grid)."""
    dt = 0.05
    t = np.arange(720) * dt  # 36 s kernel
    peak = stats.gamma.pdf(t, a=(6.0 / 2.449) ** 2, scale=2.449**2 / 6.0)
    undershoot = stats.gamma.pdf(t, a=(16.0 / 4.0) ** 2, scale=4.0**2 / 16.0)
    kernel = peak - undershoot / 6.0
    n_grid = int(np.ceil(n_scans * tr / dt)) + 10
    stimulus = np.zeros(n_grid)
    for onset, duration, height in zip(onsets, durations, heights, strict=True):
        stimulus[round(onset / dt) : round((onset + duration) / dt)] += height
    response = np.convolve(stimulus, kernel / kernel.sum())[:n_grid]  # plateau 1
    return np.interp((np.arange(n_scans) + 0.5) * tr, np.arange(n_grid) * dt, response)


def test_double_gamma_regressor_matches_fsl_definition():
    events = pd.DataFrame(
        {
            "onset": [10.0, 40.05, 90.5, 150.0],
            "duration": [2.0, 8.0, 8.0, 30.0],
            "trial_type": ["P40"] * 4,
            "modulation": [1.0, 2.0, 0.5, 1.0],
        }
    )
    expected = fsl_regressor(events.onset, events.duration, events.modulation, N_SCANS, TR)
    ours = convolve_events(events.onset, events.duration, events.modulation, N_SCANS, TR)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)
    design = build_design(events, N_SCANS, TR, ["P40"], highpass_cutoff_s=None)
    np.testing.assert_allclose(design.matrix["P40"], expected - expected.mean(), atol=1e-10)
    filtered = build_design(events, N_SCANS, TR, ["P40"], highpass_cutoff_s=90.0).matrix["P40"]
    hp = highpass_fsl(expected, TR, 90.0, add_mean=False)
    np.testing.assert_allclose(filtered, hp - hp.mean(), atol=1e-10)


def test_glover_kernel_matches_nilearn():
    # nilearn samples f(linspace(0, 32, 640)[i] - onset - dt); onset = -dt gives an exact grid
    theirs = nilearn_glover_hrf(t_r=1.0, oversampling=20, time_length=32.0, onset=-0.05)
    step = 32.0 / 639
    ours = glover_hrf(dt=step, length=32.0 + step)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours / ours.sum(), theirs / theirs.sum(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("model", ["spm", "glover"])
def test_task_columns_agree_with_nilearn(model):
    events = reference_events()
    events["modulation"] = np.linspace(0.5, 1.5, len(events))
    ours = build_design(events, N_SCANS, TR, CONDITIONS, hrf_model=model, highpass_cutoff_s=None)
    frame_times = (np.arange(N_SCANS) + 0.5) * TR
    theirs = make_first_level_design_matrix(frame_times, events, hrf_model=model, drift_model=None)
    for cond in CONDITIONS:
        assert np.corrcoef(ours.matrix[cond], theirs[cond])[0, 1] > 0.999, cond


def test_fsl_and_spm_are_aliases():
    fsl = build_design(reference_events(), N_SCANS, TR, CONDITIONS, hrf_model="fsl")
    spm = build_design(reference_events(), N_SCANS, TR, CONDITIONS, hrf_model="spm")
    np.testing.assert_array_equal(fsl.matrix.to_numpy(), spm.matrix.to_numpy())


def test_reference_design_layout_and_metadata():
    design = build_design(
        reference_events(),
        N_SCANS,
        TR,
        CONDITIONS,
        derivative_conditions=CONDITIONS,
        confounds=motion(),
        highpass_cutoff_s=90.0,
    )
    expected = [c for cond in CONDITIONS for c in (cond, f"{cond}_derivative")] + list(MOTION)
    assert list(design.matrix.columns) == expected
    assert design.matrix.shape == (N_SCANS, 12)
    assert design.matrix.dtypes.eq(np.float64).all()
    assert design.conditions == CONDITIONS
    assert design.regressor_parent["P40_derivative"] == "P40"
    assert design.regressor_parent["rot_z"] == "rot_z"
    assert design.dropped == {}
    m = design.matrix
    assert design.peak_heights["P0"] == pytest.approx(m["P0"].max() - m["P0"].min())
    assert design.column_index("P40") == 2
    with pytest.raises(KeyError, match="P40_derivative"):
        design.column_index("P80")
    sidecar = json.loads(json.dumps(design.to_dict()))
    assert sidecar["highpass_cutoff_s"] == 90.0 and sidecar["intercept"] is False
    report = check_design(design.matrix, N_SCANS)
    assert report.rank == 12 and report.warnings == []


def test_derivative_orthogonal_to_parent():
    events, kwargs = reference_events(), {"derivative_conditions": CONDITIONS}
    raw = build_design(events, N_SCANS, TR, CONDITIONS, **kwargs, highpass_cutoff_s=None)
    filtered = build_design(events, N_SCANS, TR, CONDITIONS, **kwargs)
    for cond in CONDITIONS:
        parent, deriv = raw.matrix[cond].to_numpy(), raw.matrix[f"{cond}_derivative"].to_numpy()
        assert abs(parent @ deriv) < 1e-10 * np.linalg.norm(parent) * np.linalg.norm(deriv)
        assert np.corrcoef(deriv, np.gradient(parent))[0, 1] > 0.9  # still a derivative
        hp = filtered.matrix
        assert abs(np.corrcoef(hp[cond], hp[f"{cond}_derivative"])[0, 1]) < 0.01


def test_filter_removes_linear_trend_and_columns_have_zero_mean():
    scans = np.arange(N_SCANS, dtype=float)
    sine = np.sin(2 * np.pi * scans * TR / 30.0)
    confounds = pd.DataFrame({"trend": 3.0 + 0.5 * scans, "drift_sine": 3.0 + 0.5 * scans + sine})
    design = build_design(reference_events(), N_SCANS, TR, CONDITIONS, confounds=confounds)
    m = design.matrix
    assert np.abs(m["trend"]).max() < 1e-9
    expected = highpass_fsl(sine, TR, 100.0, add_mean=False)
    np.testing.assert_allclose(m["drift_sine"], expected - expected.mean(), atol=1e-9)
    np.testing.assert_allclose(m.mean(axis=0), 0.0, atol=1e-12)
    with pytest.raises(DesignError, match=r"\['trend'\]"):  # the filter leaves a zero column
        check_design(m, N_SCANS)


def test_first_row_nan_confound_becomes_zero():
    confounds = motion()
    confounds.loc[0, "trans_x"] = np.nan
    design = build_design(
        reference_events(), N_SCANS, TR, CONDITIONS, confounds=confounds, highpass_cutoff_s=None
    )
    filled = confounds["trans_x"].fillna(0.0)
    np.testing.assert_allclose(design.matrix["trans_x"], filled - filled.mean(), atol=1e-12)


def test_empty_condition_dropped_and_recorded():
    events = reference_events()
    events = events[events.trial_type != "P0"]
    late = pd.DataFrame({"onset": [N_SCANS * TR + 5], "duration": [2.0], "trial_type": ["late"]})
    design = build_design(
        pd.concat([events, late]),
        N_SCANS,
        TR,
        [*CONDITIONS, "late"],
        derivative_conditions=CONDITIONS,
    )
    assert design.conditions == ("anticipation", "P40")
    assert design.dropped["P0"] == "no events in this run"
    assert "within the run" in design.dropped["late"]
    assert "P0" not in design.matrix and "P0_derivative" not in design.matrix
    with pytest.raises(ValueError, match="no usable events"):
        build_design(events, N_SCANS, TR, ["P0"])


def test_fir_columns_count_and_placement():
    tr = 2.0
    events = pd.DataFrame(
        {"onset": [20.0, 80.0], "duration": [1.0, 1.0], "trial_type": ["A", "B"]}
    )  # A in the window of volume 10, B in that of volume 40
    design = build_design(
        events, 60, tr, ["A", "B"], hrf_model="fir", fir_delays=4, highpass_cutoff_s=None
    )
    assert list(design.matrix.columns) == [f"{c}_delay_{k}" for c in "AB" for k in range(4)]
    for cond, volume in (("A", 10), ("B", 40)):
        for k in range(4):
            column = design.matrix[f"{cond}_delay_{k}"]
            assert int(np.argmax(column)) == volume + k
            assert design.peak_heights[f"{cond}_delay_{k}"] == pytest.approx(0.5)  # half a TR
            assert design.regressor_parent[f"{cond}_delay_{k}"] == cond
    theirs = make_first_level_design_matrix(
        (np.arange(60) + 0.5) * tr, events, hrf_model="fir", fir_delays=range(4), drift_model=None
    )
    # nilearn's FIR window at frame t covers (t, t + TR] (it assumes t is the volume's start);
    # ours is causal, (t - TR, t] at the mid-volume time t: the same columns one volume later
    for k in range(4):
        ours = design.matrix[f"A_delay_{k}"].to_numpy()
        assert np.corrcoef(ours[1:], theirs[f"A_delay_{k}"][:-1])[0, 1] > 0.99


@pytest.mark.parametrize(
    ("events", "match"),
    [
        (pd.DataFrame({"onset": [1.0], "duration": [1.0]}), "trial_type"),
        (pd.DataFrame({"onset": ["abc"], "duration": [1.0], "trial_type": ["A"]}), "'abc'"),
        (pd.DataFrame({"onset": [1.0], "duration": [np.nan], "trial_type": ["A"]}), "duration"),
        (pd.DataFrame({"onset": [1.0], "duration": [-2.0], "trial_type": ["A"]}), "-2.0"),
        (
            pd.DataFrame(
                {"onset": [1.0], "duration": [1], "trial_type": ["A"], "modulation": ["x"]}
            ),
            "modulation",
        ),
    ],
)
def test_malformed_events_name_the_problem(events, match):
    with pytest.raises(ValueError, match=match):
        build_design(events, 20, 2.0, ["A"])


def test_bad_options_name_the_problem():
    events = reference_events()
    with pytest.raises(ValueError, match="'canonical'"):
        build_design(events, N_SCANS, TR, CONDITIONS, hrf_model="canonical")
    with pytest.raises(ValueError, match="P80"):
        build_design(events, N_SCANS, TR, CONDITIONS, derivative_conditions=["P80"])
    with pytest.raises(ValueError, match="fir_delays"):
        build_design(events, N_SCANS, TR, CONDITIONS, hrf_model="fir")


def test_nan_confound_names_column_and_row():
    confounds = motion()
    confounds.loc[5, "rot_y"] = np.nan
    with pytest.raises(ValueError, match=r"'rot_y'.*row 5"):
        build_design(reference_events(), N_SCANS, TR, CONDITIONS, confounds=confounds)
    with pytest.raises(ValueError, match="187 rows"):
        build_design(reference_events(), N_SCANS, TR, CONDITIONS, confounds=motion()[1:])


def test_more_columns_than_volumes():
    matrix = pd.DataFrame(np.random.default_rng(1).normal(size=(10, 12)))
    with pytest.raises(DesignError, match=r"12 columns for 10 volumes.*drop confounds"):
        check_design(matrix, 10)


def test_rank_deficient_design_names_duplicated_columns():
    confounds = motion()
    confounds["trans_x_copy"] = confounds["trans_x"]
    design = build_design(reference_events(), N_SCANS, TR, CONDITIONS, confounds=confounds)
    with pytest.raises(DesignError, match="rank deficient") as info:
        check_design(design.matrix, N_SCANS)
    assert "['trans_x', 'trans_x_copy']" in str(info.value)


def test_vif_warning_on_nearly_collinear_columns():
    rng = np.random.default_rng(2)
    a, c = rng.normal(size=(2, 100))
    matrix = pd.DataFrame({"a": a, "b": a + 0.05 * rng.normal(size=100), "c": c})
    report = check_design(matrix, 100)
    assert report.vif["a"] > 10 and report.vif["b"] > 10 and report.vif["c"] < 1.2
    assert len(report.warnings) == 2
    assert all("'a'" in w and "'b'" in w for w in report.warnings)
    assert report.condition_number > 10


def test_plot_writes_png(tmp_path):
    design = build_design(reference_events(), N_SCANS, TR, CONDITIONS, confounds=motion())
    out = plot_design(design.matrix, tmp_path / "design.png", "sub-01 run-1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
