"""High-pass (FSL -bptf), Gaussian smoothing in mm and grand-mean scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

from processing.preprocess.highpass import highpass_fsl, highpass_matrix, highpass_sigma_volumes
from processing.preprocess.scaling import grand_mean_scale, grand_median
from processing.preprocess.smoothing import smooth_mm

# --------------------------------------------------------------------------- high-pass


def direct_bptf(series: np.ndarray, sigma: float) -> np.ndarray:
    """FSL's running-line high-pass straight from its definition, one time point at a time.

    For each t: weighted least squares of ``y_s = a + b (s - t)`` over the window
    ``max(0, t - W) .. min(n - 1, t + W)``, ``W = floor(3 sigma)``, weights
    ``exp(-(s - t)^2 / (2 sigma^2))``; output ``y_t - a``. Solved with lstsq on sqrt-weighted rows.
    """
    n = series.shape[0]
    half = math.floor(3 * sigma)
    out = np.empty_like(series, dtype=np.float64)
    for t in range(n):
        window = np.arange(max(0, t - half), min(n - 1, t + half) + 1)
        tau = (window - t).astype(np.float64)
        root_w = np.sqrt(np.exp(-(tau**2) / (2 * sigma**2)))
        design = np.column_stack([np.ones_like(tau), tau]) * root_w[:, None]
        coef, *_ = np.linalg.lstsq(design, series[window] * root_w[:, None], rcond=None)
        out[t] = series[t] - coef[0]
    return out


@pytest.mark.parametrize(
    ("n", "tr", "cutoff"), [(188, 1.28, 100.0), (60, 2.0, 30.0), (25, 2.0, 90)]
)
def test_highpass_matches_direct_loop(n, tr, cutoff):
    rng = np.random.default_rng(n)
    data = rng.normal(100.0, 5.0, (n, 6)) + np.linspace(0, 20, n)[:, None]
    sigma = highpass_sigma_volumes(tr, cutoff)
    expected = direct_bptf(data, sigma)
    got = highpass_fsl(data, tr, cutoff, add_mean=False)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # run ends included: compare them alone too
    np.testing.assert_allclose(got[[0, 1, -2, -1]], expected[[0, 1, -2, -1]], rtol=1e-6, atol=1e-9)
    with_mean = highpass_fsl(data, tr, cutoff, add_mean=True)
    np.testing.assert_allclose(with_mean, expected + data.mean(axis=0), rtol=1e-6)


def test_highpass_on_a_4d_run_and_other_axes():
    rng = np.random.default_rng(3)
    run = rng.normal(1000, 10, (40, 3, 4, 5)).astype(np.float32)
    out = highpass_fsl(run, 2.0, 50.0)
    assert out.dtype == np.float32 and out.shape == run.shape
    expected = direct_bptf(run.reshape(40, -1).astype(np.float64), 12.5) + run.reshape(40, -1).mean(
        0
    )
    np.testing.assert_allclose(out.reshape(40, -1), expected, rtol=1e-6)
    moved = highpass_fsl(np.moveaxis(run, 0, -1), 2.0, 50.0, axis=-1)
    np.testing.assert_allclose(np.moveaxis(moved, -1, 0), out, rtol=1e-6)


def test_highpass_removes_linear_trend_exactly():
    n = 150
    t = np.arange(n, dtype=np.float64)
    data = np.column_stack([3.0 + 0.5 * t, -2.0 - 0.01 * t, np.full(n, 7.0)])
    kept = highpass_fsl(data, 2.0, 100.0, add_mean=True)
    np.testing.assert_allclose(kept, np.broadcast_to(data.mean(0), data.shape), atol=1e-9)
    np.testing.assert_allclose(highpass_fsl(data, 2.0, 100.0, add_mean=False), 0.0, atol=1e-9)


def test_highpass_passes_high_frequencies_and_blocks_drift():
    n, tr = 200, 2.0
    t = np.arange(n) * tr
    fast = np.sin(2 * np.pi * t / 8.0)  # 8 s period, far above the 100 s cutoff
    out = highpass_fsl(fast[:, None], tr, 100.0, add_mean=False)[:, 0]
    assert np.sum(out * fast) / np.sum(fast * fast) == pytest.approx(1.0, abs=0.005)  # gain
    assert np.max(np.abs(out - fast)[20:-20]) < 0.015  # the 3-sigma truncation leaks ~1 %
    assert np.max(np.abs(out - fast)) < 0.06  # the run ends are fitted from one side
    slow = np.sin(2 * np.pi * t / 1000.0)  # 1000 s period: mostly removed
    assert np.std(highpass_fsl(slow, tr, 100.0, add_mean=False)) < 0.1 * np.std(slow)


def test_highpass_filters_design_matrices_column_by_column():
    rng = np.random.default_rng(5)
    design = rng.normal(size=(120, 4))
    out = highpass_fsl(design, 1.5, 60.0, add_mean=False)
    assert out.dtype == np.float64 and out.shape == design.shape
    for column in range(4):
        single = highpass_fsl(design[:, column], 1.5, 60.0, add_mean=False)
        np.testing.assert_allclose(out[:, column], single, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, highpass_matrix(120, 20.0) @ design, atol=1e-12)


def test_highpass_sigma_and_edge_cases():
    assert highpass_sigma_volumes(1.28, 100.0) == pytest.approx(39.0625)
    assert round(highpass_sigma_volumes(1.28, 100.0), 2) == 39.06
    data = np.random.default_rng(0).normal(size=(30, 3))
    for no_filter in (None, math.inf):
        np.testing.assert_array_equal(highpass_fsl(data, 2.0, no_filter), data)
    # window wider than the run: every fit is the same (weights ~ 1) -> a linear detrend
    wide = highpass_fsl(data, 2.0, 1e7, add_mean=False)
    np.testing.assert_allclose(wide, signal.detrend(data, axis=0), atol=1e-8)
    # sigma < 1/3 volume: W = 0, a single sample cannot define a line; left unchanged
    np.testing.assert_allclose(highpass_fsl(data, 2.0, 1.0, add_mean=False), data)
    np.testing.assert_allclose(highpass_matrix(1, 5.0), [[1.0]])


@pytest.mark.parametrize("cutoff", [0.0, -100.0])
def test_highpass_rejects_bad_cutoff(cutoff):
    with pytest.raises(ValueError, match="cutoff_s must be > 0"):
        highpass_fsl(np.zeros((10, 2)), 2.0, cutoff)


def test_highpass_rejects_bad_tr_and_nan():
    with pytest.raises(ValueError, match="tr_s"):
        highpass_fsl(np.zeros((10, 2)), 0.0, 100.0)
    data = np.zeros((10, 4))
    data[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        highpass_fsl(data, 2.0, 100.0)
    with pytest.raises(ValueError, match="axis"):
        highpass_fsl(data, 2.0, 100.0, axis=2)


# --------------------------------------------------------------------------- smoothing


def affine_for(sizes_xyz, angle_deg=0.0):
    """Voxel -> mm affine with the given voxel sizes, optionally rotated about z."""
    angle = math.radians(angle_deg)
    rot = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(sizes_xyz)
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    return affine


def measured_fwhm_mm(volume, sizes_zyx):
    """FWHM along each axis (z, y, x) from the second moment of the marginal profiles."""
    total = volume.sum()
    fwhm = []
    for axis, size in enumerate(sizes_zyx):
        others = tuple(a for a in range(3) if a != axis)
        profile = volume.sum(axis=others) / total
        pos = np.arange(volume.shape[axis]) * size
        centre = (profile * pos).sum()
        fwhm.append(
            2 * math.sqrt(2 * math.log(2)) * math.sqrt((profile * (pos - centre) ** 2).sum())
        )
    return np.array(fwhm)


@pytest.mark.parametrize(
    ("sizes_xyz", "angle"),
    [((1.0, 1.0, 1.0), 0.0), ((2.0, 2.0, 3.3), 0.0), ((2.0, 2.5, 3.3), 30.0)],
)
def test_point_source_fwhm(sizes_xyz, angle):
    shape = (25, 31, 33)
    point = np.zeros(shape, dtype=np.float32)
    point[12, 15, 16] = 1.0
    smoothed = smooth_mm(point, affine_for(sizes_xyz, angle), 5.0)
    assert smoothed.dtype == np.float32
    error = measured_fwhm_mm(smoothed, sizes_xyz[::-1]) / 5.0 - 1.0
    assert np.all(np.abs(error) < 0.05), f"FWHM errors (z, y, x): {error}"
    assert smoothed.sum(dtype=np.float64) == pytest.approx(1.0, rel=1e-3)


def test_point_source_half_maximum_width():
    """Independent of moments: width at half maximum by interpolation, 1 mm voxels."""
    point = np.zeros((41, 41, 41), dtype=np.float32)
    point[20, 20, 20] = 1.0
    profile = smooth_mm(point, affine_for((1.0, 1.0, 1.0)), 6.0)[20, 20, :].astype(np.float64)
    half = profile.max() / 2
    right = 20 + np.flatnonzero(profile[20:] < half)[0]
    fraction = (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    width = 2 * (right - 1 + fraction - 20)
    assert width == pytest.approx(6.0, rel=0.05)


def test_matches_nilearn_away_from_edges():
    import nibabel as nib
    from nilearn.image import smooth_img

    rng = np.random.default_rng(1)
    volume = rng.normal(size=(20, 24, 22)).astype(np.float32)
    affine = affine_for((2.0, 2.5, 3.3), 20.0)
    ours = smooth_mm(volume, affine, 6.0)
    theirs = smooth_img(nib.Nifti1Image(volume.T, affine), 6.0).get_fdata().T
    inner = (slice(6, -6), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-5)


def test_mask_keeps_constant_up_to_edge_and_zero_outside():
    shape = (20, 26, 24)
    grid = np.indices(shape)
    centre = (np.array(shape) / 2)[:, None, None, None]
    semi = np.array([7.0, 10.0, 9.0])[:, None, None, None]
    mask = (((grid - centre) / semi) ** 2).sum(axis=0) <= 1
    data = np.full((3, *shape), 7.0, dtype=np.float32)
    affine = affine_for((2.0, 2.0, 3.3))
    out = smooth_mm(data, affine, 8.0, mask=mask)
    np.testing.assert_allclose(out[:, mask], 7.0, rtol=1e-5)
    assert np.all(out[:, ~mask] == 0)
    # the check has teeth: plain smoothing of the masked image fades at the edge
    plain = smooth_mm(data * mask, affine, 8.0)
    assert plain[:, mask].min() < 6.0


def test_smoothing_stack_equals_per_volume():
    rng = np.random.default_rng(2)
    volume = rng.normal(size=(8, 9, 10)).astype(np.float32)
    scales = np.arange(1, 21, dtype=np.float32)  # 20 volumes: more than one block
    stack = scales[:, None, None, None] * volume
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1:-1, 2:-1, 1:-2] = True
    affine = affine_for((3.0, 3.0, 3.3))
    single = smooth_mm(volume, affine, 5.0, mask=mask)
    out = smooth_mm(stack, affine, 5.0, mask=mask)
    np.testing.assert_allclose(out, scales[:, None, None, None] * single, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(smooth_mm(volume, affine, 0.0, mask=mask), volume * mask)


def test_smoothing_bad_inputs():
    volume = np.ones((5, 6, 7), dtype=np.float32)
    affine = np.eye(4)
    with pytest.raises(ValueError, match="fwhm_mm"):
        smooth_mm(volume, affine, -1.0)
    with pytest.raises(ValueError, match="mask shape"):
        smooth_mm(volume, affine, 4.0, mask=np.ones((5, 6, 6), dtype=bool))
    bad = volume.copy()
    bad[2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        smooth_mm(bad, affine, 4.0)


# --------------------------------------------------------------------------- scaling


def test_grand_mean_scaling_hits_target():
    rng = np.random.default_rng(4)
    run = rng.gamma(5.0, 80.0, (9, 6, 7, 8)).astype(np.float32)
    mask = rng.random((6, 7, 8)) > 0.4
    scaled, factor = grand_mean_scale(run, mask)
    assert scaled.dtype == np.float32 and scaled.shape == run.shape
    assert factor == pytest.approx(10000.0 / np.median(run[:, mask]), rel=1e-12)
    assert np.median(scaled[:, mask]) == pytest.approx(10000.0, rel=1e-6)
    np.testing.assert_allclose(scaled, run * factor, rtol=1e-6)  # one factor, whole run
    by_mean, factor_mean = grand_mean_scale(run, mask, target=100.0, over="temporal_mean")
    assert np.median(by_mean[:, mask].mean(axis=0)) == pytest.approx(100.0, rel=1e-6)
    assert factor_mean != pytest.approx(factor / 100.0, rel=1e-6)  # the two medians differ
    assert grand_median(run, mask) == pytest.approx(10000.0 / factor)


def test_scaling_bad_inputs():
    run = np.ones((4, 3, 3, 3), dtype=np.float32)
    mask = np.ones((3, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="mask shape"):
        grand_mean_scale(run, np.ones((3, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        grand_mean_scale(run, ~mask)
    with pytest.raises(ValueError, match="target"):
        grand_mean_scale(run, mask, target=0.0)
    with pytest.raises(ValueError, match="median is 0"):
        grand_mean_scale(run * 0, mask)
    bad = run.copy()
    bad[1, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        grand_mean_scale(bad, mask)
