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

from processing.firstlevel.design import build_design
from processing.firstlevel.design_qc import check_design
from processing.firstlevel.film import residual_autocorrelation, smooth_autocorrelation
from processing.firstlevel.fit import contrast_maps, fit_noise_model
from processing.firstlevel.fixed_effects import fixed_effects
from processing.firstlevel.glm import fit_ols
from processing.ingest.events import validate_events
from processing.ingest.nifti import inspect_bold_header
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
        description="FILM only: OLS residual autocorrelation per spatial block.",
    ),
    Stage(
        name="glm_autocorr_smooth",
        kernels=(smooth_autocorrelation,),
        version="1",
        inputs=("work:autocorr_raw", "work:mask"),
        outputs=("work:autocorr",),
        granularity="run",
        chunk_axis="none",
        description="FILM only: autocorrelation maps smoothed within the brain (5 mm).",
    ),
    Stage(
        name="glm",
        kernels=(fit_noise_model, contrast_maps),
        version="1",
        inputs=("work:filtered", "derivatives:design", "work:autocorr"),
        outputs=("work:glm_blocks",),
        granularity="run",
        chunk_axis="space",
        params=("boldcloud.run_level.noise_model", "boldcloud.run_level.autocorr_bias_correction"),
        description="GLM fit (ols, ar1 or FILM) and contrasts per spatial block.",
    ),
    Stage(
        name="glm_maps",
        kernels=(),
        version="1",
        inputs=("work:glm_blocks",),
        outputs=("work:run_maps", "derivatives:statmap"),
        granularity="run",
        chunk_axis="none",
        description="Whole-run effect, variance, t, z and residual-variance maps (NIfTI + Zarr).",
    ),
    Stage(
        name="fixed_effects",
        kernels=(fixed_effects,),
        version="1",
        inputs=("work:run_maps",),
        outputs=("work:session_maps", "derivatives:statmap"),
        granularity="session",
        chunk_axis="none",
        params=("boldcloud.session_level.dof_cap",),
        description="Inverse-variance fixed effects of a session's usable runs (flameo fe).",
    ),
)


def stage(name: str) -> Stage:
    """The stage called ``name``; raises ``KeyError`` listing the known names."""
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown stage {name!r}; known stages: {[s.name for s in STAGES]}")
