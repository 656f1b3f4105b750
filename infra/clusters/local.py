"""This machine: a LocalCluster sized to it, the in-process reference loop, or a known scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.clusters.base import ClusterAdapter

if TYPE_CHECKING:
    from distributed import Client

    from infra.executors import Executor


def default_workers() -> int:
    """Workers for a local cluster: one per usable core (cgroup and affinity aware), at least 1."""
    from dask.system import CPU_COUNT

    return max(1, CPU_COUNT or 1)


class LocalAdapter(ClusterAdapter):
    """``local``: a Dask LocalCluster of worker processes bound to 127.0.0.1."""

    backend = "local"

    def cluster_kwargs(self) -> dict[str, Any]:
        """LocalCluster arguments (``auto``: one worker per core, memory split evenly)."""
        workers = self.options.get("workers")
        threads = int(self.option("threads_per_worker", 1))
        if workers in (None, "auto"):
            workers = max(1, default_workers() // threads)
        return {
            "n_workers": int(workers),
            "threads_per_worker": threads,
            "memory_limit": self.option("memory_limit", "auto"),
            "processes": True,
            "host": self.option("host", "127.0.0.1"),
            "dashboard_address": self.option("dashboard_address", "127.0.0.1:0"),
            "silence_logs": 40,
            "local_directory": self.options.get("local_directory"),
        }

    def start(self) -> Client:
        from distributed import Client, LocalCluster

        return Client(LocalCluster(**self.cluster_kwargs()))


class InProcessAdapter(ClusterAdapter):
    """``inprocess``: the reference executor, a plain loop in this process (no Dask)."""

    backend = "inprocess"

    def executor(self, retries: int = 1) -> Executor:
        from infra.executors import LocalExecutor

        return LocalExecutor()


class AddressAdapter(ClusterAdapter):
    """``address``: a running Dask scheduler (``tcp://host:8786``); left running on close."""

    backend = "address"
    owns_cluster = False

    def start(self) -> Client:
        from distributed import Client

        return Client(self.option("address"), timeout="30s")
