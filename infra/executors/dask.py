"""Dask executor: futures on a distributed client, results streamed as they complete."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from distributed import Client, as_completed


class DaskExecutor:
    """Run tasks as futures on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
        Connected client; the executor closes it (and its cluster, if it owns it) on ``close``.
    retries : int
        Dask-level resubmissions when a worker dies mid-task (exceptions inside a task are
        retried by the task wrapper itself, which records each attempt).
    """

    def __init__(self, client: Client, retries: int = 1, owns_cluster: bool = True) -> None:
        self.client = client
        self.retries = retries
        self.owns_cluster = owns_cluster
        self.description = f"dask ({client.scheduler.address}, dashboard {client.dashboard_link})"

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], keys: Iterable[str]
    ) -> Iterator[tuple[Any, Any]]:
        items = list(items)
        futures = [
            self.client.submit(fn, item, key=key, pure=False, retries=self.retries)
            for item, key in zip(items, keys, strict=True)
        ]
        by_future = dict(zip(futures, items, strict=True))
        try:
            for future in as_completed(futures):
                try:
                    yield by_future[future], future.result()
                except Exception as err:  # task or worker failure: reported per task
                    yield by_future[future], err
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        """Close the client and, when this executor started it, the cluster."""
        cluster = self.client.cluster if self.owns_cluster else None
        self.client.close()
        if cluster is not None:
            cluster.close()
