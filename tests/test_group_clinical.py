"""Clinical tables and ROI-behaviour correlations: scipy parity and the simulator's plants."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from processing.group.clinical import (
    correlate,
    correlation_matrix,
    paired_tests,
    post_minus_pre,
    robust_correlate,
    roi_correlations,
)
from processing.simulate.phenotype import clinical_scores
from processing.simulate.planting import plant_amplitudes
from processing.simulate.specs import stream


def _table(seed=0, n=20):
    post_missing = np.zeros(n, bool)
    post_missing[[3, 11]] = True
    return pd.DataFrame(
        clinical_scores(stream(seed, "clinical"), n, post_missing),
        index=[f"sub-{i + 1:02d}" for i in range(n)],
    ), post_missing


def test_paired_tests_equal_scipy_with_pairwise_complete_n():
    data, _ = _table()
    data.loc["sub-05", "rmq_total_pre"] = np.nan
    res = paired_tests(data, ["promis_pain_intensity", "rmq_total", "scs_total"])
    for m in res.index:
        pair = data[[f"{m}_pre", f"{m}_post"]].dropna()
        ref = stats.ttest_rel(pair.iloc[:, 1], pair.iloc[:, 0])
        row = res.loc[m]
        assert row.n == len(pair)
        assert row.t == pytest.approx(ref.statistic, rel=1e-12)
        assert row.p == pytest.approx(ref.pvalue, rel=1e-10)
        diff = pair.iloc[:, 1] - pair.iloc[:, 0]
        assert row.d_z == pytest.approx(diff.mean() / diff.std(ddof=1))
        sd_av = (pair.iloc[:, 0].std(ddof=1) + pair.iloc[:, 1].std(ddof=1)) / 2
        assert row.d_av == pytest.approx(diff.mean() / sd_av)
        assert row.pre_mean == pytest.approx(pair.iloc[:, 0].mean())
    assert res.loc["rmq_total", "n"] == 17
    assert res.loc["promis_pain_intensity", "t"] < 0  # post - pre: pain went down
    with pytest.raises(ValueError, match=r"\['nope_pre', 'nope_post'\] do not exist"):
        paired_tests(data, ["nope"])


def test_correlation_matrix_equals_scipy_pairwise():
    data, _ = _table(1)
    cols = ["promis_pain_intensity_pre", "rmq_total_pre", "scs_total_pre", "maia_total_post"]
    data.loc[["sub-01", "sub-02"], "scs_total_pre"] = np.nan
    r, p, n = correlation_matrix(data, cols)
    for a in cols:
        for b in cols:
            if a == b:
                continue
            pair = data[[a, b]].dropna()
            ref = stats.pearsonr(pair[a], pair[b])
            assert r.loc[a, b] == pytest.approx(ref.statistic, rel=1e-10)
            assert p.loc[a, b] == pytest.approx(ref.pvalue, rel=1e-8)
            assert n.loc[a, b] == len(pair)
    assert n.loc["scs_total_pre", "maia_total_post"] == 16


def test_robust_correlation_drops_the_most_influential_point():
    rng = np.random.default_rng(2)
    x = rng.normal(size=15)
    y = 0.1 * rng.normal(size=15)
    x[7], y[7] = 6.0, 6.0  # one point makes the correlation
    full = correlate(x, y, method="pearson")
    rob = robust_correlate(x, y, method="pearson")
    assert full["r"] > 0.8 and rob["dropped"] == 7 and abs(rob["r"]) < 0.6 and rob["n"] == 14
    sp = correlate(x, y)
    assert sp["r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    x[0] = np.nan
    assert correlate(x, y)["n"] == 14


def test_planted_roi_clinical_correlations_are_recovered():
    seed, n = 4, 20
    data, post_missing = _table(seed, n)
    usable = ~post_missing
    usable[[1, 5]] = False  # no usable imaging in one session
    planted = plant_amplitudes(seed, {k: v.to_numpy() for k, v in data.items()}, usable)
    rng = np.random.default_rng(0)
    # ROI post - pre PSC as measured: the planted change plus a little measurement noise
    pre = pd.DataFrame({r: rng.normal(1.0, 0.3, n) for r in planted.changes}, index=data.index)
    post = pre + pd.DataFrame(planted.changes, index=data.index) + rng.normal(0, 0.1, (n, 4))
    post[~usable] = np.nan
    roi_change = post_minus_pre(pre, post)
    measures = {
        "rTPJ": "promis_pain_intensity",
        "dlPFC": "scs_total",
        "vPCC": "maia_body_listening",
    }
    scores = pd.DataFrame(
        {m: data[f"{m}_post"] - data[f"{m}_pre"] for m in measures.values()}, index=data.index
    )
    res = roi_correlations(roi_change, scores, list(measures.items())).set_index("roi")
    targets = {"rTPJ": 0.66, "dlPFC": -0.65, "vPCC": 0.66}
    for roi, r in targets.items():
        assert res.loc[roi, "n"] == usable.sum()
        assert np.sign(res.loc[roi, "r"]) == np.sign(r) and abs(res.loc[roi, "r"] - r) < 0.2
        assert res.loc[roi, "n_robust"] == usable.sum() - 1
        assert res.loc[roi, "dropped_subject"] in set(data.index[usable])
    with pytest.raises(ValueError, match=r"\['pain'\] do not exist"):
        roi_correlations(roi_change, scores, [("rTPJ", "pain")])
