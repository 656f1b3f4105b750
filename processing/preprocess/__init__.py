"""Preprocessing kernels (pure numpy/scipy): motion correction."""

from processing.preprocess.motion import (
    MotionInputError,
    MotionVerdict,
    apply_motion,
    confounds_table,
    estimate_motion,
    framewise_displacement,
    motion_exclusion,
    plot_motion,
    rms_displacement_series,
    select_reference,
)

__all__ = [
    "MotionInputError",
    "MotionVerdict",
    "apply_motion",
    "confounds_table",
    "estimate_motion",
    "framewise_displacement",
    "motion_exclusion",
    "plot_motion",
    "rms_displacement_series",
    "select_reference",
]
