"""Helpers comparing first-level maps with the simulator's planted effects (native space)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from infra.derivatives import read_nifti
from processing.simulate import load_subject_transform


def planted_map(truth: Path, sub: str, ses: str, contrast: str) -> np.ndarray:
    """The planted percent signal change of a contrast, (z, y, x) on the BOLD grid."""
    folder = truth / sub / ses / "func"

    def psc(cond: str) -> np.ndarray:
        name = f"{sub}_{ses}_task-cuff_space-T1w_res-bold_contrast-{cond}_stat-psc_statmap.nii.gz"
        return np.asarray(nib.load(folder / name).dataobj).T

    if contrast == "P40vsP0":
        return psc("P40") - psc("P0")
    return psc(contrast)


def local_peak(volume: np.ndarray, affine: np.ndarray, centre_mm, radius_mm: float):
    """(peak mm, value) of ``volume`` within ``radius_mm`` of ``centre_mm``."""
    zyx = np.indices(volume.shape).reshape(3, -1).T
    world = zyx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
    near = np.linalg.norm(world - np.asarray(centre_mm), axis=1) <= radius_mm
    values = volume.reshape(-1)[near]
    best = int(np.argmax(values))
    return world[near][best], float(values[best])


def roi_recovery(
    store, nifti: dict, truth: Path, sub: str, ses: str, contrast: str, min_psc: float = 1.0
) -> dict[str, dict[str, float]]:
    """Per planted ROI with >= ``min_psc`` % signal change in ``contrast``, where our maps put it.

    ``effect_mm``: distance from the planted peak to the peak of our effect (COPE) map near it,
    the estimate of where the effect is; ``z_at_effect``: our z there; ``z_peak_mm`` and
    ``z_peak``: the same for the z map's own peak, which also follows the spatial pattern of the
    noise variance, so it may sit a voxel or two off the effect.
    """
    z, affine = read_nifti(store, nifti[f"{contrast}:z"])
    effect, _ = read_nifti(store, nifti[f"{contrast}:effect"])
    planted = planted_map(truth, sub, ses, contrast)
    transform = load_subject_transform(truth, sub)
    rois = json.loads((truth / "truth.json").read_text())["rois"]
    out = {}
    for roi in rois:
        centre = transform.to_native(np.asarray(roi["mni_mm"], dtype=float))
        true_mm, true_psc = local_peak(planted, affine, centre, 12.0)
        if true_psc < min_psc:
            continue
        effect_mm, _ = local_peak(effect, affine, true_mm, 12.0)
        z_mm, z_peak = local_peak(z, affine, true_mm, 12.0)
        out[roi["name"]] = {
            "effect_mm": float(np.linalg.norm(effect_mm - true_mm)),
            "z_at_effect": value_at(z, affine, effect_mm),
            "z_peak_mm": float(np.linalg.norm(z_mm - true_mm)),
            "z_peak": z_peak,
        }
    return out


def value_at(volume: np.ndarray, affine: np.ndarray, world_mm) -> float:
    """The value of the voxel at world mm ``world_mm``."""
    ijk = np.rint(np.linalg.solve(affine, [*world_mm, 1.0])[:3]).astype(int)
    return float(volume[ijk[2], ijk[1], ijk[0]])
