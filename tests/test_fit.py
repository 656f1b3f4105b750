"""The per-block first-level entry points: noise-model choice and the maps a contrast yields."""

import numpy as np
import pytest

from processing.firstlevel.fit import contrast_maps, fit_noise_model
from processing.firstlevel.glm import fit_ar1, fit_ols
from processing.firstlevel.model import Contrast


def _data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 3))
    x -= x.mean(axis=0)
    y = x @ np.array([[2.0], [0.0], [-1.0]]) + rng.normal(size=(120, 50))
    return y, x


def test_models_without_correction_are_the_plain_kernels():
    y, x = _data()
    np.testing.assert_array_equal(fit_noise_model("ols", y, x).beta, fit_ols(y, x).beta)
    plain = fit_noise_model("ar1", y, x, bias_correction=False)
    np.testing.assert_array_equal(plain.beta, fit_ar1(y, x).beta)
    with pytest.raises(ValueError, match="needs the block's smoothed autocorrelation"):
        fit_noise_model("film", y, x)
    with pytest.raises(ValueError, match="got 'ar2'"):
        fit_noise_model("ar2", y, x)


def test_contrast_maps_names_and_undefined_contrasts():
    y, x = _data()
    fit = fit_noise_model("ols", y, x)
    contrasts = [
        Contrast("aVsC", ("a", "c"), ((1.0, -1.0),)),
        Contrast("any", ("a", "b"), ((1.0, 0.0), (0.0, 1.0)), "F"),
        Contrast("onlyD", ("d",), ((1.0,),)),
    ]
    names, maps, undefined = contrast_maps(fit, contrasts, ["a", "b", "c"], {"d": "no events"})
    assert names == [
        "sigmasquared",
        "aVsC:effect",
        "aVsC:variance",
        "aVsC:t",
        "aVsC:z",
        "any:F",
        "any:z",
    ]
    assert undefined == {"onlyD": "contrast 'onlyD' needs 'd': no events"}
    np.testing.assert_allclose(maps[1], fit.beta[0] - fit.beta[2])
    assert maps[3].mean() > 10  # the planted a - c = 3 is found


def test_ar1_with_bias_correction_needs_the_autocorrelation():
    y, x = _data()
    with pytest.raises(ValueError, match="'ar1' with bias_correction=True needs the block's"):
        fit_noise_model("ar1", y, x)


def test_ar1_sandwich_equals_the_dense_formula():
    """Per-lag terms reproduce ``s2 Q'VQ`` and ``RSS / tr(W'RWV)`` computed with dense V."""
    from scipy.linalg import toeplitz

    from processing.firstlevel.ar1_sandwich import sandwich_covariance

    _, x = _data()
    rng = np.random.default_rng(4)
    acf = 0.4 * 0.6 ** np.arange(5)[:, None] + 0.02 * rng.normal(size=(5, 3))
    rss = rng.uniform(50, 150, 3)
    inv_gram, sigma2 = sandwich_covariance(x, 0.3, acf, rss, np.eye(3), np.ones(3))
    n = x.shape[0]
    w = np.eye(n) - 0.3 * np.eye(n, k=-1)
    z_pinv = np.linalg.pinv(w @ x)
    q = w.T @ z_pinv.T
    resid = w.T @ (np.eye(n) - w @ x @ z_pinv) @ w
    for v in range(3):
        dense = toeplitz(np.r_[1.0, acf[:, v], np.zeros(n - 6)])
        np.testing.assert_allclose(inv_gram[v], q.T @ dense @ q, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(sigma2[v], rss[v] / np.trace(resid @ dense), rtol=1e-10)
