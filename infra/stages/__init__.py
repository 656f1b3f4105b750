"""Engine adapters, one per row of the stage table: each plans its tasks and does the I/O
around the stage's kernels. ``ADAPTERS`` maps stage names to planners; the runner walks
``processing.stages.STAGES`` in order and fails loudly if a stage has no adapter."""

from infra.pipeline import Planner
from infra.stages.firstlevel import (
    plan_design,
    plan_glm,
    plan_glm_autocorr,
    plan_glm_autocorr_smooth,
)
from infra.stages.ingest import plan_ingest
from infra.stages.preprocess import (
    plan_filter,
    plan_motion,
    plan_motion_estimate,
    plan_motion_reference,
    plan_preprocess,
)
from infra.stages.statmaps import plan_fixed_effects, plan_glm_maps

ADAPTERS: dict[str, Planner] = {
    "ingest": plan_ingest,
    "motion_reference": plan_motion_reference,
    "motion_estimate": plan_motion_estimate,
    "motion": plan_motion,
    "preprocess": plan_preprocess,
    "filter": plan_filter,
    "design": plan_design,
    "glm_autocorr": plan_glm_autocorr,
    "glm_autocorr_smooth": plan_glm_autocorr_smooth,
    "glm": plan_glm,
    "glm_maps": plan_glm_maps,
    "fixed_effects": plan_fixed_effects,
}

__all__ = ["ADAPTERS"]
