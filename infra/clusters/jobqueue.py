"""HPC batch schedulers through dask-jobqueue: each batch job runs Dask worker processes.

The scheduler runs in the driver process (on the login node, or inside a batch job started by
``deploy/slurm/boldcloud-driver.sbatch``); the pool of worker jobs scales adaptively between
``min_jobs`` and ``max_jobs``. Every key of the profile that is not boldcloud's own is passed to
the dask-jobqueue cluster class, so any of its keywords can be set in a profile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from infra.clusters.base import ClusterAdapter

if TYPE_CHECKING:
    from distributed import Client

#: profile keys interpreted here, not passed to dask-jobqueue
OWN_KEYS = frozenset(
    {
        "backend",
        "profile",
        "workers",
        "driver",
        "min_jobs",
        "max_jobs",
        "scheduler_host",
        "adapt_interval",
        "adapt_wait_count",
    }
)


class JobqueueAdapter(ClusterAdapter):
    """Base of the batch-scheduler adapters; subclasses name the dask-jobqueue class."""

    cluster_class: ClassVar[str]
    open_keys = True

    def jobs_range(self) -> tuple[int, int]:
        """(min_jobs, max_jobs); an explicit ``workers`` caps the maximum."""
        low = int(self.option("min_jobs", 0))
        high = int(self.option("max_jobs", 1))
        workers = self.options.get("workers")
        if workers not in (None, "auto"):
            processes = int(self.option("processes", 1))
            high = max(1, -(-int(workers) // processes))
        return min(low, high), high

    def cluster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the dask-jobqueue cluster class (None values left out, so
        dask-jobqueue's own config applies to them)."""
        kwargs = {k: v for k, v in self.options.items() if k not in OWN_KEYS and v is not None}
        scheduler = dict(kwargs.pop("scheduler_options", {}) or {})
        host = self.options.get("scheduler_host")
        if host:  # null: dask-jobqueue picks the address (of ``interface``, if set)
            scheduler.setdefault("host", host)
            scheduler.setdefault("dashboard_address", f"{host}:0")
        kwargs["scheduler_options"] = scheduler
        return kwargs

    def adapt_kwargs(self) -> dict[str, Any]:
        """Arguments of ``cluster.adapt``."""
        low, high = self.jobs_range()
        return {
            "minimum_jobs": low,
            "maximum_jobs": high,
            "interval": self.option("adapt_interval", "1s"),
            "wait_count": int(self.option("adapt_wait_count", 60)),
        }

    def start(self) -> Client:
        import dask_jobqueue
        from distributed import Client

        cluster = getattr(dask_jobqueue, self.cluster_class)(**self.cluster_kwargs())
        cluster.adapt(**self.adapt_kwargs())
        return Client(cluster)


class SLURMAdapter(JobqueueAdapter):
    """``slurm``: dask-jobqueue ``SLURMCluster`` (``queue`` is the partition)."""

    backend = "slurm"
    cluster_class = "SLURMCluster"


class PBSAdapter(JobqueueAdapter):
    """``pbs``: dask-jobqueue ``PBSCluster`` (PBS Pro, Torque, OpenPBS)."""

    backend = "pbs"
    cluster_class = "PBSCluster"


class SGEAdapter(JobqueueAdapter):
    """``sge``: dask-jobqueue ``SGECluster`` (Grid Engine)."""

    backend = "sge"
    cluster_class = "SGECluster"
