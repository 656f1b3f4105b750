"""Motion correction: recovery of planted rigid motion, resampling, FD/RMS, exclusion, inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from processing.geometry import rigid_matrix, volume_center_mm
from processing.preprocess.motion import (
    MotionInputError,
    apply_motion,
    confounds_table,
    estimate_motion,
    framewise_displacement,
    motion_exclusion,
    plot_motion,
    rms_displacement_series,
    select_reference,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from sitk_reference import sitk_motion  # SimpleITK reference, shared with bench_motion

REAL_RUN = (
    Path(__file__).resolve().parent.parent.parent
    / "shared/data/studyforrest-localizer/sub-01/func/sub-01_task-oneback_run-1_bold.nii.gz"
)
SWAP = np.eye(4)[[2, 1, 0, 3]]  # (i, j, k) <-> (z, y, x)


def oblique_affine(shape_xyz: tuple[int, int, int], voxel_mm: float) -> np.ndarray:
    """A flipped (LAS-like), slightly oblique voxel -> mm affine centred near the origin."""
    aff = np.diag([-voxel_mm, voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape_xyz) - 1) / 2.0)
    return rigid_matrix([2.0, -5.0, 3.0, 0.08, -0.05, 0.12]) @ aff


def brain_phantom(shape_xyz, voxel_mm, affine=None, seed=0):
    """A smooth brain-like EPI image (z, y, x): an ellipsoid with bright ventricles, blobs of
    grey/white contrast and fine texture, a faint scalp; returns (image, affine, brain mask)."""
    rng = np.random.default_rng(seed)
    aff = oblique_affine(shape_xyz, voxel_mm) if affine is None else affine
    kji = np.indices(shape_xyz[::-1], dtype=np.float64)
    world = np.moveaxis(kji[::-1], 0, -1) @ aff[:3, :3].T + aff[:3, 3]
    center = volume_center_mm(aff, shape_xyz)
    x, y, z = np.moveaxis(world - center, -1, 0)
    radius = np.sqrt((x / 62.0) ** 2 + (y / 78.0) ** 2 + (z / 58.0) ** 2)
    brain = 1.0 / (1.0 + np.exp((radius - 1.0) / 0.03))
    scalp = np.exp(-(((radius - 1.12) / 0.04) ** 2))
    image = 0.55 * brain + 0.15 * scalp
    for _ in range(40):
        c = rng.uniform(-45.0, 45.0, 3) * [1.0, 1.2, 0.9]
        width = rng.uniform(6.0, 16.0)
        dist2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        image += rng.uniform(-0.25, 0.35) * np.exp(-dist2 / (2 * width**2)) * brain
    ventricles = np.exp(-((x / 8.0) ** 2 + (y / 22.0) ** 2 + ((z - 8.0) / 10.0) ** 2))
    texture = ndimage.gaussian_filter(rng.normal(size=image.shape), 1.5)
    image += 0.4 * ventricles + 0.12 * texture / texture.std() * brain
    return (1000.0 * image).astype(np.float32), aff, brain > 0.5


def move(image, affine, params, noise=0.0, seed=1):
    """Volumes V_t(q) = image(M_t^-1 q) (cubic spline), plus Gaussian noise: shape (n, z, y, x)."""
    rng = np.random.default_rng(seed)
    center = volume_center_mm(affine, image.shape[::-1])
    out = np.empty((len(params), *image.shape), dtype=np.float32)
    for t, mat in enumerate(rigid_matrix(params, center)):
        pull = SWAP @ np.linalg.inv(affine) @ np.linalg.inv(mat) @ affine @ SWAP
        ndimage.affine_transform(image, pull[:3, :3], pull[:3, 3], output=out[t], order=3)
    return out + rng.normal(0.0, noise, out.shape).astype(np.float32)


def random_params(n, max_mm=3.0, max_deg=3.0, seed=2):
    rng = np.random.default_rng(seed)
    trans = rng.uniform(-max_mm, max_mm, (n, 3))
    rots = np.deg2rad(rng.uniform(-max_deg, max_deg, (n, 3)))
    return np.hstack([trans, rots])


def rms_errors(estimate, truth):
    err = estimate - truth
    return np.sqrt(np.mean(err[:, :3] ** 2)), np.rad2deg(np.sqrt(np.mean(err[:, 3:] ** 2)))


def masked_corr(a, b, mask):
    return np.corrcoef(a[mask], b[mask])[0, 1]


@pytest.fixture(scope="module")
def small():
    """40 x 48 x 40 at 4 mm: phantom, 12 moved noisy volumes, their true parameters."""
    image, affine, brain = brain_phantom((40, 48, 40), 4.0)
    truth = random_params(12)
    volumes = move(image, affine, truth, noise=8.0)
    reference = image + np.random.default_rng(3).normal(0, 8.0, image.shape).astype(np.float32)
    return {"image": image, "affine": affine, "brain": brain, "truth": truth, "vols": volumes,
            "ref": reference}  # fmt: skip


@pytest.fixture(scope="module")
def estimated(small):
    return estimate_motion(small["vols"], small["ref"], small["affine"])


def test_recovers_planted_motion(small, estimated):
    trans_err, rot_err = rms_errors(estimated, small["truth"])
    assert trans_err <= 0.1, f"translation RMS error {trans_err:.3f} mm"
    assert rot_err <= 0.1, f"rotation RMS error {rot_err:.3f} deg"


def test_translation_sign_against_a_plain_voxel_shift():
    """Content moved by +1 voxel along +i (4 mm along +x) means M_t = translation by +4 mm x."""
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    image, _, _ = brain_phantom((40, 48, 40), 4.0, affine=affine)
    shifted = np.roll(image, 1, axis=2)[None]
    params = estimate_motion(shifted, image, affine)[0]
    np.testing.assert_allclose(params, [4.0, 0, 0, 0, 0, 0], atol=0.02)


def test_chunks_and_integer_input_agree_with_the_whole_run(small, estimated):
    first = estimate_motion(small["vols"][:5], small["ref"], small["affine"])
    second = estimate_motion(small["vols"][5:], small["ref"], small["affine"])
    np.testing.assert_allclose(np.vstack([first, second]), estimated, atol=0.01)
    as_int = estimate_motion(small["vols"][:3].astype(np.int16), small["ref"], small["affine"])
    np.testing.assert_allclose(as_int, estimated[:3], atol=0.01)
    brain_only = estimate_motion(
        small["vols"][:3], small["ref"], small["affine"], mask=small["brain"]
    )
    np.testing.assert_allclose(brain_only, small["truth"][:3], atol=0.05)


def test_apply_motion_undoes_the_motion(small, estimated):
    brain, ref = small["brain"], small["image"]
    before = [masked_corr(v, ref, brain) for v in small["vols"]]
    for order in (1, 3):
        buffer = np.empty(small["vols"].shape, dtype=np.float32)
        corrected = apply_motion(small["vols"], estimated, small["affine"], order=order, out=buffer)
        assert corrected is buffer
        after = [masked_corr(v, ref, brain) for v in corrected]
        assert min(after) > 0.99, f"order {order}: correlations after correction {after}"
    assert max(before) < 0.97, f"the planted motion is too small to test: {before}"


def test_apply_motion_with_true_parameters_restores_the_image(small):
    clean = move(small["image"], small["affine"], small["truth"][:3])
    restored = apply_motion(clean, small["truth"][:3], small["affine"], order=3)
    inner = ndimage.binary_erosion(small["brain"], iterations=2)
    err = np.abs(restored - small["image"])[:, inner]
    assert err.mean() < 0.01 * small["image"][inner].mean()


def test_trilinear_resampling_blurs_the_brain_edge_by_displacement_and_cubic_does_not(small):
    """Why cubic B-spline is the default final resampling: restoring a volume moved by half a
    voxel, trilinear interpolation low-passes it, so the brain-edge intensity depends on the
    volume's displacement (a signal that follows any task correlated with displacement);
    cubic B-spline restores the edge. The unmoved volume is restored exactly by both."""
    image, affine, brain = small["image"], small["affine"], small["brain"]
    edge = brain & ~ndimage.binary_erosion(brain)
    params = np.zeros((2, 6))
    params[1, 0] = 0.5 * 4.0  # half a 4 mm voxel along x
    moved = move(image, affine, params)
    edge_change = {}
    for order in (1, 3):
        restored = apply_motion(moved, params, affine, order=order)
        np.testing.assert_allclose(restored[0][brain], image[brain], rtol=1e-4, atol=1e-2)
        edge_change[order] = float(np.abs(restored[1] - restored[0])[edge].mean())
    scale = float(image[edge].mean())
    assert edge_change[1] > 0.02 * scale, edge_change  # trilinear: a displacement signal
    assert edge_change[3] < 0.4 * edge_change[1], edge_change  # cubic: 0.28x here


def test_framewise_displacement_by_hand():
    params = np.zeros((4, 6))
    params[1, :3] = [1.0, -0.5, 0.0]
    params[2] = [1.0, -0.5, 0.25, 0.01, 0.0, -0.02]
    params[3] = params[2]
    fd = framewise_displacement(params)
    np.testing.assert_allclose(fd, [0.0, 1.5, 0.25 + 50.0 * 0.03, 0.0])
    assert framewise_displacement(params, radius_mm=80.0)[2] == pytest.approx(0.25 + 80 * 0.03)


def sphere_rms(mat_a, mat_b, radius, n=400_000, seed=4):
    """Monte Carlo RMS of |B A^-1 y - y| for y uniform in a ball at the origin."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    points = direction * radius * rng.random((n, 1)) ** (1.0 / 3.0)
    rel = mat_b @ np.linalg.inv(mat_a)
    moved = points @ rel[:3, :3].T + rel[:3, 3]
    return np.sqrt(np.mean(np.sum((moved - points) ** 2, axis=1)))


def test_rms_displacement_against_sphere_sampling():
    params = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.3, -0.4, 0.0, 0.0, 0.0, 0.0],  # pure translation: 0.5 mm
            [0.3, -0.4, 0.1, 0.02, -0.01, 0.015],
            [-1.0, 0.5, 0.2, -0.01, 0.03, 0.0],
        ]
    )
    absolute, relative = rms_displacement_series(params)
    mats = rigid_matrix(params)
    assert absolute[0] == 0.0 and relative[0] == 0.0
    assert absolute[1] == pytest.approx(0.5) and relative[1] == pytest.approx(0.5)
    for t in range(1, 4):
        assert absolute[t] == pytest.approx(sphere_rms(np.eye(4), mats[t], 80.0), rel=0.01)
        assert relative[t] == pytest.approx(sphere_rms(mats[t - 1], mats[t], 80.0), rel=0.01)
    assert rms_displacement_series(params, radius_mm=40.0)[0][2] < absolute[2]


def trajectory(n, drift_mm, jerk_at=None, jerk_mm=2.5):
    """A smooth drift along y (and a small pitch), with an optional step at ``jerk_at``."""
    params = np.zeros((n, 6))
    ramp = np.linspace(-0.5, 0.5, n)
    params[:, 1] = drift_mm * ramp
    params[:, 3] = np.deg2rad(0.3) * ramp
    if jerk_at is not None:
        params[jerk_at:, 2] += jerk_mm
    return params - params[n // 2]


@pytest.mark.parametrize(("jerk_at", "excluded"), [(13, True), (None, False)])
def test_jerk_is_flagged_and_drift_is_not(small, jerk_at, excluded):
    truth = trajectory(20, drift_mm=1.0, jerk_at=jerk_at)
    volumes = move(small["image"], small["affine"], truth, noise=8.0, seed=5)
    params = estimate_motion(volumes, select_reference(volumes), small["affine"])
    _, relative = rms_displacement_series(params)
    verdict = motion_exclusion(relative, threshold_mm=2.0)
    assert verdict.excluded is excluded, verdict.reason
    if excluded:
        assert verdict.volume == 13
        assert verdict.max_mm == pytest.approx(2.5, abs=0.1)
        assert "at volume 13 exceeds 2.0 mm" in verdict.reason
    else:
        assert verdict.volume is None and verdict.max_mm < 0.2


def test_motion_exclusion_reason_and_threshold_edge():
    rel = np.zeros(60)
    rel[57] = 2.73
    verdict = motion_exclusion(rel, 2.0)
    assert verdict.reason == "TR-to-TR displacement 2.73 mm at volume 57 exceeds 2.0 mm"
    assert (verdict.excluded, verdict.volume, verdict.max_mm) == (True, 57, 2.73)
    assert not motion_exclusion(np.full(5, 2.0), 2.0).excluded  # equal is not above
    with pytest.raises(MotionInputError, match=r"relative_rms_mm\[2\]"):
        motion_exclusion([0.0, 0.1, np.nan], 2.0)


def test_confounds_table_and_plot(tmp_path):
    params = trajectory(30, drift_mm=1.0, jerk_at=10)
    table = confounds_table(params)
    assert list(table.columns) == [
        "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
        "framewise_displacement", "rmsd",
    ]  # fmt: skip
    np.testing.assert_allclose(table[["trans_x", "rot_z"]], params[:, [0, 5]])
    np.testing.assert_allclose(table["framewise_displacement"], framewise_displacement(params))
    np.testing.assert_allclose(table["rmsd"], rms_displacement_series(params)[1])
    path = plot_motion(params, table["framewise_displacement"], table["rmsd"], 2.0,
                       tmp_path / "motion.png")  # fmt: skip
    import matplotlib.image as mpimg

    pixels = mpimg.imread(path)
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    assert red.sum() > 200, "the red threshold line is missing from the plot"


def test_select_reference(small):
    vols = small["vols"]
    np.testing.assert_array_equal(select_reference(vols), vols[6])
    np.testing.assert_array_equal(select_reference(vols, 3), vols[3])
    np.testing.assert_allclose(select_reference(vols, "mean"), vols.mean(axis=0), atol=1e-3)


def _bad(kind, vols, ref, affine):
    vols = vols.copy()
    if kind == "nan":
        vols[3, 5, 5, 5] = np.nan
    elif kind == "zero":
        vols[5] = 0
    return vols, ref, affine


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v, r, a: estimate_motion(*_bad("nan", v, r, a)), "volume 3 contains 1 NaN"),
        (lambda v, r, a: estimate_motion(*_bad("zero", v, r, a)), "volume 5 is all zeros"),
        (
            lambda v, r, a: select_reference(v[:9]),
            "needs at least 10 volumes .* got 9",
        ),
        (lambda v, r, a: select_reference(v, 12), "index 12 is out of range.*0 to 11"),
        (lambda v, r, a: select_reference(v, "first"), "'middle', 'mean' or a volume index"),
        (lambda v, r, a: estimate_motion(v, r[:-1], a), r"reference shape \(39, 48, 40\)"),
        (lambda v, r, a: estimate_motion(v[0], r, a), "must be 4-D"),
        (lambda v, r, a: estimate_motion(v, r, a[:3]), r"4 x 4 .* got shape \(3, 4\)"),
        (lambda v, r, a: estimate_motion(v, r * np.nan, a), "reference contains"),
        (lambda v, r, a: estimate_motion(v, r, a, levels=(16, 1)), "level 16 leaves"),
        (lambda v, r, a: estimate_motion(v, r * 0 + 5, a), "automatic head mask has 0 voxels"),
        (lambda v, r, a: estimate_motion(v, r * 0 + 5, a, mask=r > 0), "too little contrast"),
        (lambda v, r, a: apply_motion(v, np.zeros((3, 6)), a), r"shape \(12, 6\)"),
        (lambda v, r, a: apply_motion(v, np.zeros((12, 6)), a, order=2), "order must be 1"),
        (lambda v, r, a: apply_motion(v, np.zeros((12, 6)), a, out=v[:2]), "out must be float32"),
        (lambda v, r, a: framewise_displacement(np.zeros((4, 3))), r"\(n, 6\)"),
    ],
)
def test_bad_inputs_raise_clearly(small, call, message):
    with pytest.raises(MotionInputError, match=message):
        call(small["vols"], small["ref"], small["affine"])


@pytest.mark.slow
def test_full_size_accuracy():
    image, affine, _ = brain_phantom((98, 98, 75), 2.0, seed=7)
    truth = random_params(20, seed=8)
    volumes = move(image, affine, truth, noise=10.0, seed=9)
    trans_err, rot_err = rms_errors(estimate_motion(volumes, image, affine), truth)
    assert trans_err <= 0.05 and rot_err <= 0.05, (trans_err, rot_err)


@pytest.mark.shared
@pytest.mark.skipif(
    not REAL_RUN.exists(),
    reason=f"needs ../shared/data ({REAL_RUN}; present in CI, absent in a user's clone)",
)
def test_real_run_agrees_with_simpleitk():
    pytest.importorskip("SimpleITK", reason="SimpleITK is a dev extra")
    import nibabel as nib

    img = nib.load(REAL_RUN)
    run = np.asarray(img.dataobj).T  # (x, y, z, t) on disk -> (t, z, y, x)
    reference = select_reference(run)
    subset = run[::12]
    ours = estimate_motion(subset, reference, img.affine)
    theirs = sitk_motion(subset, reference, img.affine)
    trans_diff, rot_diff = rms_errors(ours, theirs)
    assert trans_diff <= 0.2 and rot_diff <= 0.2, (trans_diff, rot_diff)
    assert np.abs(ours[:, :3]).max() > 0.1, "the run should show some real motion"
