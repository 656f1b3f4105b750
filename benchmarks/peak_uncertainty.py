"""How precisely can a correct analysis place the peak of a planted post - pre change?

For each planted change of a finished simulated study (``validate_study.py``'s criterion 1), the
paired analysis' stacked subject maps (``group_stack``: post - pre effects, N subjects) are
resampled by subject with replacement (a bootstrap of the cohort) and the one-sample t map (OLS,
the FLAME1 estimate's fixed-effects limit) is recomputed within ``--radius-mm`` of the planted
coordinate; the distance of each replicate's peak (on the planted side) to the planted
coordinate estimates how often a cohort like this one puts the peak within ``--peak-mm``. The
peak of the mean effect map and the median first-level variance profile are printed beside it:
a t peak that wanders while the effect peak does not points at the variance, not the signal.

    .venv/bin/python benchmarks/peak_uncertainty.py --store STORE --bids BIDS [--boot 500]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import zarr

from infra.manifest import Manifest
from infra.storage import Store

sys.path.insert(0, str(Path(__file__).parent))
from validate_study import (
    PAIRED_LABEL,
    blobs_of,
    conditions_of,
    contrast_label,
    contrast_weights,
    expected_sign,
    load_truth,
)


def paired_stack(store_root: Path, manifest: Manifest, contrast: str):
    """Effect and variance (lazy zarr arrays), mask, affine and subjects of a paired stack."""
    unit = f"ses-{PAIRED_LABEL}_task-cuff_contrast-{contrast}"
    rec = manifest.get("group_stack", unit)
    if rec is None or rec.state != "done":
        raise SystemExit(f"no finished group_stack record {unit!r} in the store")
    out = rec.outputs
    effect = zarr.open_array(str(store_root / out["effect"]), mode="r")
    variance = zarr.open_array(str(store_root / out["variance"]), mode="r")
    mask = np.asarray(zarr.open_array(str(store_root / out["mask"]), mode="r")[...], dtype=bool)
    affine = np.asarray(out["affine"], dtype=np.float64)
    return effect, variance, mask, affine, list(out["subjects"])


def _region(affine, mask, centre_mm, radius_mm):
    """(z, y, x) index arrays of mask voxels within radius_mm, and their mm coordinates
    (arrays are (z, y, x); the affine maps voxel (x, y, z) to mm)."""
    idx = np.argwhere(mask)
    mm = idx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
    keep = np.linalg.norm(mm - centre_mm, axis=1) <= radius_mm
    return tuple(idx[keep].T), mm[keep]


def peak_distances(effects, mm, centre, sign, n_boot, rng):
    """Distances (mm) of the bootstrap t peaks, and of the full-sample t and effect peaks."""
    n = effects.shape[0]

    def t_map(x):
        sd = x.std(axis=0, ddof=1)
        return np.where(sd > 0, x.mean(axis=0) / np.maximum(sd, 1e-12) * np.sqrt(n), 0.0)

    def dist(values):
        return float(np.linalg.norm(mm[np.argmax(sign * values)] - centre))

    boot = [dist(t_map(effects[rng.integers(0, n, n)])) for _ in range(n_boot)]
    return np.array(boot), dist(t_map(effects)), dist(effects.mean(axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--bids", type=Path, required=True)
    parser.add_argument("--boot", type=int, default=500)
    parser.add_argument("--radius-mm", type=float, default=12.0)
    parser.add_argument("--peak-mm", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    truth = load_truth(args.bids)
    manifest = Manifest(Store(str(args.store)))
    conditions = conditions_of(truth)
    rng = np.random.default_rng(args.seed)
    print(f"{'ROI':6s} {'contrast':13s} {'N':>3s} {'t peak mm':>9s} {'effect peak mm':>14s} "
          f"{'boot median mm':>14s} {'P(<= ' + str(args.peak_mm) + ' mm)':>12s} "
          f"{'var centre/edge':>15s}")  # fmt: skip
    for blob in blobs_of(truth):
        if not blob.changes:
            continue
        contrast = contrast_label(blob.analysis_contrast)
        sign = expected_sign(blob, contrast_weights(contrast, conditions))
        effect, variance, mask, affine, _ = paired_stack(args.store, manifest, contrast)
        centre = np.asarray(blob.mni_mm, dtype=np.float64)
        where, mm = _region(affine, mask, centre, args.radius_mm)
        effects = np.stack([np.asarray(effect[s])[where] for s in range(effect.shape[0])])
        variances = np.stack([np.asarray(variance[s])[where] for s in range(effect.shape[0])])
        valid = np.all(np.isfinite(effects), axis=0) & np.all(variances > 0, axis=0)
        effects, variances, mm = effects[:, valid], variances[:, valid], mm[valid]
        boot, t_mm, e_mm = peak_distances(effects, mm, centre, sign, args.boot, rng)
        r = np.linalg.norm(mm - centre, axis=1)
        med = np.median(variances, axis=0)
        ratio = med[r <= 2.5].mean() / med[r >= args.radius_mm - 2.5].mean()
        within = np.mean(boot <= args.peak_mm)
        print(f"{blob.name:6s} {contrast:13s} {effects.shape[0]:3d} {t_mm:9.1f} {e_mm:14.1f} "
              f"{np.median(boot):14.1f} {within:12.2f} {ratio:15.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
