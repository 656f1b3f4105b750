"""Group chain on the simulator's planted rTPJ effect: paired FLAME1, permutation clusters, ROI.

Subject effect maps (% signal change) are built from the simulator's planted amplitudes and blobs
on a 2 mm MNI box around the rTPJ, plus smooth noise; the paired post < pre test must find one
significant cluster and nothing else, with its peak or one of its listed local maxima (FSL's
``--olmax``, 8 mm apart) within 6 mm of the planted centre (the planted change is a broad 15 mm
blob, so the global peak of its flat top wanders with the noise), and the ROI change at the
cluster peak must correlate with the PROMIS pain change with the planted (positive) sign.
"""

import numpy as np
import pandas as pd
from scipy import ndimage

from processing.group.clinical import correlate
from processing.group.clusters import cluster_table
from processing.group.designs import one_sample_design, paired_differences
from processing.group.flame import flame1, ols
from processing.group.permutation import (
    cluster_forming_t,
    make_permutations,
    permutation_batch,
)
from processing.group.roi import roi_psc, sphere_mask
from processing.simulate.effects import effect_maps, mni_blobs
from processing.simulate.phenotype import clinical_scores
from processing.simulate.planting import plant_amplitudes
from processing.simulate.specs import stream

RTPJ = np.array([56.0, -44.0, 30.0])


def test_planted_post_pre_rtpj_effect_is_found_and_its_roi_tracks_pain_change():
    seed, n_all = 3, 20
    post_missing = np.zeros(n_all, bool)
    post_missing[[3, 11]] = True
    clinical = clinical_scores(stream(seed, "clinical"), n_all, post_missing)
    usable = ~post_missing
    usable[[1, 5, 9, 13]] = False  # 14 subjects with usable pre and post imaging
    planted = plant_amplitudes(seed, clinical, usable)
    affine = np.array([[2.0, 0, 0, 28], [0, 2, 0, -72], [0, 0, 2, 2], [0, 0, 0, 1]])
    shape = (30, 28, 28)  # x 28..86, y -72..-18, z 2..56 mm
    blobs = mni_blobs(affine, shape)
    rng = np.random.default_rng(seed)
    subjects = np.nonzero(usable)[0]
    maps = {}
    for ses in ("pre", "post"):
        maps[ses] = np.stack(
            [effect_maps(blobs, planted.amplitudes[i], shape, ses)["P40"] for i in subjects]
        )
        noise = ndimage.gaussian_filter(rng.normal(size=maps[ses].shape), (0, 1.0, 1.0, 1.0))
        maps[ses] = maps[ses] + 0.3 * noise / noise.std()
    n = subjects.size
    var = np.full((n, *shape), 0.02)
    diff, dvar = paired_differences(
        maps["pre"].reshape(n, -1),
        var.reshape(n, -1),
        maps["post"].reshape(n, -1),
        var.reshape(n, -1),
    )
    design = one_sample_design(n, kind="paired")
    fit = flame1(diff, dvar, design, "-mean")  # post < pre
    assert fit.z.reshape(shape).max() > 3.0
    # permutation cluster inference on the OLS t, randomise style
    perms = make_permutations(n, 200, seed=0)
    mask = np.ones(shape, bool)
    null = permutation_batch(diff, design, "-mean", perms, mask)
    t_ols = ols(diff, design, "-mean")
    res = cluster_table(
        t_ols.z.reshape(shape),
        affine,
        sides=("positive",),
        null_max={"positive": null["max_extent"]},
        mass_map=t_ols.t.reshape(shape),
        mass_threshold=cluster_forming_t(2.3, n - 1),
    )
    sig = res.table[res.table.p_fwe <= 0.05]
    assert len(sig) == 1
    peak = sig[["peak_x_mm", "peak_y_mm", "peak_z_mm"]].to_numpy()[0]
    maxima = res.local_maxima[res.local_maxima.cluster == sig.cluster.iloc[0]]
    listed = maxima[["x_mm", "y_mm", "z_mm"]].to_numpy()
    assert np.isclose(listed[0], peak).all()  # the peak is the first local maximum
    assert np.linalg.norm(listed - RTPJ, axis=1).min() <= 6.0
    # 4 mm ROI at the peak: post - pre PSC tracks the planted clinical correlation
    roi = sphere_mask(peak, affine, shape, 4.0)
    mean_func = np.full(shape, 10000.0)
    psc = {
        ses: roi_psc(maps[ses] * 10000.0 / 100.0, mean_func, 1.0, roi) for ses in ("pre", "post")
    }
    change = pd.Series(psc["post"] - psc["pre"])
    pain = clinical["promis_pain_intensity_post"] - clinical["promis_pain_intensity_pre"]
    res_r = correlate(change.to_numpy(), pain[subjects])
    assert res_r["n"] == n and res_r["r"] > 0.3
