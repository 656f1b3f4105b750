"""Ground-truth tables (runs.tsv, subjects.tsv) and the truth.json document."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from processing.geometry import volume_center_mm
from processing.simulate.planting import Planted
from processing.simulate.specs import (
    AR1_RHO,
    MOTION_RADIUS_MM,
    MOTION_THRESHOLD_MM,
    ROIS,
    TEMPLATE_SPACE,
    SiteSpec,
)
from processing.simulate.writers import write_tsv

__all__ = ["truth_document", "write_tables"]

CONVENTIONS = {
    "world": "NIfTI world millimetres, RAS+; native space = the T1w world space, shared by the "
    "reference volume of every BOLD run",
    "transform": "native -> MNI: mni = A @ native + u(native) (A: "
    "sub-XX_from-T1w_to-MNI..._desc-affine_xfm.txt, u: ..._desc-displacement_xfm.nii.gz on the "
    "T1w grid); MNI -> native: native = inv(A) @ mni + v(mni) (v on the MNI grid)",
    "motion": "row t of desc-truemotion_timeseries.tsv holds trans (mm) and rot (rad) of M_t, "
    "which maps a point's world position in the reference volume to its position in volume t: "
    "M(x) = R (x - c) + c + t, R = Rz @ Ry @ Rx, c = world coordinate of the BOLD volume "
    "centre; volume t = reference image resampled at M_t^-1 (trilinear). Reference volume = "
    "n_volumes // 2, whose parameters are 0",
    "displacement": f"TR-to-TR displacement = RMS displacement of M_t inv(M_t-1) over a "
    f"{MOTION_RADIUS_MM:g} mm sphere at the volume centre (Jenkinson 2002, MCFLIRT rel rms); a "
    f"run is excluded when it exceeds {MOTION_THRESHOLD_MM:g} mm",
    "effects": "signal = baseline * (1 + sum_c psc_c / 100 * r_c(t)), r_c the condition's boxcar "
    "convolved with FSL's double-gamma HRF (plateau 1, sampled at (k + 0.5) TR); psc maps are "
    "Gaussian blobs defined in MNI mm (stat-psc_statmap files)",
}


def write_tables(
    truth: Path,
    ids: Sequence[str],
    roles: Sequence[str],
    subject_sites: Sequence[SiteSpec],
    plans: Sequence[dict],
    runs: Sequence,
) -> None:
    """Write ``runs.tsv`` (every run, planted displacement, exclusion) and ``subjects.tsv``."""
    write_tsv(
        truth / "runs.tsv",
        {
            "participant_id": [r.subject for r in runs],
            "session_id": [r.session for r in runs],
            "run": [r.run for r in runs],
            "site": [r.site for r in runs],
            "repetition_time": [r.tr for r in runs],
            "n_volumes": [r.n_volumes for r in runs],
            "max_rel_rms_mm": [f"{r.max_rel_rms_mm:.4f}" for r in runs],
            "max_translation_jump_mm": [f"{r.max_translation_jump_mm:.4f}" for r in runs],
            "exclude": ["true" if r.excluded else "false" for r in runs],
            "reason": [
                f"max TR-to-TR displacement {r.max_rel_rms_mm:.2f} mm > {MOTION_THRESHOLD_MM:g} mm"
                if r.excluded
                else "n/a"
                for r in runs
            ],
        },
    )
    usable = [
        {ses: sum(not bad for bad in plan.get(ses, {}).values()) for ses in ("pre", "post")}
        for plan in plans
    ]
    write_tsv(
        truth / "subjects.tsv",
        {
            "participant_id": list(ids),
            "site": [s.label for s in subject_sites],
            "role": list(roles),
            "usable_runs_pre": [u["pre"] for u in usable],
            "usable_runs_post": [u["post"] for u in usable],
            "in_pre_group": ["true" if u["pre"] else "false" for u in usable],
            "in_post_group": ["true" if u["post"] else "false" for u in usable],
            "in_paired": ["true" if u["pre"] and u["post"] else "false" for u in usable],
        },
    )


def truth_document(
    arguments: dict,
    ids: Sequence[str],
    roles: Sequence[str],
    subject_sites: Sequence[SiteSpec],
    spaces: dict[str, dict],
    planted: Planted,
    runs: Sequence,
) -> dict:
    """The content of ``truth.json``: arguments, conventions, ROIs, subjects, correlations."""
    sites = {s.label: s for s in subject_sites}
    subjects = {}
    for i, sid in enumerate(ids):
        info = spaces[sid]
        subjects[sid] = {
            "site": subject_sites[i].label,
            "role": roles[i],
            "bold_volume_center_mm": volume_center_mm(info["bold_affine"], info["bold_shape"]),
            "roi_native_mm": info["roi_native_mm"],
            "amplitudes_psc": planted.amplitudes[i],
            "roi_change_psc": {
                roi.name: float(planted.changes[roi.name][i]) for roi in ROIS if roi.change_on
            },
        }
    return {
        "arguments": arguments,
        "template": {
            "space": TEMPLATE_SPACE,
            "source": "nilearn.datasets.load_mni152_template(resolution=2) and "
            "load_mni152_brain_mask(resolution=2)",
        },
        "conventions": CONVENTIONS,
        "noise": {"ar1_rho": AR1_RHO},
        "motion": {
            "threshold_mm": MOTION_THRESHOLD_MM,
            "radius_mm": MOTION_RADIUS_MM,
            "excluded_runs": sum(r.excluded for r in runs),
        },
        "sites": {
            label: {
                "repetition_time": s.tr,
                "n_volumes": s.n_volumes,
                "voxel_mm": s.grid(arguments["size"])[0],
                "matrix": s.grid(arguments["size"])[1],
                "intensity": s.intensity,
                "noise": s.noise,
            }
            for label, s in sorted(sites.items())
        },
        "rois": [
            {
                "name": roi.name,
                "description": roi.description,
                "mni_mm": roi.mni_mm,
                "fwhm_mm": roi.fwhm_mm,
                "change_fwhm_mm": roi.change_extent_mm if roi.change_on else None,
                "pre_mean_sd_psc": roi.pre,
                "analysis_contrast": roi.contrast,
                "change_condition": roi.change_on,
                "change_mean_sd_psc": roi.change,
                "clinical_measure": roi.measure,
                "target_r": roi.target_r,
            }
            for roi in ROIS
        ],
        "correlations": planted.correlations,
        "subjects": subjects,
    }
