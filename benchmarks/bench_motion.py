"""Motion-correction benchmark: one full-size synthetic run (98 x 98 x 75 x 188 at 2 mm).

The run is nilearn's MNI152 template in an EPI-like contrast (CSF > GM > WM), moved by a known
smooth trajectory with a 2 mm jerk (cubic-spline resampling), with Gaussian noise (tSNR ~60 in
grey matter). It is generated once and cached as .npy files; each worker reads its chunk of
volumes from the memory-mapped file and keeps its corrected chunk in memory.

Variants, each in its own spawned, warmed-up process (so ru_maxrss is the worker's own peak):

* boldcloud, 1 process: ``estimate_motion`` on the whole run, then ``apply_motion``.
* boldcloud, 2 processes: the same on two chunks of 94 volumes (ProcessPoolExecutor).
* SimpleITK (Euler3D, MeanSquares, regular-step gradient descent, shrink 4-2-1, 10 % random
  voxel sampling): registration of every ``--sitk-every``-th volume, extrapolated per volume.

    .venv/bin/python benchmarks/bench_motion.py [--sitk-every 10] [--cache DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

SHAPE_XYZ = (98, 98, 75)
VOXEL_MM = 2.0
N_VOLUMES = 188
SWAP = np.eye(4)[[2, 1, 0, 3]]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epi_template() -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) float32 EPI-like brain on the 98 x 98 x 75 2 mm grid, and its affine."""
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=2)
    t1 = np.asarray(tpl.get_fdata(), dtype=np.float64)
    epi = np.where(t1 > 0.05, np.interp(t1, [0.3, 0.66, 0.8, 1.0], [1.0, 0.75, 0.62, 0.6]), 0.0)
    epi = ndimage.gaussian_filter(epi * np.clip(t1 / 0.15, 0, 1), 0.5)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = [0.0, -18.0, 18.0] - (np.array(SHAPE_XYZ) - 1) / 2 * VOXEL_MM
    pull = np.linalg.inv(tpl.affine) @ affine  # our voxel -> template voxel, (i, j, k)
    kji = np.indices(SHAPE_XYZ[::-1], dtype=np.float64).reshape(3, -1)
    ijk_tpl = pull[:3, :3] @ kji[::-1] + pull[:3, 3:]
    image = ndimage.map_coordinates(epi, ijk_tpl, order=3, mode="constant").reshape(SHAPE_XYZ[::-1])
    return (1000.0 * np.clip(image, 0, None)).astype(np.float32), affine


def trajectory(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth wander (up to ~1.5 mm / 1.5 deg) plus a 2 mm jerk; zero at volume n // 2."""
    walk = ndimage.gaussian_filter1d(np.cumsum(rng.normal(size=(n, 6)), axis=0), 4.0, axis=0)
    walk -= walk.mean(axis=0)
    walk *= np.array([1.0, 1.5, 1.5, *np.deg2rad([1.5, 0.8, 0.8])]) / np.abs(walk).max(axis=0)
    walk[n // 3 :, 1:3] += [1.2, 1.6]  # a 2 mm step within one TR
    return walk - walk[n // 2]


def _move_chunk(args) -> None:
    from processing.geometry import rigid_matrix, volume_center_mm

    folder, start, stop = args
    image, affine = np.load(folder / "image.npy"), np.load(folder / "affine.npy")
    truth = np.load(folder / "truth.npy")
    run = np.load(folder / "run.npy", mmap_mode="r+")
    rng = np.random.default_rng(1000 + start)
    center = volume_center_mm(affine, image.shape[::-1])
    for t in range(start, stop):
        mat = rigid_matrix(truth[t], center)
        pull = SWAP @ np.linalg.inv(affine) @ np.linalg.inv(mat) @ affine @ SWAP
        vol = ndimage.affine_transform(image, pull[:3, :3], pull[:3, 3], order=3)
        run[t] = vol + rng.normal(0.0, 12.0, vol.shape).astype(np.float32)
    run.flush()


def make_run(folder: Path, pool: ProcessPoolExecutor) -> None:
    """Write image/affine/truth/run .npy files into ``folder`` unless already there."""
    if (folder / "done").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    image, affine = epi_template()
    np.save(folder / "image.npy", image)
    np.save(folder / "affine.npy", affine)
    np.save(folder / "truth.npy", trajectory(np.random.default_rng(0), N_VOLUMES))
    np.lib.format.open_memmap(
        folder / "run.npy", mode="w+", dtype=np.float32, shape=(N_VOLUMES, *image.shape)
    ).flush()
    half = N_VOLUMES // 2
    list(pool.map(_move_chunk, [(folder, 0, half), (folder, half, N_VOLUMES)]))
    (folder / "done").touch()


def _warm(_: int) -> int:
    import processing.preprocess.motion  # noqa: F401

    time.sleep(1.0)
    return 0


def correct_chunk(args) -> dict:
    """Worker: estimate + apply motion for volumes start..stop (output kept in memory: store
    writes are the ingest benchmark's business); returns parameters, timings and peak memory."""
    from processing.preprocess.motion import apply_motion, estimate_motion

    folder, start, stop = args
    run = np.load(folder / "run.npy", mmap_mode="r")
    affine = np.load(folder / "affine.npy")
    t0 = time.perf_counter()
    chunk = np.asarray(run[start:stop])
    reference = np.asarray(run[N_VOLUMES // 2], dtype=np.float32)
    t1 = time.perf_counter()
    params = estimate_motion(chunk, reference, affine)
    t2 = time.perf_counter()
    corrected = apply_motion(chunk, params, affine)
    t3 = time.perf_counter()
    return {
        "params": params,
        "read_s": t1 - t0,
        "estimate_s": t2 - t1,
        "apply_s": t3 - t2,
        "peak_mb": _peak_mb(),
        "checksum": float(corrected[:, ::8, ::8, ::8].sum()),
    }


def sitk_chunk(args) -> dict:
    """Worker: SimpleITK registration of the listed volumes (see module docstring)."""
    from sitk_reference import sitk_motion

    folder, indices = args
    run = np.load(folder / "run.npy", mmap_mode="r")
    affine = np.load(folder / "affine.npy")
    reference = np.asarray(run[N_VOLUMES // 2])
    t0 = time.perf_counter()
    params = sitk_motion((run[t] for t in indices), reference, affine)
    seconds = time.perf_counter() - t0
    return {"params": params, "seconds": seconds, "peak_mb": _peak_mb()}


def errors(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS error: translations (mm), rotations (degrees)."""
    err = est - truth
    return float(np.sqrt(np.mean(err[:, :3] ** 2))), float(
        np.rad2deg(np.sqrt(np.mean(err[:, 3:] ** 2)))
    )


def run_ours(folder: Path, workers: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(_warm, range(workers)))
        bounds = np.linspace(0, N_VOLUMES, workers + 1).astype(int)
        t0 = time.perf_counter()
        chunks = [(folder, a, b) for a, b in itertools.pairwise(bounds)]
        parts = list(pool.map(correct_chunk, chunks))
        wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "params": np.vstack([p["params"] for p in parts]),
        "estimate_s": sum(p["estimate_s"] for p in parts),
        "apply_s": sum(p["apply_s"] for p in parts),
        "read_s": sum(p["read_s"] for p in parts),
        "peak_mb": max(p["peak_mb"] for p in parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sitk-every", type=int, default=10, help="SimpleITK volume stride")
    parser.add_argument(
        "--cache", default=str(Path(tempfile.gettempdir()) / "boldcloud-bench-motion")
    )
    args = parser.parse_args()
    folder = Path(args.cache)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        t0 = time.perf_counter()
        make_run(folder, pool)
        print(f"synthetic run ready in {time.perf_counter() - t0:.1f} s ({folder})")
    truth = np.load(folder / "truth.npy")
    one, two = run_ours(folder, 1), run_ours(folder, 2)
    subset = list(range(0, N_VOLUMES, args.sitk_every))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        sitk = pool.submit(sitk_chunk, (folder, subset)).result()
    sitk_run_s = sitk["seconds"] / len(subset) * N_VOLUMES
    rows = [
        ("boldcloud, 1 process", one["wall_s"], one["estimate_s"], errors(one["params"], truth),
         one["peak_mb"]),
        ("boldcloud, 2 processes", two["wall_s"], two["estimate_s"], errors(two["params"], truth),
         two["peak_mb"]),
        (f"SimpleITK 10% ({len(subset)} vols, extrap.)", sitk_run_s, sitk_run_s,
         errors(sitk["params"], truth[subset]), sitk["peak_mb"]),
    ]  # fmt: skip
    max_rot = np.rad2deg(np.abs(truth[:, 3:]).max())
    print(
        f"run {SHAPE_XYZ} x {N_VOLUMES} at {VOXEL_MM} mm, float32; truth: max |trans| "
        f"{np.abs(truth[:, :3]).max():.2f} mm, max |rot| {max_rot:.2f} deg"
    )
    print(
        f"{'variant':38s} {'s/run':>7s} {'reg s/vol':>9s} {'trans mm':>8s} {'rot deg':>8s} peak MiB"
    )
    summary = {}
    for name, wall, est, (trans, rot), peak in rows:
        print(f"{name:38s} {wall:7.1f} {est / N_VOLUMES:9.3f} {trans:8.4f} {rot:8.4f} {peak:8.0f}")
        summary[name] = {"s_per_run": wall, "est_s_per_vol": est / N_VOLUMES, "peak_mb": peak,
                         "trans_rms_mm": trans, "rot_rms_deg": rot}  # fmt: skip
    for name, res in (("1 process", one), ("2 processes", two)):
        print(
            f"boldcloud, {name}: CPU seconds summed over workers: read {res['read_s']:.1f}, "
            f"estimate {res['estimate_s']:.1f}, resample {res['apply_s']:.1f}"
        )
    sub_trans, sub_rot = errors(one["params"][subset], truth[subset])
    print(f"boldcloud on SimpleITK's volumes: {sub_trans:.4f} mm, {sub_rot:.4f} deg RMS error")
    ratio_est, ratio_all = sitk_run_s / one["estimate_s"], sitk_run_s / one["wall_s"]
    print(
        f"time ratio SimpleITK / boldcloud, 1 process: registration {ratio_est:.1f}, "
        f"whole correction incl. resampling {ratio_all:.1f}"
    )
    print(
        f"targets: 2 processes < 60 s per run {'OK' if two['wall_s'] < 60 else 'MISSED'}; "
        f"peak < 2048 MiB per worker {'OK' if two['peak_mb'] < 2048 else 'MISSED'}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
