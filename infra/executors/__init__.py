"""Where tasks run. Every executor maps a picklable function over task specs and yields
``(spec, result)`` pairs as tasks finish; ``result`` is the function's return value or the
exception it raised. ``LocalExecutor`` is the reference (a plain loop); ``DaskExecutor`` runs the
same function on any Dask cluster (local, SLURM/PBS via dask-jobqueue, Kubernetes, Gateway)."""

from infra.executors.base import Executor, LocalExecutor
from infra.executors.dask import DaskExecutor

__all__ = ["DaskExecutor", "Executor", "LocalExecutor"]
