"""GRF cluster inference: smoothness of known kernels and FEAT's cluster p formula."""

import numpy as np
import pytest
from scipy import ndimage, special, stats

from processing.group.grf import estimate_smoothness, grf_cluster_p, ols_residuals


def test_smoothness_of_gaussian_smoothed_noise():
    rng = np.random.default_rng(0)
    shape, fwhm = (36, 36, 30), np.array([3.0, 4.0, 3.0])
    sigma = fwhm / np.sqrt(8 * np.log(2))
    data = ndimage.gaussian_filter(rng.normal(size=(12, *shape)), (0, *sigma), mode="wrap")
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    sm = estimate_smoothness(ols_residuals(data[:, mask], np.ones((12, 1))), mask)
    np.testing.assert_allclose(sm.fwhm_voxels, fwhm, rtol=0.08)
    assert sm.dlh == pytest.approx((4 * np.log(2)) ** 1.5 / np.prod(sm.fwhm_voxels))
    np.testing.assert_allclose(sm.fwhm_mm(np.diag([2.0, 2, 2, 1])), 2 * sm.fwhm_voxels)


def test_grf_cluster_p_formula_and_monotonicity():
    u, dlh, vol = 2.3, 0.05, 200000.0
    em = vol * dlh * (u**2 - 1) * np.exp(-(u**2) / 2) / (2 * np.pi) ** 2
    en = vol * stats.norm.sf(u)
    beta = (special.gamma(2.5) * em / en) ** (2 / 3)
    p = grf_cluster_p([10, 100, 1000], u, dlh, vol)
    np.testing.assert_allclose(
        p, 1 - np.exp(-em * np.exp(-beta * np.array([10, 100, 1000]) ** (2 / 3)))
    )
    assert np.all(np.diff(p) < 0) and p[-1] < 1e-3 and p[0] > 0.5
    with pytest.raises(ValueError, match="threshold above 1"):
        grf_cluster_p([10], 0.5, dlh, vol)
