"""BIDS naming rules, events and NIfTI header checks: pure functions, no storage access."""

from processing.ingest.bids import (
    BidsFile,
    BidsNameError,
    build_bids_name,
    inheritance_chain,
    merge_sidecars,
    parse_bids_name,
)
from processing.ingest.events import EventsError, validate_events
from processing.ingest.nifti import BoldHeaderInfo, NiftiInputError, inspect_bold_header

__all__ = [
    "BidsFile",
    "BidsNameError",
    "BoldHeaderInfo",
    "EventsError",
    "NiftiInputError",
    "build_bids_name",
    "inheritance_chain",
    "inspect_bold_header",
    "merge_sidecars",
    "parse_bids_name",
    "validate_events",
]
