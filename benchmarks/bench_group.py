"""Group-level permutation inference and FLAME1 at MNI 2 mm, beside nilearn and a naive loop.

One-sample N = 18 sign flipping with cluster extent/mass (cluster-forming Z > 2.3, one-sided) on
the MNI152 2 mm brain mask (~235k voxels), smooth random maps with a planted blob:

* boldcloud ``permutation_batch``: all permutations of a batch as one matrix product, clusters
  labelled on the suprathreshold voxels only; 1 process, and batches on a 2-process pool
  (the engine's 2 Dask workers);
* naive reference: one permutation at a time, ``numpy.linalg.lstsq`` refit, t map scattered to
  the volume, ``scipy.ndimage.label`` (measured on a few permutations, extrapolated);
* nilearn ``non_parametric_inference`` on the same images and mask (``threshold`` =
  ``norm.sf(2.3)``, ``two_sided_test=False``), fewer permutations, extrapolated. Its sign flips
  are reproduced exactly and boldcloud computes the maxima for those flips with nilearn's
  6-connectivity, so the cluster FWE p values can be compared one to one;
* FLAME1 (REML per voxel) on the whole mask.

    .venv/bin/python benchmarks/bench_group.py [--perms 1000] [--nilearn-perms 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

from processing.group.designs import one_sample_design
from processing.group.flame import flame1, ols
from processing.group.permutation import (
    Permutations,
    cluster_forming_t,
    make_permutations,
    permutation_batch,
)
from processing.group.tfce import connectivity_structure, tfce_step

N = 18


def make_data(seed: int = 0):
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=2)
    mask = np.asarray(img.get_fdata() > 0)
    rng = np.random.default_rng(seed)
    sigma = 3.0 / 2.3548  # FWHM 3 voxels (6 mm)
    maps = ndimage.gaussian_filter(rng.normal(size=(N, *mask.shape)), (0, sigma, sigma, sigma))
    maps /= maps[:, mask].std()
    blob = np.zeros(mask.shape)
    centre = tuple(int(v) for v in np.round(np.linalg.inv(img.affine) @ [56, -44, 30, 1])[:3])
    blob[centre] = 1
    blob = ndimage.gaussian_filter(blob, 2.5)
    maps += 0.8 * blob / blob.max()
    maps *= mask
    return img.affine, mask, maps


_WORKER: dict = {}


def _init(data, mask):
    """Hold the data in each worker once (as a Dask worker holds a scattered array)."""
    _WORKER["data"], _WORKER["mask"] = data, mask


def _batch(args):
    b, n_batches, n_perm = args
    perms = make_permutations(N, n_perm, seed=1, batch=b, n_batches=n_batches)
    return permutation_batch(_WORKER["data"], one_sample_design(N), "mean", perms, _WORKER["mask"])


def ours(data, mask, n_perm, workers):
    design = one_sample_design(N)
    t0 = time.perf_counter()
    out = permutation_batch(data, design, "mean", make_permutations(N, n_perm, seed=1), mask)
    serial = time.perf_counter() - t0
    n_batches = 2 * workers
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(data, mask)) as pool:
        list(pool.map(_batch, [(0, 64, 16)] * workers))  # start and warm the workers
        t0 = time.perf_counter()
        parts = list(pool.map(_batch, [(b, n_batches, n_perm) for b in range(n_batches)]))
        parallel = time.perf_counter() - t0
    merged = np.concatenate([p["max_extent"] for p in parts])
    assert np.array_equal(merged, out["max_extent"]), "batches must reproduce the serial run"
    return serial, parallel


def naive(data, mask, n_perm):
    """One permutation at a time: lstsq refit, scatter, ndimage.label."""
    x = np.ones((N, 1))
    thr = cluster_forming_t(2.3, N - 1)
    structure = connectivity_structure(26)
    perms = make_permutations(N, n_perm, seed=1)
    t0 = time.perf_counter()
    for k in range(n_perm):
        y = perms.signs[k][:, None] * data
        beta, res, *_ = np.linalg.lstsq(x, y, rcond=None)
        t = beta[0] / np.sqrt(res / (N - 1) / N)
        vol = np.zeros(mask.shape)
        vol[mask] = t
        labels, _ = ndimage.label(vol > thr, structure)
        np.bincount(labels.ravel())
    return time.perf_counter() - t0


def nilearn_flips(random_state: int, n_perm: int) -> Permutations:
    """The sign flips nilearn's permuted_ols draws with n_jobs=1 (cumulative, identity added)."""
    seed = np.random.RandomState(random_state).randint(1, np.iinfo(np.int32).max - 1)
    rng = np.random.RandomState(seed)
    signs = [np.ones(N)]
    current = np.ones(N)
    for _ in range(n_perm):
        current = current * (rng.randint(2, size=(N, 1)) * 2 - 1)[:, 0]
        signs.append(current.copy())
    s = np.array(signs, dtype=np.float64)
    orders = np.tile(np.arange(N), (n_perm + 1, 1))
    return Permutations(s, orders, np.arange(n_perm + 1), n_perm + 1, False)


def nilearn_run(affine, mask, maps, n_perm, n_jobs):
    import pandas as pd
    from nilearn.glm.second_level import non_parametric_inference

    imgs = [nib.Nifti1Image(m.astype(np.float32), affine) for m in maps]
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    t0 = time.perf_counter()
    out = non_parametric_inference(
        imgs,
        design_matrix=pd.DataFrame({"intercept": np.ones(N)}),
        second_level_contrast="intercept",
        mask=mask_img,
        n_perm=n_perm,
        two_sided_test=False,
        random_state=0,
        n_jobs=n_jobs,
        threshold=float(stats.norm.sf(2.3)),
    )
    return time.perf_counter() - t0, out


def compare_p(out, data, mask, n_perm):
    """Cluster FWE p from boldcloud maxima on nilearn's flips vs nilearn's p, per cluster."""
    perms = nilearn_flips(0, n_perm)
    mx = permutation_batch(
        data.astype(np.float32).astype(np.float64), one_sample_design(N), "mean", perms, mask,
        connectivity=6,
    )  # fmt: skip
    t = out["t"].get_fdata()
    labels, n = ndimage.label(t > cluster_forming_t(2.3, N - 1), connectivity_structure(6))
    worst = 0.0
    for metric, key in (("size", "max_extent"), ("mass", "max_mass")):
        p_nilearn = 10 ** -out[f"logp_max_{metric}"].get_fdata()
        null = mx[key][1:]  # nilearn's null leaves the identity out
        for lab in range(1, n + 1):
            inside = labels == lab
            obs = (
                inside.sum()
                if metric == "size"
                else (t[inside] - cluster_forming_t(2.3, N - 1)).sum()
            )
            p_ours = np.clip(np.mean(null >= obs - 1e-6 * abs(obs)), 1 / n_perm, 1 - 1 / n_perm)
            worst = max(worst, abs(p_ours - p_nilearn[inside][0]))
    return worst, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--perms", type=int, default=1000)
    ap.add_argument("--nilearn-perms", type=int, default=50)
    ap.add_argument("--naive-perms", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tfce-perms", type=int, default=5)
    ap.add_argument("--skip-nilearn", action="store_true")
    args = ap.parse_args()
    affine, mask, maps = make_data()
    data = maps[:, mask].astype(np.float32).astype(np.float64)
    print(f"N = {N}, {mask.sum()} voxels (MNI152 2 mm mask), load {os.getloadavg()[0]:.1f}")
    t_naive = naive(data, mask, args.naive_perms) / args.naive_perms
    serial, parallel = ours(data, mask, args.perms, args.workers)
    rows = [
        (f"boldcloud, 1 process ({args.perms} perms)", serial / args.perms),
        (f"boldcloud, {args.workers} processes ({args.perms} perms)", parallel / args.perms),
        (f"naive loop (lstsq + ndimage.label), {args.naive_perms} perms", t_naive),
    ]
    design = one_sample_design(N)
    dh = tfce_step(ols(data, design, "mean").t)
    t0 = time.perf_counter()
    perms = make_permutations(N, args.tfce_perms, seed=1)
    permutation_batch(data, design, "mean", perms, mask, z_threshold=None, tfce_dh=dh)
    rows.append((f"boldcloud TFCE only, 1 process ({args.tfce_perms} perms)",
                 (time.perf_counter() - t0) / args.tfce_perms))  # fmt: skip
    if not args.skip_nilearn:
        for jobs in (1, 2):
            secs, out = nilearn_run(affine, mask, maps, args.nilearn_perms, jobs)
            name = f"nilearn non_parametric_inference n_jobs={jobs}, {args.nilearn_perms} perms"
            rows.append((name, secs / args.nilearn_perms))
            if jobs == 1:
                worst, n_clusters = compare_p(out, data, mask, args.nilearn_perms)
    s = np.random.default_rng(1).uniform(0.02, 0.2, size=data.shape)  # varcopes
    t0 = time.perf_counter()
    fit = flame1(data, s, one_sample_design(N), "mean")
    t_flame = time.perf_counter() - t0
    print(f"\n{'variant':70s} {'ms/perm':>9s} {'s/1000':>8s}")
    for name, per in rows:
        print(f"{name:70s} {per * 1e3:9.2f} {per * 1e3:8.1f}")
    best = rows[1][1]
    for name, per in rows[2:]:
        if "TFCE" in name:
            continue
        print(f"ratio {name.split(',')[0]} / boldcloud {args.workers} processes: {per / best:.1f}x")
    if not args.skip_nilearn:
        print(f"cluster FWE p, boldcloud on nilearn's flips vs nilearn ({n_clusters} clusters): "
              f"largest difference {worst:.3g}")  # fmt: skip
    print(f"FLAME1 N={N}, {mask.sum()} voxels: {t_flame:.1f} s (max {fit.iterations} iterations)")


if __name__ == "__main__":
    main()
