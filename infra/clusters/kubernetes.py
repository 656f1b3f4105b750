"""Kubernetes through the Dask operator: a ``DaskCluster`` resource built from the profile.

``dask-kubernetes`` (extra ``kubernetes``) is imported only when a cluster is built. The
translation profile -> ``DaskCluster`` spec (:meth:`KubernetesAdapter.cluster_spec`) needs no
API server. S3 credentials reach the pods through ``envFrom`` Secret references or the service
account's IAM role (IRSA), never through the spec itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.clusters.base import ClusterAdapter

if TYPE_CHECKING:
    from distributed import Client


class KubernetesAdapter(ClusterAdapter):
    """``kubernetes``: dask-kubernetes' operator ``KubeCluster`` with a custom cluster spec."""

    backend = "kubernetes"

    def worker_range(self) -> tuple[int, int] | None:
        """(min, max) for the operator's autoscaler, or None for a fixed ``n_workers``."""
        low, high = self.options.get("min_workers"), self.options.get("max_workers")
        if self.options.get("workers") not in (None, "auto"):
            high = int(self.options["workers"])
            low = min(int(low or 0), high) if low is not None else None
        if low is None or high is None:
            return None
        return int(low), int(high)

    def n_workers(self) -> int:
        """Initial worker count (an explicit ``workers`` wins)."""
        if self.options.get("workers") not in (None, "auto"):
            return int(self.options["workers"])
        return int(self.option("n_workers", 1))

    def cluster_spec(self) -> dict[str, Any]:
        """The ``DaskCluster`` resource (a dict) this profile describes."""
        from dask_kubernetes.operator import make_cluster_spec

        env = dict(self.option("env", {}))
        spec = make_cluster_spec(
            name=self.option("name", "boldcloud"),
            image=self.option("image"),
            n_workers=self.n_workers(),
            resources=self.option("resources"),
            env=env,
            worker_command=self.option("worker_command", "dask worker"),
            scheduler_service_type=self.option("scheduler_service_type", "ClusterIP"),
            idle_timeout=int(self.option("idle_timeout", 0)),
        )
        scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
        if scheduler["args"][:1] == ["dask-scheduler"]:  # distributed >= 2025 has only `dask`
            scheduler["args"] = ["dask", "scheduler", *scheduler["args"][1:]]
        secrets = [{"secretRef": {"name": s}} for s in self.option("env_from_secrets", [])]
        account = self.options.get("service_account")
        for part in (spec["spec"]["worker"], spec["spec"]["scheduler"]):
            pod = part["spec"]
            for container in pod["containers"]:
                if secrets:
                    container["envFrom"] = list(secrets)
            if account:
                pod["serviceAccountName"] = account
        if self.options.get("namespace"):
            spec["metadata"]["namespace"] = self.options["namespace"]
        return spec

    def start(self) -> Client:
        from dask_kubernetes.operator import KubeCluster
        from distributed import Client

        cluster = KubeCluster(
            custom_cluster_spec=self.cluster_spec(),
            namespace=self.options.get("namespace"),
            shutdown_on_close=bool(self.option("shutdown_on_close", True)),
        )
        scaling = self.worker_range()
        if scaling:
            cluster.adapt(minimum=scaling[0], maximum=scaling[1])
        return Client(cluster)
