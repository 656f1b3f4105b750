"""Cluster tables (FSL ``cluster`` conventions) and spherical ROIs with featquery PSC."""

import numpy as np
import pytest
from scipy import ndimage

from processing.geometry import apply_affine
from processing.group.clusters import cluster_table, label_clusters
from processing.group.roi import percent_signal_change, roi_psc, sphere_mask, sphere_masks

MNI2 = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _blob(shape, center, sigma):
    out = np.zeros(shape)
    out[center] = 1.0
    out = ndimage.gaussian_filter(out, sigma)
    return out / out.max()


def test_cluster_table_peaks_sizes_cog_and_fsl_ordering():
    shape = (30, 32, 28)
    big = 5.0 * _blob(shape, (10, 12, 14), 2.0)
    small = 4.0 * _blob(shape, (22, 24, 10), 1.2)
    neg = -4.5 * _blob(shape, (20, 8, 20), 1.5)
    z = big + small + neg
    res = cluster_table(z, MNI2, threshold=2.3, p_threshold=None)
    t = res.table
    pos = t[t.side == "positive"]
    assert list(pos.cluster) == [2, 1]  # largest first, with the highest index (FSL)
    assert pos.voxels.iloc[0] == np.sum(big > 2.3) and pos.voxels.iloc[1] == np.sum(small > 2.3)
    assert pos.volume_mm3.iloc[0] == 8 * pos.voxels.iloc[0]
    peak = apply_affine(MNI2, np.array([10.0, 12, 14]))
    np.testing.assert_allclose(pos[["peak_x_mm", "peak_y_mm", "peak_z_mm"]].iloc[0], peak)
    np.testing.assert_allclose(pos[["cog_x_mm", "cog_y_mm", "cog_z_mm"]].iloc[0], peak, atol=0.05)
    assert pos.peak_z.iloc[0] == pytest.approx(5.0)
    negrow = t[t.side == "negative"].iloc[0]
    assert negrow.peak_z == pytest.approx(-4.5) and negrow.voxels == np.sum(neg < -2.3)
    assert np.isnan(negrow.p_fwe)
    idx = res.index_maps["positive"]
    assert idx[10, 12, 14] == 2 and idx[22, 24, 10] == 1 and idx[0, 0, 0] == 0
    assert res.index_maps["negative"][20, 8, 20] == 1


def test_cope_columns_locate_the_effect_peak_and_mean_as_fsl_cluster_cope():
    shape = (30, 32, 28)
    z = 5.0 * _blob(shape, (10, 12, 14), 2.0) - 4.5 * _blob(shape, (20, 8, 20), 1.5)
    cope = 80.0 * _blob(shape, (11, 13, 14), 2.5) - 60.0 * _blob(shape, (19, 8, 21), 2.0)
    res = cluster_table(z, MNI2, threshold=2.3, p_threshold=None, cope=cope)
    t = res.table.set_index("side")
    pos, neg = t.loc["positive"], t.loc["negative"]
    assert pos.cope_max == pytest.approx(80.0, rel=1e-3)  # the other blob's tail adds a little
    assert neg.cope_max == pytest.approx(-60.0, rel=1e-3)
    np.testing.assert_allclose(
        pos[["cope_max_x_mm", "cope_max_y_mm", "cope_max_z_mm"]].to_numpy(dtype=float),
        apply_affine(MNI2, np.array([11.0, 13, 14])),
    )
    np.testing.assert_allclose(
        neg[["cope_max_x_mm", "cope_max_y_mm", "cope_max_z_mm"]].to_numpy(dtype=float),
        apply_affine(MNI2, np.array([19.0, 8, 21])),
    )
    assert pos.cope_mean == pytest.approx(cope[z > 2.3].mean())
    assert neg.cope_mean == pytest.approx(cope[z < -2.3].mean())
    without = cluster_table(z, MNI2, threshold=2.3, p_threshold=None).table
    assert without.cope_max.isna().all() and without.cope_mean.isna().all()
    with pytest.raises(ValueError, match=r"cope map shape \(2, 2, 2\)"):
        cluster_table(z, MNI2, cope=np.zeros((2, 2, 2)))


def test_local_maxima_are_at_least_8_mm_apart_and_p_values_come_from_the_null():
    shape = (22, 20, 20)
    z = np.zeros(shape)
    z[5:16, 10, 10] = 2.6  # a ridge joins three peaks into one cluster
    z += 5.0 * _blob(shape, (6, 10, 10), 1.0) + 4.5 * _blob(shape, (14, 10, 10), 1.0)
    z += 3.5 * _blob(shape, (9, 10, 10), 0.6)  # a local maximum 6 mm from the top peak: dropped
    res = cluster_table(z, MNI2, sides=("positive",), null_max={"positive": [400, 10, 30, 90]})
    assert len(res.table) == 1
    lm = res.local_maxima
    np.testing.assert_array_equal(lm.i, [6, 14])
    pts = lm[["x_mm", "y_mm", "z_mm"]].to_numpy()
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    assert np.all(dist[np.triu_indices(len(pts), 1)] >= 8.0)
    assert lm.z.iloc[0] == pytest.approx(res.table.peak_z.iloc[0])
    size = res.table.voxels.iloc[0]
    expected = np.mean(np.array([400, 10, 30, 90]) >= size)
    assert res.table.p_fwe.iloc[0] == pytest.approx(expected)
    keep = res.table.p_fwe.iloc[0] <= 0.05
    assert np.any(res.thresholded["positive"]) == keep


def test_a_map_without_clusters_gives_empty_tables():
    res = cluster_table(np.zeros((5, 5, 5)), MNI2, null_max={"positive": [3, 1]})
    assert res.table.empty and res.local_maxima.empty
    assert not res.thresholded["positive"].any() and not res.index_maps["negative"].any()


def test_label_clusters_connectivity():
    vol = np.zeros((4, 4, 4))
    vol[1, 1, 1] = vol[2, 2, 2] = 3.0  # corner neighbours
    assert label_clusters(vol, 2.3, connectivity=26)[1] == 1
    assert label_clusters(vol, 2.3, connectivity=6)[1] == 2
    with pytest.raises(ValueError, match="connectivity"):
        label_clusters(vol, 2.3, connectivity=8)


def test_sphere_sizes_and_errors():
    shape = (40, 40, 40)
    center = apply_affine(MNI2, np.array([20.0, 20, 20]))
    assert sphere_mask(center, MNI2, shape, 4.0).sum() == 7  # peak voxel + 6 face neighbours
    one_mm = np.diag([1.0, 1, 1, 1])
    assert sphere_mask([20, 20, 20], one_mm, shape, 4.0).sum() == 33
    m = sphere_masks({"a": center, "b": center + np.array([0.0, 20, 0])}, MNI2, shape)
    assert not np.any(m["a"] & m["b"])
    with pytest.raises(ValueError, match="outside the grid"):
        sphere_mask([500, 0, 0], MNI2, shape)


def test_roi_psc_recovers_planted_percent_signal_change():
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    roi = sphere_mask(apply_affine(MNI2, np.array([6.0, 6, 6])), MNI2, shape, 4.0)
    truth = rng.normal(1.0, 0.3, size=5)  # % signal change per subject
    peak = rng.uniform(0.5, 1.5, size=5)
    mean = rng.uniform(8000, 12000, size=(5, *shape))
    effects = truth[:, None, None, None] * mean / (100 * peak[:, None, None, None])
    np.testing.assert_allclose(roi_psc(effects, mean, peak, roi), truth, rtol=1e-12)
    assert np.isnan(percent_signal_change(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="resample"):
        roi_psc(effects[:, :6], mean[:, :6], peak, roi)
