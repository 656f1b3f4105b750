"""FSL double-gamma HRF and event convolution."""

from __future__ import annotations

import numpy as np
import pytest
from nilearn.glm.first_level.hemodynamic_models import spm_hrf

from processing.firstlevel.hrf import convolve_events, double_gamma_hrf


def test_kernel_grid_and_peak():
    kernel = double_gamma_hrf()
    assert kernel.shape == (720,)  # 36 s at 0.05 s
    t = np.arange(720) * 0.05
    assert 4.5 < t[np.argmax(kernel)] < 5.5  # SPM canonical HRF peaks at ~5 s
    assert kernel.min() < 0  # undershoot
    assert 14 < t[np.argmin(kernel)] < 17


def test_matches_nilearn_spm_hrf_shape():
    ours = double_gamma_hrf(dt=0.05, length=32.0)
    theirs = spm_hrf(t_r=1.0, oversampling=20, time_length=32.0)
    t_theirs = np.linspace(0, 32.0, theirs.size) - 0.05  # nilearn shifts by loc=dt
    resampled = np.interp(np.arange(ours.size) * 0.05, t_theirs, theirs)
    assert np.corrcoef(ours, resampled)[0, 1] > 0.999


def test_long_boxcar_plateaus_at_one():
    reg = convolve_events([10.0], [200.0], [1.0], n_scans=200, tr=1.28)
    times = (np.arange(200) + 0.5) * 1.28
    plateau = reg[(times > 60) & (times < 200)]
    np.testing.assert_allclose(plateau, 1.0, atol=1e-3)
    assert abs(reg[times < 10]).max() == 0


def test_amplitude_linearity_and_mid_volume_sampling():
    one = convolve_events([5.0, 40.0], [10.0, 10.0], 1.0, n_scans=60, tr=2.0)
    two = convolve_events([5.0, 40.0], [10.0, 10.0], [2.0, 2.0], n_scans=60, tr=2.0)
    np.testing.assert_allclose(two, 2 * one)
    # an event starting at 0 has a response at the first mid-volume time (t = 0.5 TR)
    early = convolve_events([0.0], [1.0], [1.0], n_scans=10, tr=2.0)
    assert early[0] > 0


def test_bad_events_name_the_problem():
    with pytest.raises(ValueError, match="durations"):
        convolve_events([1.0], [-1.0], [1.0], n_scans=10, tr=2.0)
    with pytest.raises(ValueError, match="same length"):
        convolve_events([1.0, 2.0], [1.0, 1.0, 1.0], [1.0], n_scans=10, tr=2.0)
