"""Group designs, OLS and FLAME1: parity with scipy/nilearn, an independent REML, calibration."""

import numpy as np
import pytest
from scipy import optimize, stats

from processing.group.designs import (
    one_sample_design,
    paired_differences,
    two_group_design,
)
from processing.group.flame import flame1, flame_dof, ols
from processing.group.model_design import model_design


def _reml(y, s, x, groups, beta):
    """Restricted log likelihood with explicit matrices (independent of flame.py)."""
    v = np.diag(s + beta[groups])
    vinv = np.linalg.inv(v)
    a = x.T @ vinv @ x
    gamma = np.linalg.solve(a, x.T @ vinv @ y)
    r = y - x @ gamma
    return -0.5 * (np.linalg.slogdet(v)[1] + np.linalg.slogdet(a)[1] + r @ vinv @ r)


def _direct_reml(y, s, x, groups):
    """Maximise the REML per voxel: log grid, then a bounded/L-BFGS-B polish (beta >= 0)."""
    n_groups = groups.max() + 1
    scale = np.var(y) + s.mean()
    grid = np.concatenate([[0.0], scale * np.logspace(-4, 2, 61)])
    if n_groups == 1:
        vals = [_reml(y, s, x, groups, np.array([b])) for b in grid]
        k = int(np.argmax(vals))
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
        res = optimize.minimize_scalar(
            lambda b: -_reml(y, s, x, groups, np.array([b])),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-12 * scale},
        )
        best = min((res.x, grid[k]), key=lambda b: -_reml(y, s, x, groups, np.array([b])))
        return np.array([best])
    starts = [np.full(n_groups, g) for g in grid[::15]]
    best = None
    for st in starts:
        res = optimize.minimize(
            lambda b: -_reml(y, s, x, groups, b),
            st,
            method="L-BFGS-B",
            bounds=[(0, None)] * n_groups,
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def test_ols_matches_scipy_one_sample_and_paired():
    rng = np.random.default_rng(0)
    y = rng.normal(0.3, 1.0, size=(12, 50))
    fit = ols(y, one_sample_design(12), "mean")
    ref = stats.ttest_1samp(y, 0.0)
    np.testing.assert_allclose(fit.t, ref.statistic, rtol=1e-12)
    assert fit.dof == 11
    np.testing.assert_allclose(2 * stats.norm.sf(np.abs(fit.z)), ref.pvalue, rtol=1e-9)
    pre, post = rng.normal(size=(10, 40)), rng.normal(0.5, 1.0, size=(10, 40))
    diff, var = paired_differences(pre, np.ones_like(pre), post, 2 * np.ones_like(post))
    np.testing.assert_allclose(var, 3.0)
    fit = ols(diff, one_sample_design(10, kind="paired"), "mean")
    np.testing.assert_allclose(fit.t, stats.ttest_rel(post, pre).statistic, rtol=1e-12)
    np.testing.assert_allclose(fit.effect, (post - pre).mean(0), rtol=1e-12)


def test_ols_matches_nilearn_second_level_with_a_covariate():
    nib = pytest.importorskip("nibabel")
    pd = pytest.importorskip("pandas")
    from nilearn.glm.second_level import SecondLevelModel

    rng = np.random.default_rng(1)
    n, shape = 9, (4, 4, 3)
    age = rng.normal(40, 10, n)
    design = one_sample_design(n, covariates={"age": age})
    data = rng.normal(size=(n, *shape)) + 0.02 * (age - age.mean())[:, None, None, None]
    imgs = [nib.Nifti1Image(d.astype(np.float64), np.eye(4)) for d in data]
    dm = pd.DataFrame(design.matrix, columns=list(design.columns))
    mask = nib.Nifti1Image(np.ones(shape, dtype=np.uint8), np.eye(4))
    model = SecondLevelModel(mask_img=mask, minimize_memory=False).fit(imgs, design_matrix=dm)
    for name in ("mean", "age"):
        out = model.compute_contrast(design.contrast(name), output_type="all")
        fit = ols(data.reshape(n, -1), design, name)
        np.testing.assert_allclose(fit.t, out["stat"].get_fdata().ravel(), rtol=1e-6)
        np.testing.assert_allclose(fit.effect, out["effect_size"].get_fdata().ravel(), rtol=1e-6)


def test_flame1_matches_direct_reml_one_group():
    rng = np.random.default_rng(2)
    n, v = 11, 40
    x = one_sample_design(n, covariates={"c": rng.normal(size=n)}).matrix
    s = rng.uniform(0.2, 3.0, size=(n, v))
    beta_true = rng.choice([0.0, 0.5, 2.0], size=v)
    y = 0.5 + rng.normal(size=(n, v)) * np.sqrt(s + beta_true)
    fit = flame1(y, s, x, [1.0, 0.0])
    g = np.zeros(n, dtype=int)
    for j in range(v):
        b = _direct_reml(y[:, j], s[:, j], x, g)
        assert (
            _reml(y[:, j], s[:, j], x, g, fit.between_variance[:, j])
            >= _reml(y[:, j], s[:, j], x, g, b) - 1e-10
        )
        np.testing.assert_allclose(fit.between_variance[0, j], b[0], rtol=1e-4, atol=1e-8)
        w = 1 / (s[:, j] + b[0])
        cov = np.linalg.inv(x.T @ (w[:, None] * x))
        gamma = cov @ x.T @ (w * y[:, j])
        np.testing.assert_allclose(fit.effect[j], gamma[0], rtol=1e-4)
        np.testing.assert_allclose(fit.t[j], gamma[0] / np.sqrt(cov[0, 0]), rtol=1e-4)
    assert fit.dof == n - 2


def test_flame1_matches_direct_reml_two_variance_groups():
    rng = np.random.default_rng(3)
    sites = ["A"] * 7 + ["B"] * 6
    design = one_sample_design(13, variance_groups=sites)
    s = rng.uniform(0.2, 2.0, size=(13, 10))
    bt = np.where(np.array(sites) == "A", 0.3, 2.5)[:, None]
    y = 1.0 + rng.normal(size=s.shape) * np.sqrt(s + bt)
    fit = flame1(y, s, design, "mean")
    for j in range(s.shape[1]):
        ref = _direct_reml(y[:, j], s[:, j], design.matrix, design.variance_groups)
        mine = _reml(
            y[:, j], s[:, j], design.matrix, design.variance_groups, fit.between_variance[:, j]
        )
        assert mine >= _reml(y[:, j], s[:, j], design.matrix, design.variance_groups, ref) - 1e-9
        np.testing.assert_allclose(fit.between_variance[:, j], ref, rtol=1e-3, atol=1e-6)
    assert fit.dof == 5  # smallest group (6) minus its regressor


def test_flame1_with_zero_lower_level_variance_equals_ols():
    rng = np.random.default_rng(4)
    design = two_group_design(["p"] * 6 + ["c"] * 7, variance_groups=None)
    y = rng.normal(size=(13, 30))
    one = one_sample_design(13, variance_groups=None)
    for d, con in ((design, "c-p"), (one, "mean")):
        d1 = d if d is one else two_group_design(["p"] * 6 + ["c"] * 7, variance_groups=["x"] * 13)
        f = flame1(y, np.zeros_like(y), d1, con, mask=np.ones(30, bool))
        o = ols(y, d1, con)
        np.testing.assert_allclose(f.t, o.t, rtol=1e-6)
        np.testing.assert_allclose(f.between_variance, o.between_variance, rtol=1e-6)
    assert flame_dof(design.matrix, design.contrast("c-p"), design.variance_groups) == 5


def test_flame1_recovers_planted_variance_and_effect_and_is_calibrated_on_null():
    rng = np.random.default_rng(5)
    n, v = 16, 20000
    s = rng.uniform(0.5, 2.0, size=(n, v))
    y = 0.4 + rng.normal(size=(n, v)) * np.sqrt(s + 1.5)
    fit = flame1(y, s, one_sample_design(n), "mean")
    assert fit.between_variance.mean() == pytest.approx(1.5, rel=0.03)
    assert fit.effect.mean() == pytest.approx(0.4, abs=0.01)
    # (effect - truth) / sd is t with about N - 1 dof: sd sqrt(15 / 13)
    t_true = (fit.effect - 0.4) / np.sqrt(fit.variance)
    assert np.std(t_true) == pytest.approx(np.sqrt(15 / 13), abs=0.03)
    null = rng.normal(size=(n, v)) * np.sqrt(s + 0.5)
    z = flame1(null, s, one_sample_design(n), "mean").z
    assert np.mean(z > 2.3) == pytest.approx(stats.norm.sf(2.3), abs=0.003)


def test_voxels_without_data_are_outside_the_mask():
    rng = np.random.default_rng(6)
    y, s = rng.normal(size=(5, 4)), rng.uniform(1, 2, size=(5, 4))
    y[2, 1] = np.nan
    y[3, 2] = s[3, 2] = 0.0
    fit = flame1(y, s, one_sample_design(5), "mean")
    assert fit.mask.tolist() == [True, False, False, True]
    assert np.all(fit.z[~fit.mask] == 0) and np.all(np.isfinite(fit.z))


def test_design_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 3 subjects"):
        one_sample_design(2)
    with pytest.raises(ValueError, match="need N > p"):
        one_sample_design(3, covariates={"a": [1, 2, 4], "b": [0, 1, 0]})
    with pytest.raises(ValueError, match=r"rank deficient.*'b'"):
        one_sample_design(5, covariates={"a": [1, 2, 3, 4, 5], "b": [2, 4, 6, 8, 10]})
    with pytest.raises(ValueError, match="all-zero columns"):
        one_sample_design(4, covariates={"a": [1, 1, 1, 1]})
    table = {"age": [30, 40, np.nan, 50, 60], "site": ["a", "a", "b", "b", "b"]}
    subs = ["s1", "s2", "s3", "s4", "s5"]
    with pytest.raises(ValueError, match=r"no values for 'sex'.*'age'"):
        model_design(["1", "sex"], ["1"], [1], subs, table)
    d = model_design(["1", "age"], ["1"], [1], subs, table, variance_groups="site").design
    assert d.dropped == ("s3",) and d.subjects == ("s1", "s2", "s4", "s5")
    np.testing.assert_allclose(d.matrix[:, 1], [-15, -5, 5, 15])  # demeaned
    assert d.variance_groups.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown contrast"):
        d.contrast("nope")
    two = two_group_design(["pat", "con", "pat", "con", "pat"])
    np.testing.assert_allclose(two.contrast("pat-con"), [-1, 1])


def _coordinate_reml(y, s, x, groups):
    """Independent REML maximum for several variance groups: best point of a per-group log grid,
    then cyclic bounded Brent searches over one group's variance at a time until they settle."""
    n_groups = groups.max() + 1
    scale = np.var(y) + s.mean()
    grid = np.concatenate([[0.0], scale * np.logspace(-3, 1.5, 19)])
    mesh = np.stack(np.meshgrid(*[grid] * n_groups, indexing="ij"), -1).reshape(-1, n_groups)
    beta = max(mesh, key=lambda b: _reml(y, s, x, groups, b)).copy()
    for _ in range(200):
        before = beta.copy()
        for g in range(n_groups):

            def negative(b, g=g):
                trial = beta.copy()
                trial[g] = b
                return -_reml(y, s, x, groups, trial)

            res = optimize.minimize_scalar(
                negative, bounds=(0.0, 50 * scale), method="bounded",
                options={"xatol": 1e-13 * scale},
            )  # fmt: skip
            beta[g] = res.x if res.fun < negative(beta[g]) else beta[g]
        if np.abs(beta - before).max() < 1e-12 * scale:
            break
    return beta


def test_flame1_with_site_variance_groups_in_a_two_group_covariate_design_matches_reml():
    """Two groups + a demeaned covariate, one between-subject variance per site: effect, t and
    both variances equal an independent REML optimisation to 1e-4 relative."""
    rng = np.random.default_rng(11)
    n, v = 14, 6
    subjects = [f"{i:02d}" for i in range(n)]
    table = {
        "group": ["patient", "control"] * 7,
        "age": rng.normal(40, 10, n).tolist(),
        "site": ["a"] * 7 + ["b"] * 7,
    }
    built = model_design(["group", "age"], ["group.patient", "group.control"], [1, -1],
                         subjects, table, variance_groups="site")  # fmt: skip
    x, g, c = built.design.matrix, built.design.variance_groups, built.contrast
    s = rng.uniform(0.2, 1.0, size=(n, v))
    bt = np.where(g == 0, 0.6, 3.0)[:, None]
    y = x @ rng.normal(size=(x.shape[1], v)) + rng.normal(size=(n, v)) * np.sqrt(s + bt)
    fit = flame1(y, s, built.design, c)
    for j in range(v):
        ref = _coordinate_reml(y[:, j], s[:, j], x, g)
        scale = np.var(y[:, j]) + s[:, j].mean()
        np.testing.assert_allclose(fit.between_variance[:, j], ref, rtol=1e-4, atol=1e-7 * scale)
        w = 1 / (s[:, j] + ref[g])
        cov = np.linalg.inv(x.T @ (w[:, None] * x))
        gamma = cov @ x.T @ (w * y[:, j])
        np.testing.assert_allclose(fit.effect[j], c @ gamma, rtol=1e-4)
        np.testing.assert_allclose(fit.t[j], c @ gamma / np.sqrt(c @ cov @ c), rtol=1e-4)
    # FSL's lower bound: each site holds both groups and the covariate (7 - 3 regressors)
    assert fit.dof == 4
