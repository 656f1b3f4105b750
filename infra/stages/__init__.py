"""Engine adapters, one per row of the stage table: each plans its tasks and does the I/O
around the stage's kernels. ``ADAPTERS`` maps stage names to planners; the runner walks
``processing.stages.STAGES`` in order and fails loudly if a stage has no adapter."""

from infra.pipeline import Planner
from infra.stages.ingest import plan_ingest
from infra.stages.preprocess import (
    plan_filter,
    plan_motion,
    plan_motion_estimate,
    plan_motion_reference,
    plan_preprocess,
)

ADAPTERS: dict[str, Planner] = {
    "ingest": plan_ingest,
    "motion_reference": plan_motion_reference,
    "motion_estimate": plan_motion_estimate,
    "motion": plan_motion,
    "preprocess": plan_preprocess,
    "filter": plan_filter,
}

__all__ = ["ADAPTERS"]
