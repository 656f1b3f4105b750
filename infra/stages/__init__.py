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
from infra.stages.group import plan_group_fit, plan_group_permutation
from infra.stages.group_inference import plan_group_inference
from infra.stages.group_stack import plan_group_stack
from infra.stages.ingest import plan_ingest
from infra.stages.normalise import plan_normalise
from infra.stages.preprocess import (
    plan_filter,
    plan_motion,
    plan_motion_estimate,
    plan_motion_reference,
    plan_preprocess,
)
from infra.stages.report import plan_group_report
from infra.stages.roi import plan_group_roi
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
    "normalise": plan_normalise,
    "group_stack": plan_group_stack,
    "group_fit": plan_group_fit,
    "group_permutation": plan_group_permutation,
    "group_inference": plan_group_inference,
    "group_roi": plan_group_roi,
    "group_report": plan_group_report,
}

__all__ = ["ADAPTERS"]
