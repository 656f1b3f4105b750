"""Engine adapters, one per row of the stage table: each plans its tasks and does the I/O
around the stage's kernels. ``ADAPTERS`` maps stage names to planners; the runner walks
``processing.stages.STAGES`` in order and fails loudly if a stage has no adapter."""

from infra.pipeline import Planner
from infra.stages.ingest import plan_ingest

ADAPTERS: dict[str, Planner] = {"ingest": plan_ingest}

__all__ = ["ADAPTERS"]
