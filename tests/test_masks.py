"""Brain masks (synthetic heads with strong bias, the real studyforrest run) and QC outputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import STUDYFORREST, requires_shared
from scipy import ndimage

from processing.preprocess.masks import epi_brain_mask, otsu_threshold, t1_brain_mask
from processing.preprocess.qc import mask_volume_ml, save_mask_overlay_png, tsnr

REAL_RUN = STUDYFORREST / "sub-01" / "func" / "sub-01_task-oneback_run-1_bold.nii.gz"

# Contrast per tissue: EPI (T2*: CSF > GM > WM, fat-suppressed scalp dim) and T1w (WM > GM > CSF,
# bright scalp fat). The EPI brain includes its outer CSF layer; the T1w brain ends at the pial
# surface with dark CSF outside it.
CONTRASTS = {
    "epi": {"csf": 1.4, "gm": 1.0, "wm": 0.75, "scalp": 0.5, "rim": (0.0, 2.5)},
    "t1": {"csf": 0.2, "gm": 0.6, "wm": 1.0, "scalp": 0.9, "rim": (-2.5, 0.0)},
}


def dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def synthetic_head(kind, seed=0, shape=(44, 64, 64), vox_zyx=(3.3, 3.0, 3.0)):
    """A (z, y, x) head: brain ellipsoid, dark skull gap, scalp shell, bias 0.5 -> 1.5.

    Five scalp-bright rods bridge the gap (emissary veins, optic nerves, neck), so a bare
    threshold plus the largest component leaks into the scalp. The bias is linear in a random
    direction from 0.5 to 1.5 across the head, so scalp at the bright end is brighter than white
    matter at the dark end. Partial-volume blur, Rician-like noise.
    """
    c = CONTRASTS[kind]
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vox_zyx, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    zz = zz + 8.0  # brain sits above the centre (room for the neck)
    semi = (55.0, 75.0, 62.0)
    radius = np.sqrt((zz / semi[0]) ** 2 + (yy / semi[1]) ** 2 + (xx / semi[2]) ** 2)
    depth = (1.0 - radius) * min(semi)  # ~mm inside the brain surface
    brain = radius <= 1.0
    ventricles = (zz / 12) ** 2 + (yy / 25) ** 2 + ((np.abs(xx) - 8) / 6) ** 2 <= 1
    lo, hi = c["rim"]
    img = np.zeros(shape)
    img[brain] = c["gm"]
    img[brain & (depth > 6)] = c["wm"]
    img[brain & ventricles] = c["csf"]
    img[(depth > lo) & (depth <= hi)] = c["csf"]
    img[(depth <= lo) & (depth > lo - 6)] = 0.05  # skull
    scalp = (depth <= lo - 6) & (depth > lo - 12)
    img[scalp] = c["scalp"]
    for direction in ([0, 1, 0], [0, -1, 0], [0, 0, 1], [-1, 0, 0], [0.5, 0.5, -0.7]):
        unit = np.asarray(direction) / np.linalg.norm(direction)
        along = zz * unit[0] + yy * unit[1] + xx * unit[2]
        rod = (zz**2 + yy**2 + xx**2 - along**2 <= 2.5**2) & (along > 0)
        img[rod & (depth <= lo) & (depth > lo - 12)] = c["scalp"]
    img = ndimage.gaussian_filter(img, 0.6)
    direction = rng.normal(size=3)
    ramp = direction[0] * zz + direction[1] * yy + direction[2] * xx
    head = img > 0.01
    ramp = (ramp - ramp[head].min()) / np.ptp(ramp[head])
    img = np.abs(img * (0.5 + ramp) + rng.normal(0.0, 0.04, shape)) * 500
    affine = np.diag([vox_zyx[2], vox_zyx[1], vox_zyx[0], 1.0])
    affine[:3, 3] = [-96.0, -96.0, -72.0]
    return img.astype(np.float32), affine, brain


def one_component(mask):
    return ndimage.label(mask)[1] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_epi_mask_on_biased_synthetic_head(seed):
    img, affine, truth = synthetic_head("epi", seed)
    mask = epi_brain_mask(img, affine)
    assert mask.dtype == bool and mask.shape == img.shape
    score = dice(mask, truth)
    assert score >= 0.9, f"Dice {score:.3f}"
    assert one_component(mask)
    # the phantom is hard: a bare global threshold + largest component does clearly worse
    bare = ndimage.label(img > otsu_threshold(img))[0]
    bare = bare == np.argmax(np.bincount(bare.ravel())[1:]) + 1
    assert dice(bare, truth) < score - 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_t1_mask_on_biased_synthetic_head(seed):
    img, affine, truth = synthetic_head("t1", seed)
    mask = t1_brain_mask(img, affine)
    score = dice(mask, truth)
    assert score >= 0.9, f"Dice {score:.3f}"
    assert one_component(mask)


def test_mask_bad_inputs():
    img, affine, _ = synthetic_head("epi", shape=(20, 24, 24))
    bad = img.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        epi_brain_mask(bad, affine)
    with pytest.raises(ValueError, match="3-D"):
        epi_brain_mask(img[None], affine)
    with pytest.raises(ValueError, match="positive voxels"):
        t1_brain_mask(np.zeros_like(img), affine)
    with pytest.raises(ValueError, match="affine"):
        epi_brain_mask(img, np.eye(3))


@pytest.fixture(scope="module")
def real_mean_epi():
    img = nib.load(REAL_RUN)
    data = np.asarray(img.dataobj, dtype=np.float32)  # (x, y, z, t)
    return data.mean(axis=-1).T.copy(), img.affine  # (z, y, x)


@requires_shared()
def test_epi_mask_on_real_run(real_mean_epi, tmp_path):
    from nilearn.masking import compute_epi_mask

    mean_epi, affine = real_mean_epi
    assert mean_epi.shape == (35, 80, 80)
    mask = epi_brain_mask(mean_epi, affine)
    volume = mask_volume_ml(mask, affine)
    # 35 slices x 3.3 mm cover the whole brain with the cerebellum (slab tilted ~12 degrees);
    # nilearn's mask is ~1450 ml, ours ~1520 ml (it keeps the lowest two slices).
    assert 1100.0 <= volume <= 1800.0, f"mask volume {volume:.0f} ml"
    assert one_component(mask)
    nilearn_mask = compute_epi_mask(nib.Nifti1Image(mean_epi.T, affine)).get_fdata().T > 0
    agreement = dice(mask, nilearn_mask)
    assert agreement >= 0.85, f"Dice with nilearn.masking.compute_epi_mask {agreement:.3f}"
    png = save_mask_overlay_png(
        mean_epi, mask, tmp_path / "sub-01_run-1_mask.png", "sub-01 run-1 EPI mask", affine=affine
    )
    assert png.stat().st_size > 10_000
    print(f"mask overlay: {png} ({volume:.0f} ml, Dice vs nilearn {agreement:.3f})")


def test_mask_volume_and_overlay(tmp_path):
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    mask = np.zeros((10, 12, 14), dtype=bool)
    mask[2:6, 3:9, 4:10] = True  # 144 voxels of 10 mm^3
    assert mask_volume_ml(mask, affine) == pytest.approx(1.44)
    image = np.random.default_rng(0).random(mask.shape).astype(np.float32)
    path = save_mask_overlay_png(image, mask, tmp_path / "qc" / "overlay.png", "t", affine=affine)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="same shape"):
        save_mask_overlay_png(image, mask[1:], tmp_path / "x.png", "t")


def test_tsnr():
    rng = np.random.default_rng(0)
    run = 100.0 + rng.normal(0, 1, (50, 3, 4, 5))
    run[:, 0, 0, 0] = 7.0  # constant: std 0 -> tSNR 0
    out = tsnr(run)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[1:], run[:, 1:].mean(0) / run[:, 1:].std(0), rtol=1e-6)
    assert out[0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="t >= 2"):
        tsnr(run[:1])
