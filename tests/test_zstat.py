"""t -> z and F -> z: exact where scipy is exact, finite and monotonic far beyond underflow."""

import numpy as np
import pytest
from scipy import stats

from processing.zstat import f_to_z, log_t_sf, t_to_z


@pytest.mark.parametrize("dof", [3, 20, 186, 1000])
def test_t_to_z_matches_scipy_where_the_tail_is_representable(dof):
    t = np.linspace(-8, 8, 161)
    expected = np.sign(t) * stats.norm.isf(stats.t.sf(np.abs(t), dof))
    np.testing.assert_allclose(t_to_z(t, dof), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dof", [5, 20, 187, 1000])
def test_t_to_z_is_finite_and_increasing_for_huge_t(dof):
    t = np.logspace(0, 12, 400)
    z = t_to_z(t, dof)
    assert np.all(np.isfinite(z))
    assert np.all(np.diff(z) > 0)
    np.testing.assert_array_equal(t_to_z(-t, dof), -z)


def test_series_branch_joins_scipy_smoothly():
    # At log p ~ -400 both scipy and the series are valid: they must agree.
    for dof in (10, 100):
        t = stats.t.isf(np.exp(-400.0), dof)
        x = dof / (dof + t * t)
        series = np.log(0.5) + (dof / 2) * np.log(x) + 0.5 * np.log1p(-x)
        series -= np.log(dof / 2) + __import__("scipy").special.betaln(dof / 2, 0.5)
        assert series == pytest.approx(-400.0, rel=1e-4)
        assert log_t_sf(t * 10, dof) < log_t_sf(t, dof)


def test_t_to_z_keeps_nan_and_inf_and_broadcasts_dof():
    z = t_to_z([np.nan, np.inf, -np.inf, 0.0], 10)
    assert np.isnan(z[0]) and z[1] == np.inf and z[2] == -np.inf and z[3] == 0
    per_voxel = t_to_z(np.full(3, 3.0), np.array([5.0, 50.0, 500.0]))
    assert per_voxel[0] < per_voxel[1] < per_voxel[2] < 3.0


def test_large_dof_t_is_z():
    np.testing.assert_allclose(t_to_z([1.0, 2.3, 4.0], 1e7), [1.0, 2.3, 4.0], atol=1e-5)


def test_f_to_z_matches_scipy_and_survives_huge_f():
    f = np.linspace(0.01, 30, 100)
    expected = stats.norm.isf(stats.f.sf(f, 3, 100))
    np.testing.assert_allclose(f_to_z(f, 3, 100), expected, rtol=1e-9)
    z = f_to_z(np.logspace(0, 14, 200), 2, 50)
    assert np.all(np.isfinite(z)) and np.all(np.diff(z) > 0)


def test_bad_dof_and_negative_f_are_named():
    with pytest.raises(ValueError, match="dof must be > 0, got 0"):
        t_to_z(1.0, 0)
    with pytest.raises(ValueError, match="F statistics must be >= 0, got -1"):
        f_to_z(-1.0, 1, 10)
