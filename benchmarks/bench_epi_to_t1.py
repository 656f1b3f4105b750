"""EPI -> T1w rigid registration and the flip check with a 1 mm T1w (the reference study's).

The simulator's full-size T1w is 2 mm; the reference study's MP-RAGE is 1 mm. One full-size
simulated subject (EPI 98 x 98 x 75 at 2 mm) has its T1w resampled to 1 mm (cubic, same world
space) and its EPI header moved by a known rigid offset (3, -2.5, 4 mm; 3, -2, 4 degrees).
Timed in this process, one after the other:

* boldcloud ``register_epi_to_t1``: the T1w brain block-averaged to the EPI's 2 mm
  (``coarsen_to``), then rigid MI (``RIGID_SETTINGS``);
* reference: the same MI registration on the T1w's own 1 mm grid (what boldcloud did before);
* boldcloud ``lr_flip_check`` (two more rigid fits, on the coarsened T1w).

Reported: seconds, the ratio reference / boldcloud, and each fit's error against the planted
offset (largest displacement over the brain's voxels, mm).

    .venv/bin/python benchmarks/bench_epi_to_t1.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage


def finer_grid(
    volume: np.ndarray, affine: np.ndarray, factor: int = 2, order: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """A (z, y, x) volume on a grid ``factor`` times finer over the same world space.

    Fine voxel ``j`` sits at coarse index ``(j - (factor - 1) / 2) / factor`` on each axis,
    so :func:`processing.normalise.register.coarsen_to` maps the fine grid back onto the
    coarse one exactly. Spline interpolation of ``order``, nearest at the faces; float32.
    """
    fine = affine.copy()
    fine[:3, :3] = affine[:3, :3] / factor
    fine[:3, 3] = affine[:3, :3] @ np.full(3, -(factor - 1) / (2 * factor)) + affine[:3, 3]
    shape = [factor * n for n in volume.shape]
    coords = (np.indices(shape, dtype=np.float32) - (factor - 1) / 2) / factor
    data = ndimage.map_coordinates(
        np.asarray(volume, dtype=np.float32), coords, order=order, mode="nearest"
    )
    return data.astype(np.float32), fine


def _max_error_mm(fit: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    """Largest distance between where the fit and the truth put the points."""
    a = points @ fit[:3, :3].T + fit[:3, 3]
    b = points @ truth[:3, :3].T + truth[:3, 3]
    return float(np.linalg.norm(a - b, axis=1).max())


def main() -> None:
    from processing.geometry import rigid_matrix, volume_center_mm
    from processing.normalise.brain import bias_corrected
    from processing.normalise.normalise import RIGID_SETTINGS, register_epi_to_t1
    from processing.normalise.qc import lr_flip_check
    from processing.normalise.register import affine_register
    from processing.preprocess.masks import t1_brain_mask
    from processing.simulate.specs import BASE_SITES
    from processing.simulate.subject import build_subject

    space = build_subject(0, 0, BASE_SITES[0], "full")
    t1, t1_affine = finer_grid(space.t1_raw.T, space.t1_affine)
    mask = t1_brain_mask(t1, t1_affine)
    print(f"T1w {t1.shape} at 1 mm, brain {int(mask.sum())} voxels; EPI {space.baseline.shape}")
    centre = volume_center_mm(space.bold_affine, space.bold_shape[::-1])
    offset = rigid_matrix([3.0, -2.5, 4.0, *np.deg2rad([3.0, -2.0, 4.0])], centre)
    epi_affine = offset @ space.bold_affine
    truth = np.linalg.inv(offset)  # EPI header mm -> T1w mm
    brain_zyx = np.argwhere(space.bold_mask.T > 0)[::7]
    points = brain_zyx[:, ::-1] @ epi_affine[:3, :3].T + epi_affine[:3, 3]

    t0 = time.perf_counter()
    ours = register_epi_to_t1(space.baseline, epi_affine, t1, t1_affine, mask)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    fixed = np.where(mask, bias_corrected(t1, t1_affine, mask), 0.0)
    reference = affine_register(
        fixed, t1_affine, space.baseline, epi_affine, dof=6, init=np.eye(4),
        settings=RIGID_SETTINGS,
    )  # fmt: skip
    reference_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    flip = lr_flip_check(space.baseline, epi_affine, t1, t1_affine, mask, margin=0.03)
    flip_s = time.perf_counter() - t0

    print("| variant | seconds | largest error mm |")
    print("|---|---:|---:|")
    print(
        f"| boldcloud register_epi_to_t1 (T1w averaged to 2 mm) | {ours_s:.1f} | "
        f"{_max_error_mm(ours.moving_to_fixed, truth, points):.2f} |"
    )
    print(
        f"| reference: the same MI fit on the 1 mm T1w grid | {reference_s:.1f} | "
        f"{_max_error_mm(reference.moving_to_fixed, truth, points):.2f} |"
    )
    print(f"| boldcloud lr_flip_check (2 fits, 2 mm) | {flip_s:.1f} | flipped={flip.flipped} |")
    print(f"ratio reference / boldcloud (EPI -> T1w): {reference_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
