"""Spatial lag-1 noise correlation (processing.noise_correlation) and the variance of resampled
effects (processing.normalise.resample, kind="variance" with noise_lag1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from processing.noise_correlation import lag1_correlation, lag1_sums, residual_lag1_sums
from processing.normalise.resample import sample_at_points

SHAPE = (16, 18, 20)  # (z, y, x)


def smooth_fields(rng, n, sigma_zyx, shape=SHAPE):
    return np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sigma_zyx) for _ in range(n)])


def test_lag1_of_gaussian_noise_is_exp_minus_quarter_over_sigma_squared():
    rng = np.random.default_rng(0)
    sigma = (2.0, 1.5, 1.2)
    fields = smooth_fields(rng, 30, sigma)
    mask = np.ones(SHAPE, dtype=bool)
    mask[:, :, :3] = False  # a mask with holes still pairs only in-mask neighbours
    rho = lag1_correlation(lag1_sums(fields[:, mask], mask))
    expected = np.exp(-1.0 / (4.0 * np.square(sigma)))
    np.testing.assert_allclose(rho, expected, atol=0.01)


def test_block_sums_add_up_to_the_whole_image():
    rng = np.random.default_rng(1)
    fields = smooth_fields(rng, 20, 1.0)
    mask = np.ones(SHAPE, dtype=bool)
    whole = lag1_correlation(lag1_sums(fields.reshape(20, -1), mask))
    halves = sum(
        lag1_sums(fields[:, part].reshape(20, -1), mask[part]) for part in (np.s_[:8], np.s_[8:])
    )
    # standardisation is per voxel, so halves see the same residuals; only 1 of 15 z-pair
    # planes is lost at the seam
    np.testing.assert_allclose(lag1_correlation(halves), whole, atol=0.01)


def test_residual_sums_see_the_noise_not_the_design():
    rng = np.random.default_rng(2)
    n_scans = 120
    x = np.column_stack([np.sin(np.arange(n_scans) / 5.0), rng.normal(size=n_scans)])
    noise = smooth_fields(rng, n_scans, 1.0)
    mask = np.ones(SHAPE, dtype=bool)
    beta = rng.normal(scale=20.0, size=(2, mask.sum()))  # spatially white, large signal
    y = noise.reshape(n_scans, -1) + x @ beta
    of_residuals = lag1_correlation(residual_lag1_sums(y, x, mask))
    of_noise = lag1_correlation(lag1_sums(noise.reshape(n_scans, -1), mask))
    of_data = lag1_correlation(lag1_sums(y - y.mean(0), mask))
    np.testing.assert_allclose(of_residuals, of_noise, atol=0.02)
    assert np.all(of_data < of_noise - 0.3)  # the white signal would hide the noise's


def test_bad_shapes_are_named():
    mask = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        lag1_sums(np.zeros((3, 10)), mask)
    with pytest.raises(ValueError, match="3-D"):
        lag1_sums(np.zeros((3, 16)), np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="design has 5 rows"):
        residual_lag1_sums(np.zeros((6, 64)), np.zeros((5, 1)), mask)


def _rotated_points(angle: float, shift: float) -> np.ndarray:
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    axes = [np.linspace(-22, 22, 12), np.linspace(-22, 22, 12), np.linspace(-18, 18, 10)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid @ rot.T + shift


def test_resampled_variance_equals_the_variance_of_resampled_effects():
    """Monte Carlo: 400 smooth noise fields with a spatially varying SD, each resampled
    trilinearly onto a rotated, shifted grid; the pointwise variance across fields is what
    kind="variance" with the noise's lag-1 correlation predicts (interpolating the variance
    map instead overstates it)."""
    rng = np.random.default_rng(3)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -36.0
    fields = smooth_fields(rng, 400, (0.9, 0.7, 0.5))
    fields *= 1.0 + np.linspace(0.0, 1.0, SHAPE[2])  # SD grows along x
    variance = fields.var(axis=0)
    lag1_zyx = lag1_correlation(lag1_sums(fields.reshape(400, -1), np.ones(SHAPE, dtype=bool)))
    points = _rotated_points(0.3, 0.7)
    resampled = np.stack([sample_at_points(f, affine, points, "effect") for f in fields])
    empirical = resampled.var(axis=0)
    propagated = sample_at_points(variance, affine, points, "variance", noise_lag1=lag1_zyx[::-1])
    interpolated = sample_at_points(variance, affine, points, "variance")
    ratio = propagated / empirical
    assert abs(ratio.mean() - 1.0) < 0.03 and ratio.std() < 0.1, (ratio.mean(), ratio.std())
    assert (interpolated / empirical).mean() > 1.4


def test_on_grid_points_keep_their_variance_and_outside_gets_fill():
    rng = np.random.default_rng(4)
    variance = rng.uniform(1.0, 2.0, size=SHAPE).astype(np.float32)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    idx = np.array([[2, 3, 4], [0, 0, 0], [19, 17, 15]], dtype=float)  # (x, y, z) voxels
    outside = np.array([[-5.0, 0.0, 0.0], [0.0, 0.0, 100.0]])
    points = np.vstack([idx * 3.0, outside])
    out = sample_at_points(variance, affine, points, "variance", fill=np.nan, noise_lag1=[0.5] * 3)
    expected = [variance[int(k), int(j), int(i)] for i, j, k in idx]
    np.testing.assert_allclose(out[:3], expected, rtol=1e-6)
    assert np.isnan(out[3:]).all()


def test_a_midpoint_of_white_noise_has_the_textbook_variance():
    """Halfway between two voxels along x with independent noise: (v0 + v1) / 4."""
    variance = np.zeros((1, 1, 2), dtype=np.float32)
    variance[0, 0] = (1.0, 3.0)
    out = sample_at_points(variance, np.eye(4), [[0.5, 0.0, 0.0]], "variance", noise_lag1=[0, 0, 0])
    np.testing.assert_allclose(out, [1.0], rtol=1e-6)
    full = sample_at_points(
        variance, np.eye(4), [[0.5, 0.0, 0.0]], "variance", noise_lag1=[0.99, 0, 0]
    )
    np.testing.assert_allclose(full, [0.25 * (1 + 3 + 2 * 0.99 * np.sqrt(3))], rtol=1e-6)


@pytest.mark.parametrize("bad", [[0.5, 0.5], [1.0, 0.2, 0.2], [np.nan, 0.1, 0.1]])
def test_bad_lag1_is_refused_with_how_to_fix(bad):
    with pytest.raises(ValueError, match="noise_lag1 must be three finite correlations"):
        sample_at_points(np.ones((2, 2, 2)), np.eye(4), [[0.5, 0.5, 0.5]], "variance",
                         noise_lag1=bad)  # fmt: skip


def test_a_run_combines_its_blocks_and_older_records_give_none():
    """glm_maps sums the blocks' (z, y, x) sums and reports (x, y, z); a block record written
    before the sums existed (a dry run over an older store) gives None, not an error."""
    from infra.stages.statmaps import noise_lag1_xyz

    block = [[1.0, 2.0, 2.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    assert noise_lag1_xyz([block, block]) == [0.25, 0.5, 0.5]
    assert noise_lag1_xyz([block, None]) is None and noise_lag1_xyz([]) is None
