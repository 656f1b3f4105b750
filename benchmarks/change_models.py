"""Would another model of subjects' post - pre changes make the planted t peaks localisable?

The simulator plants each subject's change as one scaled pattern, ``c_i g(x)`` (``g`` a Gaussian
blob of the change's FWHM, ``c_i`` its amplitude, correlated with a clinical score). Where the
spread of ``c_i`` dominates the measurement noise, the one-sample t map is flat over the blob
and its peak wanders (``peak_uncertainty.py``). This script swaps the planted change in a
finished store's paired subject maps for another model and measures, on the same measurement
noise, where the OLS t peak lands and whether the cluster stays significant:

``pattern``
    the simulator's model: ``c_i g(x)`` with ``c_i = m + s (r z_i + sqrt(1 - r^2) e_i)``.
``field``
    only the clinical part scales the pattern, the rest is a stationary smooth Gaussian field
    ``u_i(x)`` (FWHM ``--field-fwhm``, unit variance) conditioned on ``u_i(centre) = e_i``:
    ``(m + s r z_i) g(x) + s sqrt(1 - r^2) u_i(x)``. At the centre each subject's change is
    distributed as before; elsewhere the between-subject spread no longer follows ``g``.

``--fwhm F`` draws the new change on a blob of FWHM ``F`` instead of the planted one;
``--core W F`` replaces ``g`` by ``W g_F + (1 - W) g`` (a peaked core of FWHM ``F`` mm on the
broad blob). Per draw: cluster p from ``--perms`` random sign flips (cluster extent, both sides,
Z 2.3 equivalent, 26-connectivity), the t peak's distance within 12 mm of the planted
coordinate, and the fraction of ``--boot`` bootstrap cohorts whose t peak is within 6 mm.

    .venv/bin/python benchmarks/change_models.py --store STORE --bids BIDS --model field \
        --field-fwhm 8 --draws 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from infra.manifest import Manifest
from infra.storage import Store

sys.path.insert(0, str(Path(__file__).parent))
from peak_uncertainty import paired_stack
from validate_study import load_truth

FWHM_TO_SIGMA = 1.0 / np.sqrt(8.0 * np.log(2.0))
CONTRASTS = {"P40vsP0": ("rTPJ",), "anticipation": ("dlPFC", "vPCC")}


def _mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World mm of every voxel of a (z, y, x) array, shape (*shape, 3)."""
    z, y, x = np.indices(shape)
    return np.stack([x, y, z], axis=-1) @ affine[:3, :3].T + affine[:3, 3]


def _gauss(mm: np.ndarray, centre: np.ndarray, fwhm: float) -> np.ndarray:
    sigma = fwhm * FWHM_TO_SIGMA
    return np.exp(-((mm - centre) ** 2).sum(axis=-1) / (2 * sigma**2))


def _field(rng, shape, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Stationary Gaussian field of unit variance and the given FWHM (periodic smoothing)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), fwhm_mm * FWHM_TO_SIGMA / voxel_mm,
                                    mode="wrap")  # fmt: skip
    return noise / noise.std()


def _t(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0) / x.std(axis=0, ddof=1) * np.sqrt(x.shape[0])


def _largest_cluster(t: np.ndarray, threshold: float) -> int:
    best = 0
    for sign in (1, -1):
        labels, n = ndimage.label(sign * t > threshold, np.ones((3, 3, 3)))
        if n:
            best = max(best, int(np.bincount(labels.ravel())[1:].max()))
    return best


def _changes(truth: dict, subjects: list[str], roi: dict) -> np.ndarray:
    cond = roi["change_condition"]
    amps = [truth["subjects"]["sub-" + s]["amplitudes_psc"] for s in subjects]
    return np.array([a["post"][roi["name"]][cond] - a["pre"][roi["name"]][cond] for a in amps])


def _replant(args, rng, truth, effect, mask, affine, subjects, names):
    """The subject maps with each named ROI's planted change swapped for the chosen model."""
    mm = _mm(affine, mask.shape)
    voxel_mm = float(abs(affine[0, 0]))
    n = effect.shape[0]
    out = effect.astype(np.float64)
    field = None
    if args.model == "field":
        field = np.stack([_field(rng, mask.shape, args.field_fwhm, voxel_mm) for _ in range(n)])
    rho_sigma2 = 2 * (args.field_fwhm * FWHM_TO_SIGMA) ** 2
    rois = {r["name"]: r for r in truth["rois"]}
    points = []
    for name in names:
        roi, centre = rois[name], np.asarray(rois[name]["mni_mm"], dtype=np.float64)
        planted = _gauss(mm, centre, roi["change_fwhm_mm"])
        new = planted if args.fwhm is None else _gauss(mm, centre, args.fwhm)
        if args.core is not None:
            new = args.core[0] * _gauss(mm, centre, args.core[1]) + (1 - args.core[0]) * new
        change = _changes(truth, subjects, roi)
        near = (np.linalg.norm(mm - centre, axis=-1) < 6) & mask
        design = change[:, None] * planted[near][None]
        units = (out[:, near] * design).sum() / (design**2).sum()  # map units per % change
        out -= units * change[:, None, None, None] * planted[None]
        mean, sd = roi["change_mean_sd_psc"]
        r = abs(roi["target_r"])
        clinical, rest = rng.standard_normal(n), rng.standard_normal(n)
        if args.model == "pattern":
            amp = mean + sd * (r * clinical + np.sqrt(1 - r * r) * rest)
            out += units * amp[:, None, None, None] * new[None]
            continue
        out += units * (mean + sd * r * clinical)[:, None, None, None] * new[None]
        ijk = np.rint(np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])).astype(int)[::-1]
        kernel = np.exp(-((mm - centre) ** 2).sum(axis=-1) / (2 * rho_sigma2))
        points.append((tuple(ijk), kernel, rest, units * sd * np.sqrt(1 - r * r)))
    if points:  # one field per subject, conditioned on each ROI centre's value (far apart)
        for i in range(n):
            for ijk, kernel, rest, _ in points:
                field[i] += (rest[i] - field[i][ijk]) * kernel
        out += np.mean([p[3] for p in points]) * field
    return out, mm


def _measure(args, rng, maps, mask, mm, centres):
    n = maps.shape[0]
    inside = maps[:, mask]
    threshold = stats.t.isf(stats.norm.sf(2.3), n - 1)
    t = np.zeros(mask.shape)
    t[mask] = _t(inside)
    null = []
    for _ in range(args.perms):
        flipped = np.zeros(mask.shape)
        flipped[mask] = _t(inside * rng.choice([-1.0, 1.0], n)[:, None])
        null.append(_largest_cluster(flipped, threshold))
    null = np.asarray(null)
    rows = {}
    for name, (centre, sign) in centres.items():
        labels, _ = ndimage.label((sign * t > threshold) & mask, np.ones((3, 3, 3)))
        dist = np.linalg.norm(mm - centre, axis=-1)
        region = np.flatnonzero(((dist <= 12) & mask).ravel())
        peak = region[np.argmax(sign * t.ravel()[region])]
        label = labels.ravel()[peak]
        size = int((labels == label).sum()) if label else 0
        local, d = maps.reshape(n, -1)[:, region], dist.ravel()[region]
        boot = [
            d[np.argmax(sign * _t(local[rng.integers(0, n, n)]))] <= 6 for _ in range(args.boot)
        ]
        rows[name] = {"peak_mm": float(dist.ravel()[peak]), "voxels": size,
                      "p": (1 + int((null >= size).sum())) / (1 + args.perms),
                      "boot_within_6mm": float(np.mean(boot))}  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--bids", type=Path, required=True)
    parser.add_argument("--model", choices=("pattern", "field"), default="pattern")
    parser.add_argument("--field-fwhm", type=float, default=8.0)
    parser.add_argument("--fwhm", type=float, help="FWHM (mm) of the new change blobs")
    parser.add_argument("--core", type=float, nargs=2, metavar=("WEIGHT", "FWHM"))
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--perms", type=int, default=200)
    parser.add_argument("--boot", type=int, default=300)
    args = parser.parse_args()
    truth = load_truth(args.bids)
    manifest = Manifest(Store(str(args.store)))
    rois = {r["name"]: r for r in truth["rois"]}
    results: dict[str, list[dict]] = {}
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        for contrast, names in CONTRASTS.items():
            effect, _, mask, affine, subjects = paired_stack(args.store, manifest, contrast)
            effect = np.asarray(effect[...])
            maps, mm = _replant(args, rng, truth, effect, mask, affine, subjects, names)
            centres = {n: (np.asarray(rois[n]["mni_mm"], dtype=np.float64),
                           np.sign(rois[n]["change_mean_sd_psc"][0])) for n in names}  # fmt: skip
            for name, row in _measure(args, rng, maps, mask, mm, centres).items():
                results.setdefault(name, []).append(row)
    print(f"model {args.model}, change FWHM {args.fwhm or 'as planted'}, field FWHM "
          f"{args.field_fwhm}, core {args.core}, "
          f"{args.draws} draws")  # fmt: skip
    print(f"{'ROI':6s} {'peak <= 6 mm':>12s} {'boot <= 6 mm':>12s} {'p < 0.05':>9s} {'voxels':>7s}")
    for name, rows in results.items():
        print(f"{name:6s} {np.mean([r['peak_mm'] <= 6 for r in rows]):12.2f} "
              f"{np.mean([r['boot_within_6mm'] for r in rows]):12.2f} "
              f"{np.mean([r['p'] < 0.05 for r in rows]):9.2f} "
              f"{np.mean([r['voxels'] for r in rows]):7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
