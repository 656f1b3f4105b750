"""Where work runs: one small adapter per backend behind one interface.

``make_executor("slurm")`` resolves the profile ``slurm`` (packaged defaults < user config <
study file < explicit arguments, see :mod:`infra.clusters.profiles`), builds the backend's
adapter and returns an executor on a running cluster. Backends:

========== ==========================================================================
local      Dask LocalCluster sized to this machine (default)
inprocess  the reference loop in this process, no Dask
address    a running scheduler, ``tcp://host:8786`` (also accepted as the name itself)
slurm      dask-jobqueue SLURMCluster, adaptive between min_jobs and max_jobs
pbs        dask-jobqueue PBSCluster
sge        dask-jobqueue SGECluster
gateway    a Dask Gateway server (basic auth with the password from the environment)
kubernetes the Dask Kubernetes operator (a DaskCluster resource)
========== ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.clusters.base import ClusterAdapter
from infra.clusters.gateway import GatewayAdapter
from infra.clusters.jobqueue import PBSAdapter, SGEAdapter, SLURMAdapter
from infra.clusters.kubernetes import KubernetesAdapter
from infra.clusters.local import AddressAdapter, InProcessAdapter, LocalAdapter, default_workers
from infra.clusters.profiles import ProfileError, resolve_profile
from infra.executors import Executor

ADAPTERS: dict[str, type[ClusterAdapter]] = {
    cls.backend: cls
    for cls in (
        LocalAdapter,
        InProcessAdapter,
        AddressAdapter,
        SLURMAdapter,
        PBSAdapter,
        SGEAdapter,
        GatewayAdapter,
        KubernetesAdapter,
    )
}


def make_adapter(
    kind: str | None = None,
    workers: int | None = None,
    study: Any | None = None,
    options: Mapping[str, Any] | None = None,
    user_config: Mapping[str, Any] | None = None,
) -> ClusterAdapter:
    """The adapter for a profile name or scheduler address, with every layer merged.

    Parameters
    ----------
    kind : str, optional
        Profile name or ``tcp://host:port``; default: the study's, the user's, ``local``.
    workers : int, optional
        Explicit worker count (local workers; maximum jobs/workers elsewhere).
    study : infra.study.Study, optional
        Its ``execution`` block is a config layer.
    options : mapping, optional
        Explicit profile values (highest precedence).
    user_config : mapping, optional
        Parsed user config instead of the file (tests).
    """
    overrides = {**(options or {}), "workers": workers}
    profile = resolve_profile(kind, overrides, study=study, user_config=user_config)
    return ADAPTERS[profile["backend"]](profile)


def make_executor(
    kind: str | None = "local",
    workers: int | None = None,
    retries: int = 1,
    *,
    study: Any | None = None,
    options: Mapping[str, Any] | None = None,
) -> Executor:
    """An executor on the cluster ``kind`` names (see :func:`make_adapter`).

    Parameters
    ----------
    kind : str, optional
        ``local`` (default), ``inprocess``, ``slurm``, ``pbs``, ``sge``, ``gateway``,
        ``kubernetes``, a user profile, or a scheduler address ``tcp://host:port``. None: the
        study's ``execution.cluster``, then the user config's ``default``, then ``local``.
    workers : int, optional
        Worker processes for ``local`` (default: one per core); the maximum number of
        jobs/workers for the other backends.
    retries : int
        Dask-level resubmissions of a task whose worker died.
    study, options
        Further config layers, see :func:`make_adapter`.
    """
    return make_adapter(kind, workers, study=study, options=options).executor(retries=retries)


__all__ = [
    "ADAPTERS",
    "ClusterAdapter",
    "ProfileError",
    "default_workers",
    "make_adapter",
    "make_executor",
    "resolve_profile",
]
