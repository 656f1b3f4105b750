"""Null behaviour of a finished run's post - pre maps, away from the planted changes.

For each paired (post - pre) stack of a store made by ``boldcloud run`` on ``boldcloud
simulate`` output, over the group-mask voxels farther than ``--away-mm`` from every planted
ROI, binned by distance to the mask's edge: the voxelwise OLS one-sample t (mean, SD and the
fraction with |t| > 3.5, beside what Student's t with N - 1 dof gives), and the median ratio of
the across-subject variance to the mean lower-level variance (1 when the variance maps are
calibrated). Used to tell a chance false-positive cluster from an edge or processing artefact.

    .venv/bin/python benchmarks/null_by_edge.py --store STORE --bids BIDS
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from infra.manifest import Manifest
from infra.storage import Store

sys.path.insert(0, str(Path(__file__).parent))
from peak_uncertainty import paired_stack

CONTRASTS = ("P40", "P0", "P40vsP0", "anticipation")
EDGES_MM = (0.0, 4.1, 8.1, 16.1, np.inf)
T_LIMIT = 3.5


def table(store: Path, bids: Path, away_mm: float) -> list[dict]:
    """One row per contrast and edge-distance bin."""
    manifest = Manifest(Store(str(store)))
    truth = json.loads((bids / "derivatives" / "truth" / "truth.json").read_text())
    planted = np.array([r["mni_mm"] for r in truth["rois"]], dtype=float)
    rows = []
    for contrast in CONTRASTS:
        effect, variance, mask, affine, _ = paired_stack(store, manifest, contrast)
        idx = np.argwhere(mask)
        at = (slice(None), idx[:, 0], idx[:, 1], idx[:, 2])
        effect = np.asarray(effect[...], dtype=np.float64)[at]
        variance = np.asarray(variance[...], dtype=np.float64)[at]
        mm = idx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
        far = np.linalg.norm(mm[:, None] - planted[None], axis=2).min(axis=1) > away_mm
        voxel_mm = float(np.linalg.norm(affine[:3, 0]))
        edge = (ndimage.distance_transform_edt(mask) * voxel_mm)[tuple(idx.T)]
        n = effect.shape[0]
        t = effect.mean(0) / effect.std(0, ddof=1) * np.sqrt(n)
        ratio = effect.var(0, ddof=1) / variance.mean(0)
        for lo, hi in itertools.pairwise(EDGES_MM):
            k = far & (edge > lo) & (edge <= hi)
            rows.append({
                "contrast": contrast, "edge_mm": f"{lo:.0f}-{hi:.0f}", "voxels": int(k.sum()),
                "t_mean": float(t[k].mean()), "t_sd": float(t[k].std()),
                "t_sd_expected": float(stats.t(n - 1).std()),
                "beyond": float(np.mean(np.abs(t[k]) > T_LIMIT)),
                "beyond_expected": float(2 * stats.t(n - 1).sf(T_LIMIT)),
                "variance_ratio": float(np.median(ratio[k])),
            })  # fmt: skip
    return rows


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, type=Path, help="local store of the finished run")
    ap.add_argument("--bids", required=True, type=Path, help="simulated BIDS root")
    ap.add_argument("--away-mm", type=float, default=20.0, help="distance from planted ROIs")
    args = ap.parse_args()
    print("| contrast | edge mm | voxels | t mean | t SD (expected) | |t| > 3.5 (expected) | "
          "variance ratio |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in table(args.store, args.bids, args.away_mm):
        print(f"| {r['contrast']} | {r['edge_mm']} | {r['voxels']} | {r['t_mean']:+.3f} | "
              f"{r['t_sd']:.3f} ({r['t_sd_expected']:.3f}) | {r['beyond']:.4f} "
              f"({r['beyond_expected']:.4f}) | {r['variance_ratio']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
