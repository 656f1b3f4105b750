"""Spatial normalisation kernels (issue 5) against the simulator's true native <-> MNI maps.

Small-size subjects (T1w and EPI at 4 mm) register to the template at 4 mm so the suite stays
fast (~90 s together on 2 cores); the full-size acceptance test (T1w 2 mm -> MNI 2 mm) takes
36 s on a quiet 2-core machine and 81 s under load, so it is marked slow (CI still runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from processing.geometry import rigid_matrix, rigid_params, volume_center_mm
from processing.normalise import (
    TEMPLATE_SPACE,
    TemplateTransform,
    affine_from_itk_text,
    affine_to_itk_text,
    dice,
    identity_transform,
    load_template,
    lr_flip_check,
    normalise_epi,
    normalise_t1,
    on_template_grid,
    register_epi_to_t1,
    registration_template,
    resample_to_native,
    resample_to_template,
    sample_at_points,
    save_registration_overlay_png,
    transform_from_files,
    transform_to_files,
)
from processing.normalise.register import coarsen_to
from processing.preprocess.masks import t1_brain_mask
from processing.simulate.specs import BASE_SITES, ROIS
from processing.simulate.subject import build_subject
from processing.simulate.truth import mni_grid

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from bench_epi_to_t1 import finer_grid  # the 1 mm T1w of the benchmark, made the same way


def _brain_points(template, step: int = 1) -> np.ndarray:
    """World mm of template brain voxels (every ``step``-th), plus the planted ROI centres."""
    vox = np.argwhere(template.mask)[::step, ::-1]
    pts = vox @ template.affine[:3, :3].T + template.affine[:3, 3]
    return np.vstack([pts, np.array([r.mni_mm for r in ROIS])])


def _check_against_truth(norm, space, template, max_mean_mm: float) -> None:
    """Dice of the true native mask warped to MNI, and point mapping both ways vs truth."""
    tf = norm.transform
    warped_truth = resample_to_template(space.t1_mask.T, space.t1_affine, tf, kind="mask")
    assert dice(warped_truth, template.mask) >= 0.95
    mni = _brain_points(template)
    true_native = space.transform.to_native(mni)
    err_to_native = np.linalg.norm(tf.to_native(mni) - true_native, axis=1)
    err_back = np.linalg.norm(tf.to_template(true_native) - mni, axis=1)
    assert err_to_native.mean() <= max_mean_mm, err_to_native.mean()
    assert err_back.mean() <= max_mean_mm, err_back.mean()
    # the planted ROI centres themselves
    rois = np.array([r.mni_mm for r in ROIS])
    assert np.linalg.norm(tf.to_native(rois) - space.transform.to_native(rois), axis=1).max() < 3.0


@pytest.fixture(scope="module")
def tpl4():
    return load_template(4)


@pytest.fixture(scope="module")
def small():
    return build_subject(0, 0, BASE_SITES[0], "small")


@pytest.fixture(scope="module")
def small_t1(small, tpl4):
    return normalise_t1(small.t1_raw.T, small.t1_affine, template=tpl4)


def test_template_is_nilearns_2009a_symmetric_on_the_simulators_grid():
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.datasets.struct import MNI152_FILE_PATH

    assert TEMPLATE_SPACE == "MNI152NLin2009aSym"
    assert "icbm152_t1_tal_nlin_sym_09a" in str(MNI152_FILE_PATH)
    tpl = load_template()
    affine, shape = mni_grid("full")
    assert tpl.shape == tuple(shape[::-1]) and np.allclose(tpl.affine, affine)
    assert tpl.resolution_mm == 2.0 and tpl.space == TEMPLATE_SPACE
    nilearn_mask = np.asarray(load_mni152_brain_mask(resolution=2).dataobj).T > 0
    assert dice(tpl.mask, nilearn_mask) > 0.999
    assert on_template_grid(tpl.affine, tpl.shape)
    assert not on_template_grid(tpl.affine + np.eye(4), tpl.shape)


def test_t1_to_template_matches_the_true_transform(small, small_t1, tpl4):
    _check_against_truth(small_t1, small, tpl4, max_mean_mm=2.0)
    assert not small_t1.qc.failed, small_t1.qc
    assert small_t1.qc.dice > 0.95
    assert all(0.9 < v < 1.1 for v in small_t1.qc.scales)  # simulator: scales within 5 %
    # brain extraction on the native grid against the simulator's true mask (bias field on)
    assert dice(small_t1.brain_mask, small.t1_mask.T) >= 0.95
    assert small_t1.transform.space == TEMPLATE_SPACE


def test_coarse_t1_registers_on_a_coarser_grid_and_maps_onto_the_2mm_one(small, small_t1, tpl4):
    """A 4 mm T1w against the 2 mm template registers on the 4 mm template (the warp carried to
    the 2 mm grid); the mapping equals that of registering on 4 mm directly, and is as good."""
    tpl2 = load_template(2)
    assert registration_template(tpl2, small.t1_affine) is tpl4
    assert registration_template(tpl2, np.diag([2.5, 2.5, 3.9, 1.0])) is tpl2
    assert registration_template(tpl4, small.t1_affine) is tpl4
    norm = normalise_t1(small.t1_raw.T, small.t1_affine, template=tpl2)
    assert norm.registration_mm == 4.0 and small_t1.registration_mm == 4.0
    tf = norm.transform
    assert tf.grid_shape == tpl2.shape and np.allclose(tf.grid_affine, tpl2.affine)
    assert norm.warped.shape == tpl2.shape and norm.qc.dice > 0.95 and not norm.qc.failed
    _check_against_truth(norm, small, tpl2, max_mean_mm=2.0)
    pts = _brain_points(tpl2, step=7)
    direct = small_t1.transform
    np.testing.assert_allclose(tf.to_native(pts), direct.to_native(pts), atol=0.05)
    np.testing.assert_allclose(tf.to_template(pts), direct.to_template(pts), atol=0.05)


def test_on_grid_keeps_the_mapping_at_the_new_grid_points(small_t1):
    tf = small_t1.transform
    tpl2 = load_template(2)
    fine = tf.on_grid(tpl2.affine, tpl2.shape)
    pts = fine.grid_points()[::5, ::5, ::5].reshape(-1, 3)
    np.testing.assert_allclose(fine.to_native(pts), tf.to_native(pts), atol=1e-4)
    np.testing.assert_allclose(fine.to_template(pts), tf.to_template(pts), atol=0.05)
    linear = TemplateTransform(tf.affine, tf.grid_affine, tf.grid_shape).on_grid(
        tpl2.affine, tpl2.shape
    )
    assert linear.is_linear and linear.grid_shape == tpl2.shape


@pytest.mark.slow
def test_full_size_t1_to_mni_2mm():
    """Issue 5 acceptance at full size: Dice >= 0.95, mean error <= 2 mm both ways."""
    space = build_subject(0, 3, BASE_SITES[0], "full")
    tpl = load_template(2)
    norm = normalise_t1(space.t1_raw.T, space.t1_affine, template=tpl)
    _check_against_truth(norm, space, tpl, max_mean_mm=1.0)
    assert not norm.qc.failed
    assert dice(norm.brain_mask, space.t1_mask.T) >= 0.95


def test_epi_to_template_without_t1(tpl4):
    space = build_subject(0, 1, BASE_SITES[0], "small")
    norm = normalise_epi(space.baseline, space.bold_affine, template=tpl4)
    assert norm.source == "bold" and not norm.qc.failed, norm.qc
    # EPI native space = the T1w world space in the simulator, so the same truth applies
    _check_against_truth(norm, space, tpl4, max_mean_mm=2.0)


def test_epi_to_t1_rigid_recovers_a_known_offset(small, small_t1):
    centre = volume_center_mm(small.bold_affine, small.bold_shape[::-1])
    offset = rigid_matrix([3.0, -2.5, 4.0, np.deg2rad(3), np.deg2rad(-2), np.deg2rad(4)], centre)
    # the EPI's header claims it sits at offset @ true position: true epi_to_t1 = inv(offset)
    fit = register_epi_to_t1(
        small.baseline,
        offset @ small.bold_affine,
        small.t1_raw.T,
        small.t1_affine,
        small_t1.brain_mask,
    )
    residual = rigid_params(fit.moving_to_fixed @ offset, centre)
    assert np.abs(residual[:3]).max() < 1.0
    assert np.rad2deg(np.abs(residual[3:])).max() < 1.0
    # composed EPI -> T1w -> MNI equals mapping through both steps by hand
    epi_tf = small_t1.transform.compose_native(fit.moving_to_fixed)
    pts = np.array([[10.0, -40.0, 20.0], [-30.0, 10.0, 0.0]])
    by_hand = epi_tf.to_native(pts)  # EPI (header) mm
    t1_mm = small_t1.transform.to_native(pts)
    assert np.allclose(
        fit.moving_to_fixed[:3, :3] @ by_hand.T + fit.moving_to_fixed[:3, 3:], t1_mm.T, atol=1e-6
    )


def test_coarsen_to_keeps_world_positions():
    """Block means of a linear function of world position equal it at the coarse centres."""
    affine = rigid_matrix([4.0, -3.0, 2.0, 0.1, -0.2, 0.15]) @ np.diag([1.0, 1.2, 0.9, 1.0])
    affine[:3, 3] += [-90.0, -120.0, -70.0]
    shape = (23, 30, 41)  # (z, y, x): axes of 0.9, 1.2 and 1.0 mm
    idx = np.moveaxis(np.indices(shape, dtype=np.float64)[::-1], 0, -1)  # (z, y, x, [x, y, z])
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    image = world @ np.array([0.5, -1.5, 2.0]) + 7.0
    coarse, coarse_affine = coarsen_to(image, affine, 2.5)
    k_xyz = np.array([2, 2, 2])  # floor(2.5 / 1.0), floor(2.5 / 1.2), floor(2.5 / 0.9)
    assert coarse.shape == (11, 15, 20)
    assert np.allclose(np.linalg.norm(coarse_affine[:3, :3], axis=0), [2.0, 2.4, 1.8])
    cidx = np.moveaxis(np.indices(coarse.shape, dtype=np.float64)[::-1], 0, -1)
    cworld = cidx @ coarse_affine[:3, :3].T + coarse_affine[:3, 3]
    assert np.allclose(coarse, cworld @ np.array([0.5, -1.5, 2.0]) + 7.0, atol=1e-3)
    first_block = image[:2, :2, :2].mean()
    assert coarse[0, 0, 0] == pytest.approx(first_block, abs=1e-4) and k_xyz.prod() == 8
    same, same_affine = coarsen_to(image, affine, 1.9)  # only the 0.9 mm axis is halved
    assert same.shape == (11, 30, 41) and np.allclose(same_affine[:3, 0], affine[:3, 0])
    untouched, _ = coarsen_to(image, affine, 1.0)
    assert untouched.shape == shape
    with pytest.raises(ValueError, match="voxel_mm must be positive, got 0"):
        coarsen_to(image, affine, 0.0)
    with pytest.raises(ValueError, match=r"smaller than one 100\.0 mm voxel"):
        coarsen_to(image, affine, 100.0)


def test_t1_finer_than_the_epi_registers_at_the_epis_voxel_size(small, small_t1):
    """A 2 mm T1w (the 4 mm one upsampled) against the 4 mm EPI: the rigid fit recovers the
    planted offset as the 4 mm T1w does, and the flip check still tells a mirrored T1w."""
    t1, t1_affine = finer_grid(small.t1_raw.T, small.t1_affine, order=1)
    mask = finer_grid(small_t1.brain_mask, small.t1_affine, order=1)[0] >= 0.5
    centre = volume_center_mm(small.bold_affine, small.bold_shape[::-1])
    offset = rigid_matrix([3.0, -2.5, 4.0, np.deg2rad(3), np.deg2rad(-2), np.deg2rad(4)], centre)
    fine = register_epi_to_t1(small.baseline, offset @ small.bold_affine, t1, t1_affine, mask)
    coarse = register_epi_to_t1(
        small.baseline, offset @ small.bold_affine, small.t1_raw.T, small.t1_affine,
        small_t1.brain_mask,
    )  # fmt: skip
    for fit in (fine, coarse):
        residual = rigid_params(fit.moving_to_fixed @ offset, centre)
        assert np.abs(residual[:3]).max() < 1.0, residual
        assert np.rad2deg(np.abs(residual[3:])).max() < 1.0, residual
    between = rigid_params(fine.moving_to_fixed @ np.linalg.inv(coarse.moving_to_fixed), centre)
    assert np.abs(between[:3]).max() < 0.5 and np.rad2deg(np.abs(between[3:])).max() < 0.5
    good = lr_flip_check(small.baseline, small.bold_affine, t1, t1_affine, mask)
    bad = lr_flip_check(
        small.baseline, small.bold_affine, np.flip(t1, axis=2).copy(), t1_affine,
        np.flip(mask, axis=2).copy(),
    )  # fmt: skip
    assert not good.flipped and bad.flipped, (good, bad)


def test_left_right_flipped_t1_is_flagged(small):
    t1 = small.t1_raw.T.astype(np.float32)
    mask = t1_brain_mask(t1, small.t1_affine)
    good = lr_flip_check(small.baseline, small.bold_affine, t1, small.t1_affine, mask)
    assert not good.flipped and good.nmi_as_is > good.nmi_mirrored
    flipped_t1, flipped_mask = np.flip(t1, axis=2).copy(), np.flip(mask, axis=2).copy()
    bad = lr_flip_check(
        small.baseline, small.bold_affine, flipped_t1, small.t1_affine, flipped_mask
    )
    assert bad.flipped and bad.nmi_mirrored > bad.nmi_as_is


def test_mostly_empty_t1_is_flagged_failed(small, tpl4):
    t1 = small.t1_raw.T.astype(np.float32).copy()
    keep = slice(t1.shape[0] // 2 - 3, t1.shape[0] // 2 + 3)  # six 4-mm axial slices remain
    emptied = np.zeros_like(t1)
    emptied[keep] = t1[keep]
    try:
        norm = normalise_t1(emptied, small.t1_affine, template=tpl4)
    except ValueError:
        return  # refused outright: also not silently used
    assert norm.qc.failed, norm.qc
    # the warp stretches the slab over the template (so Dice alone would pass); the volume and
    # the affine's scale factors give it away
    assert any("volume" in r for r in norm.qc.reasons)
    assert any("scales" in r for r in norm.qc.reasons)
    with pytest.raises(ValueError, match="empty"):
        normalise_t1(np.zeros_like(t1), small.t1_affine, template=tpl4)


def test_variance_resampling_is_never_negative(small, small_t1):
    rng = np.random.default_rng(0)
    shape = small.bold_shape[::-1]
    variance = rng.gamma(0.3, 2.0, shape).astype(np.float32)  # skewed, many values near 0
    variance[:, :, : shape[2] // 2] = 0.0  # a sharp step to zero
    tf = small_t1.transform
    out = resample_to_template(variance, small.bold_affine, tf, kind="variance")
    assert out.min() >= 0.0 and out.max() <= variance.max() + 1e-6
    assert np.count_nonzero(out) > 1000
    # cubic interpolation of the same map does go negative: the test can fail
    from scipy import ndimage

    native = tf.to_native(tf.grid_points())
    vox = (native - small.bold_affine[:3, 3]) @ np.linalg.inv(small.bold_affine[:3, :3]).T
    cubic = ndimage.map_coordinates(variance, np.moveaxis(vox[..., ::-1], -1, 0), order=3)
    assert cubic.min() < 0.0


def test_mask_and_effect_resampling_round_trip(small, small_t1, tpl4):
    ident = identity_transform(tpl4)
    effect = np.asarray(tpl4.t1, dtype=np.float32)
    assert np.allclose(resample_to_template(effect, tpl4.affine, ident), effect, atol=1e-5)
    # the template brain mask pulled back onto the native T1w grid is the subject's brain
    native_mask = resample_to_native(
        tpl4.mask, small_t1.transform, small.t1_affine, small.t1_raw.T.shape, kind="mask"
    )
    assert native_mask.dtype == bool
    assert dice(native_mask, small.t1_mask.T) >= 0.95
    pts = np.array([[0.0, 0.0, 0.0], [1e4, 0.0, 0.0]])
    assert sample_at_points(tpl4.mask, tpl4.affine, pts, kind="mask").tolist() == [True, False]


def test_saved_transforms_reload_to_the_same_mapping(small_t1, tmp_path: Path):
    tf = small_t1.transform
    files = transform_to_files(tf)
    assert set(files) == {"affine.txt", "transform.json", "warp.nii.gz", "inversewarp.nii.gz"}
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    back = transform_from_files({n: (tmp_path / n).read_bytes() for n in files})
    pts = np.random.default_rng(1).uniform(-70, 70, (500, 3))
    assert np.allclose(back.to_native(pts), tf.to_native(pts), atol=1e-4)
    assert np.allclose(back.to_template(pts), tf.to_template(pts), atol=1e-4)
    assert back.space == TEMPLATE_SPACE
    # the ITK affine text round-trips exactly
    mat = tf.affine
    assert np.allclose(affine_from_itk_text(affine_to_itk_text(mat)), mat, atol=1e-12)


def test_saved_transforms_follow_itk_conventions(small_t1, tmp_path: Path):
    """SimpleITK (ANTs' engine) reads our files and maps template points to the same native
    points: native = affine.txt(y + warp(y)) in LPS."""
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is a dev extra")
    tf = small_t1.transform
    files = transform_to_files(tf)
    for name, blob in files.items():
        (tmp_path / name).write_bytes(blob)
    affine = sitk.ReadTransform(str(tmp_path / "affine.txt"))
    field = sitk.ReadImage(str(tmp_path / "warp.nii.gz"), sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)  # applied last
    composite.AddTransform(sitk.DisplacementFieldTransform(field))  # applied first
    lps = np.array([-1.0, -1.0, 1.0])
    pts = np.array([[0.0, -20.0, 10.0], [38.0, 20.0, 0.0], [-40.0, -60.0, 30.0]])
    ours = tf.to_native(pts)
    itk = np.array([composite.TransformPoint(tuple(p * lps)) for p in pts]) * lps
    assert np.allclose(itk, ours, atol=0.05)


def test_overlay_png(small_t1, tpl4, tmp_path: Path):
    out = save_registration_overlay_png(
        tpl4.t1,
        small_t1.warped,
        tmp_path / "qc" / "overlay.png",
        affine=tpl4.affine,
        title=f"sub-01 T1w -> {TEMPLATE_SPACE} Dice {small_t1.qc.dice:.3f}",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_transform_validates_its_fields(tpl4):
    with pytest.raises(ValueError, match="both"):
        TemplateTransform(np.eye(4), tpl4.affine, tpl4.shape, np.zeros((*tpl4.shape, 3)), None)
    with pytest.raises(ValueError, match="shape"):
        TemplateTransform(
            np.eye(4), tpl4.affine, tpl4.shape, np.zeros((2, 2, 2, 3)), np.zeros((2, 2, 2, 3))
        )
