"""Noise-free measurement of the task bias that motion interpolation puts at the brain edge.

For each kept pre-session run of a finished simulated study, the subject's static EPI baseline
(no activation, no noise) is moved by the run's true motion with the simulator's interpolation
(``--sim-order``), moved back with the pipeline's motion resampling (``apply_motion``,
``--pipe-order``), and fitted with the run's own first-level design (the engine's design TSV:
task regressors, derivatives, motion confounds; plus a constant). Any task effect in the result
is an artefact of interpolation. Printed: the mean over brain-edge voxels (inside the mask, at
most one voxel from its border) of the artefactual z of each condition, using the simulator's
noise SD for the standard error, per order combination, with the t of the mean across runs.

    .venv/bin/python benchmarks/edge_bias.py --store STORE --bids BIDS [--subjects 8]

Trilinear (1) vs cubic B-spline (3) for each side; the session-6 numbers are in
benchmarks/README.md ("Edge bias in the single-session maps").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from processing.geometry import rigid_matrix, volume_center_mm
from processing.preprocess.motion import apply_motion
from processing.simulate.specs import site_specs
from processing.simulate.subject import build_subject

_SWAP = np.eye(4)[[2, 1, 0, 3]]
CONDITIONS = ("P40", "P0", "anticipation")


def move(baseline: np.ndarray, affine: np.ndarray, matrices: np.ndarray, order: int) -> np.ndarray:
    """Volumes ``V_t(q) = B(M_t^-1 q)`` as the simulator draws them, shape (n, z, y, x)."""
    mode = "grid-constant" if order == 3 else "constant"
    out = np.empty((len(matrices), *baseline.shape), np.float32)
    for t, matrix in enumerate(matrices):
        vox = _SWAP @ np.linalg.inv(affine) @ np.linalg.inv(matrix) @ affine @ _SWAP
        ndimage.affine_transform(
            baseline, vox[:3, :3], vox[:3, 3], output=out[t], order=order, mode=mode
        )
    return out


def edge_z(corrected: np.ndarray, design: pd.DataFrame, edge: np.ndarray, sigma: np.ndarray):
    """Mean over edge voxels of each condition's z (effect / noise-only standard error)."""
    x = np.column_stack([design.to_numpy(), np.ones(len(design))])
    pinv = np.linalg.pinv(x)
    beta = pinv @ corrected[:, edge]
    se = sigma[edge] * np.sqrt(np.diag(pinv @ pinv.T))[:, None]
    cols = list(design.columns)
    return [float((beta[cols.index(c)] / se[cols.index(c)]).mean()) for c in CONDITIONS]


def runs_of(store: Path, bids: Path, subject: str):
    """(design, true motion parameters) of each pre-session run the engine kept."""
    func = store / "derivatives" / "boldcloud" / subject / "ses-pre" / "func"
    truth = bids / "derivatives" / "truth" / subject / "ses-pre" / "func"
    for design_tsv in sorted(func.glob("*_design.tsv")):
        run = design_tsv.name.split("_run-")[1].split("_")[0]
        motion_tsv = next(truth.glob(f"*_run-{run}_desc-truemotion_timeseries.tsv"))
        params = pd.read_csv(motion_tsv, sep="\t").iloc[:, :6].to_numpy()
        yield pd.read_csv(design_tsv, sep="\t"), params


def measure(store: Path, bids: Path, n_subjects: int) -> dict[str, np.ndarray]:
    """Per order combination ``sim<a>_pipe<b>``: edge z per run, shape (runs, 3)."""
    args = json.loads((bids / "derivatives" / "truth" / "truth.json").read_text())["arguments"]
    site = site_specs(1)[0]
    results: dict[str, list] = {f"sim{a}_pipe{b}": [] for a in (1, 3) for b in (1, 3)}
    for index in range(n_subjects):
        space = build_subject(args["seed"], index, site, args["size"])
        baseline, affine = space.baseline.astype(np.float32), space.bold_affine
        mask = baseline > 0.25 * np.percentile(baseline, 98)
        edge = mask & (ndimage.distance_transform_edt(mask) <= 1)
        center = volume_center_mm(affine, baseline.shape[::-1])
        for design, params in runs_of(store, bids, f"sub-{index + 1:02d}"):
            matrices = rigid_matrix(params, center)
            for sim in (1, 3):
                moved = move(baseline, affine, matrices, sim)
                for pipe in (1, 3):
                    corrected = apply_motion(moved, params, affine, order=pipe)
                    results[f"sim{sim}_pipe{pipe}"].append(
                        edge_z(corrected, design, edge, space.sigma)
                    )
    return {k: np.array(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> None:
    """Print the edge bias per order combination."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="store of a finished run (local)")
    ap.add_argument("--bids", type=Path, required=True, help="simulated BIDS root")
    ap.add_argument("--subjects", type=int, default=8, help="first N subjects (default 8)")
    args = ap.parse_args(argv)
    for key, z in measure(args.store, args.bids, args.subjects).items():
        mean = z.mean(axis=0)
        t = mean / (z.std(axis=0, ddof=1) / np.sqrt(len(z)))
        cells = ", ".join(
            f"{c} {m:+.3f} (t {v:+.1f})" for c, m, v in zip(CONDITIONS, mean, t, strict=True)
        )
        print(f"{key}: {len(z)} runs; mean edge z: {cells}")


if __name__ == "__main__":
    main()
