"""Cluster adapters: each builds a Dask client behind one small function.

``local`` is the embedded default (a LocalCluster of worker processes bound to 127.0.0.1).
Other backends (SLURM/PBS, Kubernetes, Gateway) arrive as small adapters with the same shape.
"""

from __future__ import annotations

import os

from infra.executors import DaskExecutor, LocalExecutor


def default_workers() -> int:
    """Workers for a local cluster: one per core, at least one."""
    return max(1, os.cpu_count() or 1)


def make_executor(kind: str = "local", workers: int | None = None, retries: int = 1):
    """An executor for ``kind``.

    Parameters
    ----------
    kind : {"local", "inprocess"} or "tcp://host:port"
        ``local``: a Dask LocalCluster of worker processes on this machine; ``inprocess``: the
        reference loop (no Dask); a scheduler address connects to a running cluster.
    workers : int, optional
        Worker processes for ``local`` (default: one per core).
    """
    if kind == "inprocess":
        return LocalExecutor()
    from distributed import Client, LocalCluster

    if kind.startswith(("tcp://", "tls://")):
        return DaskExecutor(Client(kind), retries=retries, owns_cluster=False)
    if kind != "local":
        raise ValueError(
            f"unknown cluster {kind!r}; use 'local', 'inprocess' or a scheduler address "
            "such as tcp://127.0.0.1:8786."
        )
    cluster = LocalCluster(
        n_workers=workers or default_workers(),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,
    )
    return DaskExecutor(Client(cluster), retries=retries, owns_cluster=True)
