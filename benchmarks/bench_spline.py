"""Cubic B-spline resampling: ``processing.spline`` against ``scipy.ndimage.affine_transform``
(order 3, the reference) on the same full-size volume (98 x 98 x 75, a smoothed random image
with a sharp edge) and the same small rigid move, in one process, one thread each.

Prints, per boundary mode, the median seconds per volume of each (after one warm-up call, so
numba's compilation is not counted), the speed ratio and the largest absolute difference.

    .venv/bin/python benchmarks/bench_spline.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from processing.spline import cubic_coefficients, resample_cubic

SHAPE = (75, 98, 98)  # (z, y, x)


def _timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    volume = (ndimage.gaussian_filter(rng.standard_normal(SHAPE), 2.0) * 300 + 900).astype(
        np.float32
    )
    volume[:, :, :20] = 0.0
    rotation = Rotation.from_euler("xyz", [0.02, -0.015, 0.01]).as_matrix()
    centre = (np.array(SHAPE) - 1) / 2
    offset = centre - rotation @ centre + np.array([0.3, -0.7, 1.2])
    print(f"{'mode':14s} {'scipy s':>8s} {'boldcloud s':>11s} {'ratio':>6s} {'max |diff|':>10s}")
    for mode in ("nearest", "grid-constant"):
        ref_s, ref = _timed(
            lambda mode=mode: ndimage.affine_transform(
                volume, rotation, offset, order=3, mode=mode, output=np.float32
            ),
            args.repeats,
        )
        ours_s, ours = _timed(
            lambda mode=mode: resample_cubic(
                cubic_coefficients(volume, mode), rotation, offset, np.empty(SHAPE, np.float32)
            ),
            args.repeats,
        )
        diff = float(np.abs(ours - ref).max())
        print(f"{mode:14s} {ref_s:8.3f} {ours_s:11.3f} {ref_s / ours_s:6.1f} {diff:10.2e}")


if __name__ == "__main__":
    main()
