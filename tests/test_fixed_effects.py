"""Fixed effects: flameo's inverse-variance formulas, FSL's dof, and clear errors."""

import numpy as np
import pytest

from processing.firstlevel.fixed_effects import fixed_effects, fixed_effects_dof


def test_mean_of_two_runs_is_the_inverse_variance_weighted_mean():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2, 500))
    s = rng.uniform(0.5, 3.0, size=(2, 500))
    fe = fixed_effects(y, s, [180, 180])
    w = 1 / s
    np.testing.assert_allclose(fe.effect, (w * y).sum(0) / w.sum(0), rtol=1e-12)
    np.testing.assert_allclose(fe.variance, 1 / w.sum(0), rtol=1e-12)
    np.testing.assert_allclose(fe.t, fe.effect / np.sqrt(fe.variance), rtol=1e-12)
    assert fe.dof == 359  # min(360, 1000) - 1


def test_general_design_matches_direct_gls_and_caps_dof():
    rng = np.random.default_rng(1)
    z = np.column_stack([np.ones(5), np.arange(5.0)])
    y, s = rng.normal(size=(5, 3)), rng.uniform(0.2, 2.0, size=(5, 3))
    fe = fixed_effects(y, s, [300] * 5, design=z, contrast=[0, 1])
    for v in range(3):
        wm = np.diag(1 / s[:, v])
        cov = np.linalg.inv(z.T @ wm @ z)
        gamma = cov @ z.T @ wm @ y[:, v]
        assert fe.effect[v] == pytest.approx(gamma[1])
        assert fe.variance[v] == pytest.approx(cov[1, 1])
    assert fe.dof == 998  # capped at 1000, minus 2 regressors


def test_single_run_passes_through_and_recovers_planted_mean():
    fe = fixed_effects([[2.0, -1.0]], [[0.25, 4.0]], [150])
    np.testing.assert_allclose(fe.effect, [2.0, -1.0])
    np.testing.assert_allclose(fe.t, [4.0, -0.5])
    assert fe.dof == 149
    # Many noisy runs: the weighted mean is unbiased and its variance is calibrated.
    rng = np.random.default_rng(2)
    s = rng.uniform(0.5, 2.0, size=(4, 20000))
    y = 1.0 + rng.normal(size=s.shape) * np.sqrt(s)
    fe = fixed_effects(y, s, [100] * 4)
    assert abs(fe.effect.mean() - 1.0) < 0.01
    assert np.std((fe.effect - 1.0) / np.sqrt(fe.variance)) == pytest.approx(1.0, abs=0.02)


def test_voxels_outside_an_input_mask_are_zero_not_nan():
    fe = fixed_effects([[1.0, 1.0], [3.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], [50, 50])
    assert fe.valid.tolist() == [True, False]
    assert fe.effect[1] == 0 and fe.z[1] == 0 and np.all(np.isfinite(fe.z))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same shape"):
        fixed_effects(np.ones((2, 3)), np.ones((2, 4)), [10, 10])
    with pytest.raises(ValueError, match="design has 3 rows but there are 2 inputs"):
        fixed_effects(np.ones((2, 3)), np.ones((2, 3)), [10, 10], design=np.ones((3, 1)))
    with pytest.raises(ValueError, match="rank deficient"):
        fixed_effects(np.ones((2, 3)), np.ones((2, 3)), [10, 10], design=np.ones((2, 2)))
    with pytest.raises(ValueError, match="positive numbers"):
        fixed_effects_dof([10, 0])
