"""The stage table: what the pipeline computes, as plain data the engine executes.

Each :class:`Stage` names its kernel (a pure function in ``processing``), the logical inputs it
reads and outputs it writes, the unit it fans out over (``granularity``) and the array axis along
which a task may be split into chunks (``chunk_axis``). The engine (``infra``) turns this table,
a study and a dataset listing into tasks; it knows nothing else about the science.

Contract (see docs/design.md, "Stage table"):

- ``name`` is stable: it appears in store paths and manifest records.
- ``version`` changes whenever the kernel's numbers change; it is part of every task key, so a
  new version recomputes that stage and everything downstream of it.
- ``params`` are dotted paths into the study file; only these parameters enter the task key.
- ``inputs``/``outputs`` are logical keys ``<area>:<name>`` (``source:bold``, ``raw:bold``...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from processing.firstlevel.between_run import align_run, resample_to_reference
from processing.firstlevel.design import build_design
from processing.firstlevel.design_qc import check_design
from processing.firstlevel.film import residual_autocorrelation, smooth_autocorrelation
from processing.firstlevel.fit import contrast_maps, fit_noise_model
from processing.firstlevel.fixed_effects import fixed_effects
from processing.firstlevel.glm import fit_ols
from processing.group.clinical import correlation_matrix, paired_tests, roi_correlations
from processing.group.clusters import cluster_table
from processing.group.designs import paired_differences
from processing.group.flame import data_mask, flame1, ols
from processing.group.grf import estimate_smoothness, grf_cluster_p
from processing.group.model_design import model_design
from processing.group.permutation import (
    combine_batches,
    fwe_p,
    make_permutations,
    permutation_batch,
)
from processing.group.roi import roi_psc, sphere_mask
from processing.ingest.events import validate_events
from processing.ingest.nifti import inspect_bold_header
from processing.noise_correlation import lag1_correlation, residual_lag1_sums
from processing.normalise.normalise import normalise_epi, normalise_t1, register_epi_to_t1
from processing.normalise.resample import resample_to_template
from processing.preprocess.highpass import highpass_fsl
from processing.preprocess.masks import epi_brain_mask
from processing.preprocess.motion import (
    apply_motion,
    confounds_table,
    estimate_motion,
    motion_exclusion,
    select_reference,
)
from processing.preprocess.qc import tsnr
from processing.preprocess.scaling import grand_mean_scale
from processing.preprocess.smoothing import smooth_mm

Granularity = Literal["run", "session", "subject", "group"]
ChunkAxis = Literal["time", "space", "subject", "none"]


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    kernels: tuple[Callable[..., object], ...]
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    granularity: Granularity
    chunk_axis: ChunkAxis
    params: tuple[str, ...] = ()
    description: str = ""


STAGES: tuple[Stage, ...] = (
    Stage(
        name="ingest",
        kernels=(inspect_bold_header, validate_events),
        version="1",
        inputs=("source:bold", "source:sidecar", "source:events"),
        outputs=("raw:bold",),
        granularity="run",
        chunk_axis="time",
        params=(),
        description="BIDS NIfTI run -> Zarr (t, z, y, x), exact data, header kept.",
    ),
    Stage(
        name="motion_reference",
        kernels=(select_reference, epi_brain_mask),
        version="1",
        inputs=("raw:bold",),
        outputs=("work:reference", "work:mask"),
        granularity="run",
        chunk_axis="none",
        params=("preprocessing.reference_volume",),
        description="Motion reference (middle volume, mean or index) and its brain mask.",
    ),
    Stage(
        name="motion_estimate",
        kernels=(estimate_motion,),
        version="1",
        inputs=("raw:bold", "work:reference", "work:mask"),
        outputs=("work:params",),
        granularity="run",
        chunk_axis="time",
        description="Rigid 6-parameter realignment of chunks of volumes to the reference.",
    ),
    Stage(
        name="motion",
        kernels=(confounds_table, motion_exclusion),
        version="1",
        inputs=("work:params",),
        outputs=("derivatives:confounds", "derivatives:motion_plot"),
        granularity="run",
        chunk_axis="none",
        params=("preprocessing.motion_exclusion_mm",),
        description="Confounds, FD and RMS displacement; excludes runs over the threshold.",
    ),
    Stage(
        name="preprocess",
        kernels=(apply_motion, smooth_mm),
        version="1",
        inputs=("raw:bold", "derivatives:confounds", "work:mask"),
        outputs=("work:smoothed",),
        granularity="run",
        chunk_axis="time",
        params=("preprocessing.smoothing_fwhm_mm", "preprocessing.interpolation"),
        description="One resampling that undoes motion, then Gaussian smoothing in the mask.",
    ),
    Stage(
        name="filter",
        kernels=(grand_mean_scale, highpass_fsl, tsnr),
        version="1",
        inputs=("work:smoothed", "work:mask"),
        outputs=("work:filtered", "derivatives:mask", "derivatives:mean", "derivatives:tsnr"),
        granularity="run",
        chunk_axis="space",
        params=("preprocessing.grand_mean_scaling", "preprocessing.highpass_cutoff_s"),
        description="Grand-mean scaling, FSL high-pass, rechunk to spatial blocks, QC maps.",
    ),
    Stage(
        name="design",
        kernels=(build_design, check_design),
        version="1",
        inputs=("raw:events", "derivatives:confounds"),
        outputs=("derivatives:design",),
        granularity="run",
        chunk_axis="none",
        params=(
            "preprocessing.highpass_cutoff_s",
            "boldcloud.run_level.confounds",
            "boldcloud.run_level.drop_empty_conditions",
        ),
        description="Run design: HRF-convolved conditions (+ derivatives), confounds, "
        "high-passed and demeaned like the data; rank, VIF and empty-condition checks.",
    ),
    Stage(
        name="glm_autocorr",
        kernels=(fit_ols, residual_autocorrelation),
        version="1",
        inputs=("work:filtered", "derivatives:design"),
        outputs=("work:autocorr_raw",),
        granularity="run",
        chunk_axis="space",
        description="FILM, or ar1 with the bias correction: OLS residual autocorrelation per "
        "spatial block.",
    ),
    Stage(
        name="glm_autocorr_smooth",
        kernels=(smooth_autocorrelation,),
        version="1",
        inputs=("work:autocorr_raw", "work:mask"),
        outputs=("work:autocorr",),
        granularity="run",
        chunk_axis="none",
        description="FILM, or ar1 with the bias correction: autocorrelation maps smoothed "
        "within the brain (5 mm).",
    ),
    Stage(
        name="glm",
        kernels=(fit_noise_model, contrast_maps, residual_lag1_sums),
        version="3",  # 3: sums for the noise's spatial lag-1 correlation
        inputs=("work:filtered", "derivatives:design", "work:autocorr"),
        outputs=("work:glm_blocks",),
        granularity="run",
        chunk_axis="space",
        params=("boldcloud.run_level.noise_model", "boldcloud.run_level.autocorr_bias_correction"),
        description="GLM fit (ols, ar1 or FILM) and contrasts per spatial block.",
    ),
    Stage(
        name="glm_maps",
        kernels=(lag1_correlation,),
        version="2",  # 2: the run's noise lag-1 correlation
        inputs=("work:glm_blocks",),
        outputs=("work:run_maps", "derivatives:statmap"),
        granularity="run",
        chunk_axis="none",
        description="Whole-run effect, variance, t, z and residual-variance maps (NIfTI + Zarr), "
        "and the noise's spatial lag-1 correlation from the blocks' OLS residuals.",
    ),
    Stage(
        name="fixed_effects",
        kernels=(align_run, resample_to_reference, fixed_effects),
        version="3",  # 3: the session's noise lag-1 correlation
        inputs=("work:run_maps",),
        outputs=("work:session_maps", "derivatives:statmap"),
        granularity="session",
        chunk_axis="none",
        params=("boldcloud.session_level.dof_cap",),
        description="Inverse-variance fixed effects of a session's usable runs (flameo fe), "
        "each later run rigidly registered to the first unless already aligned.",
    ),
    Stage(
        name="normalise",
        kernels=(normalise_t1, register_epi_to_t1, normalise_epi, resample_to_template),
        version="4",  # 2: >= 4 mm images register on the 4 mm grid; 3: propagated variance;
        # 4: EPI -> T1w (and the flip check) on the T1w block-averaged to the EPI's voxel size
        inputs=("source:T1w", "work:session_maps"),
        outputs=("work:template_maps", "derivatives:statmap", "derivatives:xfm", "figures:reg"),
        granularity="subject",
        chunk_axis="none",
        params=(),
        description="T1w -> MNI152NLin2009aSym 2 mm (affine + SyN; on the 4 mm grid for a T1w "
        "of >= 4 mm voxels), mean EPI -> T1w (rigid, the T1w averaged to the EPI's voxel size "
        "when finer), composed and applied once to each "
        "session's effect, variance, mask and mean image; variance maps become the variance of "
        "the resampled effect (from the noise's lag-1 correlation).",
    ),
    Stage(
        name="group_stack",
        kernels=(paired_differences, model_design, data_mask),
        version="1",
        inputs=("work:template_maps",),
        outputs=("work:group_stack",),
        granularity="group",
        chunk_axis="subject",
        params=("boldcloud.group_level.variance_groups",),
        description="Per group analysis (Dataset node x contrast [x session]): the included "
        "subjects' MNI effect/variance maps (paired: post - pre, summed variance) stacked as "
        "(subject, z, y, x) chunked spatially; exclusions from the manifest, listed with reasons.",
    ),
    Stage(
        name="group_fit",
        kernels=(flame1, ols),
        version="1",
        inputs=("work:group_stack",),
        outputs=("work:group_blocks",),
        granularity="group",
        chunk_axis="space",
        params=("boldcloud.group_level.estimator",),
        description="FLAME1 (REML between-subject variance) or OLS per spatial block: effect, "
        "variance, t, z, dof, between-subject variance, mask; plus the OLS t for permutations.",
    ),
    Stage(
        name="group_permutation",
        kernels=(make_permutations, permutation_batch),
        version="1",
        inputs=("work:group_stack",),
        outputs=("work:permutation_maxima",),
        granularity="group",
        chunk_axis="none",
        params=(
            "boldcloud.inference.method",
            "boldcloud.inference.n_permutations",
            "boldcloud.inference.batch_size",
            "boldcloud.inference.seed",
            "boldcloud.inference.cluster_forming_z",
            "boldcloud.inference.two_sided",
            "boldcloud.inference.statistic",
        ),
        description="A batch of sign flips per task on the whole-brain in-mask data; only the "
        "per-permutation maxima (t, cluster extent and mass, TFCE) are written back.",
    ),
    Stage(
        name="group_inference",
        kernels=(combine_batches, fwe_p, cluster_table, estimate_smoothness, grf_cluster_p),
        version="1",
        inputs=("work:group_blocks", "work:permutation_maxima"),
        outputs=("group:statmap", "group:clusters", "group:figures"),
        granularity="group",
        chunk_axis="none",
        params=(
            "boldcloud.inference.method",
            "boldcloud.inference.statistic",
            "boldcloud.inference.cluster_forming_z",
            "boldcloud.inference.cluster_p",
            "boldcloud.inference.two_sided",
            "boldcloud.group_level.estimator",
        ),
        description="Whole-brain group maps, FWE-corrected cluster tables (permutation or GRF), "
        "thresholded and cluster-index maps (NIfTI), z-map thumbnails, under group/.",
    ),
    Stage(
        name="group_roi",
        kernels=(sphere_mask, roi_psc, roi_correlations, paired_tests, correlation_matrix),
        version="1",
        inputs=("group:clusters", "work:template_maps", "derivatives:design", "source:phenotype"),
        outputs=("group:roi", "group:clinical"),
        granularity="group",
        chunk_axis="none",
        params=(
            "boldcloud.roi.maps",
            "boldcloud.roi.sphere_diameter_mm",
            "boldcloud.roi.measure",
            "boldcloud.roi.clinical_changes",
            "boldcloud.roi.correlation",
            "boldcloud.roi.alpha",
            "boldcloud.roi.robust_leave_one_out",
            "boldcloud.clinical.phenotype_tables",
            "boldcloud.clinical.measures",
            "boldcloud.clinical.paired_sessions",
        ),
        description="ROI spheres on significant cluster peaks (or study coordinates), featquery "
        "percent signal change per subject/session, post - pre, correlations with clinical "
        "change scores (+ outlier-robust repeat), paired t-tests and correlations of measures.",
    ),
    Stage(
        name="group_report",
        kernels=(),
        version="1",
        inputs=("group:statmap", "group:clusters", "group:roi", "group:clinical"),
        outputs=("group:report",),
        granularity="group",
        chunk_axis="none",
        description="Self-contained HTML report: cohort and exclusions, motion QC, design "
        "matrices, group maps as slice montages over the template, cluster tables, ROI and "
        "clinical tables, a methods paragraph from the parameters that ran.",
    ),
)


def stage(name: str) -> Stage:
    """The stage called ``name``; raises ``KeyError`` listing the known names."""
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown stage {name!r}; known stages: {[s.name for s in STAGES]}")
