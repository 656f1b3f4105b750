"""The report's pure parts: the methods paragraph from recorded parameters, the slice montage
and the small plots (the whole report in Chromium: tests/test_group_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest

from processing.figures import (
    Outline,
    pick_slices,
    save_design_matrix_png,
    save_scatter_png,
    save_slice_montage,
)
from processing.methods import methods_paragraph

PNG = b"\x89PNG\r\n\x1a\n"
RAN = {
    "motion": {"preprocessing.motion_exclusion_mm": [2.0]},
    "preprocess": {"preprocessing.smoothing_fwhm_mm": [5.0],
                   "preprocessing.interpolation": ["trilinear"]},
    "filter": {"preprocessing.grand_mean_scaling": [10000],
               "preprocessing.highpass_cutoff_s": [100]},
    "glm": {"boldcloud.run_level.noise_model": ["film"],
            "boldcloud.run_level.autocorr_bias_correction": [True]},
    "group_fit": {"boldcloud.group_level.estimator": ["flame1"]},
    "group_permutation": {"boldcloud.inference.n_permutations": [5000],
                          "boldcloud.inference.seed": [0]},
    "group_inference": {"boldcloud.inference.method": ["permutation"],
                        "boldcloud.inference.statistic": ["cluster_mass"],
                        "boldcloud.inference.cluster_forming_z": [3.1],
                        "boldcloud.inference.cluster_p": [0.05],
                        "boldcloud.inference.two_sided": [False]},
}  # fmt: skip


def test_methods_paragraph_describes_what_ran_and_only_that():
    text = methods_paragraph(RAN, {"template": "MNI152NLin2009aSym 2 mm"}, {"numpy": "2.0"})
    for part in ("above 2 mm", "5 mm FWHM", "trilinear", "grand-mean scaled to 10000",
                 "100 s cutoff", "FILM prewhitening", "FLAME1",
                 "5000 random sign flips of the OLS t statistic (seed 0)",
                 "cluster-mass FWE-corrected P < 0.05", "Z > 3.1", "positive effects only",
                 "Software: numpy 2.0."):  # fmt: skip
        assert part in text, (part, text)
    assert "warped to" not in text  # normalise has no record here
    facts = {"template": "MNI152NLin2009aSym 2 mm", "coarse_registration_mm": [4.0]}
    ran = {**RAN, "normalise": {}}
    with_norm = methods_paragraph(ran, facts)
    assert "warped to MNI152NLin2009aSym 2 mm" in with_norm
    assert "registered on the template resampled to 4 mm" in with_norm
    assert "variance maps were propagated" not in with_norm
    plain = methods_paragraph(ran, {"template": "MNI152NLin2009aSym 2 mm"})
    assert "warped to" in plain and "resampled to 4 mm" not in plain
    propagated = methods_paragraph(ran, {**facts, "variance_propagated": True})
    assert "variance maps were propagated through the trilinear interpolation" in propagated
    assert "not described: design, fixed_effects, normalise, group_roi." in text
    # another recorded value changes the text; records that disagree are all named
    mixed = {
        **RAN,
        "preprocess": {"preprocessing.smoothing_fwhm_mm": [6.0, 8.0]},
        "glm": {"boldcloud.run_level.noise_model": ["ols"]},
        "group_inference": {**RAN["group_inference"], "boldcloud.inference.method": ["grf"]},
    }
    text = methods_paragraph(mixed)  # fmt: skip
    assert "6 / 8 mm FWHM" in text and "5 mm" not in text
    assert "ordinary least squares" in text and "Gaussian random field" in text


def test_methods_paragraph_names_row_permutations_and_blocks():
    facts = {"row_permutations": 2, "within_blocks": 1}
    text = methods_paragraph(RAN, facts)
    assert "2 analyses whose contrast is not a mean" in text
    assert "Freedman-Lane residuals" in text and "1 of them only within exchangeability" in text
    assert "Freedman-Lane" not in methods_paragraph(RAN, {})


def test_slice_montage_draws_overlay_and_outlines(tmp_path):
    rng = np.random.default_rng(0)
    background = rng.random((12, 14, 16)).astype(np.float32)
    blob = np.zeros(background.shape, dtype=np.float32)
    blob[4:8, 5:9, 6:10] = 4.0
    outline = Outline((blob > 0).astype(np.float32), 0.5, "black")
    out = save_slice_montage(background, tmp_path / "m" / "montage.png", overlay=blob - 1.0,
                             threshold=2.3, outlines=[outline], affine=np.diag([2, 2, 2, 1.0]),
                             orientations=("axial", "sagittal"), n_slices=3)  # fmt: skip
    assert out.read_bytes()[:8] == PNG
    assert pick_slices(blob > 0, 0, 2) == [5, 6]  # inside the blob's z extent 4..7
    assert pick_slices(np.zeros((12, 1, 1)), 0, 1) == [6]  # empty: the whole axis
    with pytest.raises(ValueError, match="one shape"):
        save_slice_montage(background, tmp_path / "x.png", overlay=blob[1:])
    with pytest.raises(ValueError, match="unknown orientations"):
        save_slice_montage(background, tmp_path / "x.png", orientations=("oblique",))


def test_design_matrix_and_scatter_pngs(tmp_path):
    design = np.column_stack([np.ones(4), [0.5, -0.5, 1.0, -1.0]])
    out = save_design_matrix_png(design, ["mean", "age"], [f"sub-0{i}" for i in range(1, 5)],
                                 tmp_path / "d.png", contrast=[1, 0], title="t")  # fmt: skip
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="does not match"):
        save_design_matrix_png(design, ["mean"], ["a", "b", "c", "d"], tmp_path / "e.png")
    x, y = np.array([1.0, 2.0, np.nan, 4.0]), np.array([2.0, 3.0, 1.0, 5.0])
    out = save_scatter_png(x, y, list("abcd"), tmp_path / "s.png", title="r", xlabel="x")
    assert out.read_bytes()[:8] == PNG
