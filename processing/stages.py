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

from processing.ingest.events import validate_events
from processing.ingest.nifti import inspect_bold_header

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
)


def stage(name: str) -> Stage:
    """The stage called ``name``; raises ``KeyError`` listing the known names."""
    for entry in STAGES:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown stage {name!r}; known stages: {[s.name for s in STAGES]}")
