"""Cluster profiles: packaged YAML defaults, user config and the study file, merged in one order.

Precedence (highest first), as in Dask's own config model:

1. explicit arguments (``--cluster``, ``--workers``, keyword arguments of ``make_executor``);
2. the study file's ``execution`` block (``cluster``, ``workers``, ``cluster_options``);
3. the user config: ``$BOLDCLOUD_CLUSTER_CONFIG`` or ``~/.config/boldcloud/clusters.yaml``;
4. the packaged profile ``infra/clusters/profiles/<backend>.yaml``.

A user config looks like::

    default: hpc                 # profile used when neither --cluster nor the study names one
    profiles:
      slurm: {queue: short}      # changes keys of the packaged slurm profile
      hpc:                       # a new profile, based on the packaged one of its backend
        backend: slurm
        account: lab42
        max_jobs: 50
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PACKAGED = resources.files("infra.clusters") / "profiles"
ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://")


class ProfileError(ValueError):
    """A profile that does not exist or does not make sense, with the fix in the message."""


def packaged_backends() -> list[str]:
    """Names of the packaged profiles (one per backend)."""
    return sorted(p.name[: -len(".yaml")] for p in PACKAGED.iterdir() if p.name.endswith(".yaml"))


def packaged_profile(backend: str) -> dict[str, Any]:
    """The packaged defaults of ``backend``."""
    path = PACKAGED / f"{backend}.yaml"
    if not path.is_file():
        raise ProfileError(
            f"unknown cluster backend {backend!r}; packaged backends: "
            f"{', '.join(packaged_backends())}."
        )
    return yaml.safe_load(path.read_text()) or {}


def user_config_path() -> Path:
    """``$BOLDCLOUD_CLUSTER_CONFIG`` or ``$XDG_CONFIG_HOME/boldcloud/clusters.yaml``."""
    explicit = os.environ.get("BOLDCLOUD_CLUSTER_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "boldcloud" / "clusters.yaml"


def load_user_config(path: Path | None = None) -> dict[str, Any]:
    """The user config (empty when the file does not exist)."""
    path = path or user_config_path()
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles", {}), dict):
        raise ProfileError(f"{path}: expected a mapping with 'default' and 'profiles' keys.")
    return doc


def is_address(name: str) -> bool:
    """Whether ``name`` is a scheduler address rather than a profile name."""
    return name.startswith(ADDRESS_SCHEMES)


def resolve_profile(
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    study: Any | None = None,
    user_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merged options of a cluster profile.

    Parameters
    ----------
    name : str, optional
        Profile name (``local``, ``slurm``, a user profile...) or a scheduler address
        (``tcp://host:8786``). Default: the study's ``execution.cluster``, then the user
        config's ``default``, then ``local``.
    overrides : mapping, optional
        Explicit option values; ``None`` values are ignored.
    study : infra.study.Study, optional
        Supplies ``execution.cluster``, ``execution.workers`` and ``execution.cluster_options``.
    user_config : mapping, optional
        Parsed user config (default: read from :func:`user_config_path`).

    Returns
    -------
    dict
        Options with ``backend`` and ``profile`` (the name it came from) set.
    """
    config = load_user_config() if user_config is None else dict(user_config)
    execution = (study.doc.get("execution") or {}) if study is not None else {}
    name = name or execution.get("cluster") or config.get("default") or "local"
    layers: list[Mapping[str, Any]] = []
    if is_address(name):
        base, layers = packaged_profile("address"), [{"address": name}]
    else:
        user = (config.get("profiles") or {}).get(name) or {}
        backend = user.get("backend") or name
        if user.get("backend") and backend not in packaged_backends():
            raise ProfileError(
                f"profile {name!r} in {user_config_path()}: unknown cluster backend "
                f"{backend!r}; backends: {', '.join(packaged_backends())}."
            )
        if backend not in packaged_backends():
            known = sorted(set(packaged_backends()) | set(config.get("profiles") or {}))
            raise ProfileError(
                f"unknown cluster {name!r}; use 'local', 'inprocess' or a scheduler address "
                f"such as tcp://127.0.0.1:8786, or one of the profiles: {', '.join(known)} "
                f"(user profiles live in {user_config_path()})."
            )
        base = packaged_profile(backend)
        layers.append(user)
    if execution.get("cluster") in (None, name):
        layers.append(execution.get("cluster_options") or {})
    merged = dict(base)
    for layer in layers:  # config files: an explicit null resets a packaged value
        merged.update(layer)
    for layer in ({"workers": execution.get("workers")}, overrides or {}):
        merged.update({k: v for k, v in layer.items() if v is not None})  # None: not given
    merged["profile"] = name
    return merged
