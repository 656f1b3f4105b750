"""Simulated raw BIDS datasets shaped like the reference evoked-pain study, with ground truth.

Public entry point: :func:`simulate_study`. :func:`load_subject_transform` reads a subject's
stored native <-> MNI transform back from ``derivatives/truth``.
"""

from processing.simulate.study import RunInfo, SimulationSummary, simulate_study
from processing.simulate.truth import StoredTransform, load_subject_transform

__all__ = [
    "RunInfo",
    "SimulationSummary",
    "StoredTransform",
    "load_subject_transform",
    "simulate_study",
]
