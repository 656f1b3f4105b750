"""The run-level model of a study, read from its BIDS Stats Models ``Run`` node.

A node's ``Model.X`` lists design columns: entries named in ``HRF.Variables`` are conditions
(trial types, convolved with the HRF); every other string is a confound column taken from the
run's confounds table (the motion parameters by default); the number ``1`` (an intercept) is
accepted and dropped, because FEAT designs are demeaned and carry no intercept. Contrasts are
checked here, once, against the columns the node can produce, so a typo fails before any task
runs. Per run, :func:`run_contrast` turns a contrast into weights over that run's actual design
columns, or says why it is undefined there (a condition without events was dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Contrast", "RunModel", "UndefinedContrast", "run_contrast", "run_node"]

HRF_MODELS = {"DoubleGamma": "fsl", "spm": "spm", "glover": "glover", "fir": "fir"}


class UndefinedContrast(Exception):
    """A contrast cannot be estimated in this run (it needs a dropped condition)."""


@dataclass(frozen=True)
class Contrast:
    """One contrast of a node: a t test (1-D weights) or an F test (rows of weights)."""

    name: str
    conditions: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]  # one row for t, q rows for F
    test: str = "t"

    @property
    def matrix(self) -> NDArray[np.float64]:
        """Weights as a (rows, conditions) array."""
        return np.asarray(self.weights, dtype=np.float64)


@dataclass(frozen=True)
class RunModel:
    """What the run-level design and fit need, independent of any particular run."""

    conditions: tuple[str, ...]
    confounds: tuple[str, ...]
    hrf_model: str = "fsl"
    derivatives: bool = False
    fir_delays: int | None = None  # FIR: number of one-TR windows (delays 0 .. n-1)
    contrasts: tuple[Contrast, ...] = field(default_factory=tuple)
    noise_model: str = "film"

    @classmethod
    def from_node(
        cls,
        node: Mapping[str, Any],
        *,
        noise_model: str = "film",
        extra_confounds: Sequence[str] = (),
    ) -> RunModel:
        """Parse a BIDS Stats Models ``Run`` node (already schema-valid).

        Parameters
        ----------
        node : mapping
            The node (``Level: Run``).
        noise_model : {"film", "ar1", "ols"}
            From ``boldcloud.run_level.noise_model``.
        extra_confounds : sequence of str
            ``boldcloud.run_level.confounds``, added to the confounds named in ``X``.

        Returns
        -------
        RunModel

        Raises
        ------
        ValueError
            Naming the node and the contrast (or column) at fault.
        """
        name = node.get("Name", "run")
        model = node["Model"]
        hrf = model.get("HRF") or {}
        conditions = tuple(str(v) for v in hrf.get("Variables", ()))
        in_x = [x for x in model["X"] if isinstance(x, str)]
        missing = [c for c in conditions if c not in in_x]
        if missing:
            raise ValueError(
                f"node {name!r}: HRF variables {missing} are not in Model.X {model['X']}; "
                "add them to X"
            )
        confounds = [x for x in in_x if x not in conditions]
        confounds += [c for c in extra_confounds if c not in confounds and c not in conditions]
        params = hrf.get("Parameters") or {}
        run_model = cls(
            conditions=conditions,
            confounds=tuple(confounds),
            hrf_model=HRF_MODELS[hrf.get("Model", "DoubleGamma")],
            derivatives=bool(params.get("Derivative", False)),
            fir_delays=_fir_delays(name, hrf.get("Model"), params.get("FIRDelays")),
            contrasts=tuple(_contrast(name, c) for c in node.get("Contrasts", ())),
            noise_model=noise_model,
        )
        run_model.check_contrasts(name)
        return run_model

    def check_contrasts(self, node_name: str = "run") -> None:
        """Every contrast names known columns with one weight per condition."""
        known = set(self.conditions) | set(self.confounds)
        for contrast in self.contrasts:
            unknown = [c for c in contrast.conditions if c not in known]
            if unknown:
                raise ValueError(
                    f"node {node_name!r}, contrast {contrast.name!r}: unknown condition(s) "
                    f"{unknown}; the design has {sorted(known)}"
                )


def _fir_delays(node_name: str, hrf_model: str | None, delays: Sequence[int] | None) -> int | None:
    """FIR needs ``FIRDelays`` (volumes after onset); the design uses delays 0 .. max."""
    if hrf_model != "fir":
        return None
    if not delays:
        raise ValueError(
            f"node {node_name!r}: HRF Model fir needs Parameters.FIRDelays, e.g. [0, 1, 2, 3, 4]"
        )
    return max(int(d) for d in delays) + 1


def _contrast(node_name: str, spec: Mapping[str, Any]) -> Contrast:
    name, conditions = str(spec["Name"]), tuple(str(c) for c in spec["ConditionList"])
    raw = spec["Weights"]
    rows = raw if raw and isinstance(raw[0], list | tuple) else [raw]
    test = str(spec.get("Test", "t"))
    for row in rows:
        if len(row) != len(conditions):
            raise ValueError(
                f"node {node_name!r}, contrast {name!r}: {len(row)} weights {list(row)} for "
                f"{len(conditions)} conditions {list(conditions)}; give one weight per condition"
            )
    if test == "t" and len(rows) != 1:
        raise ValueError(
            f"node {node_name!r}, contrast {name!r}: a t contrast takes one row of weights, got "
            f"{len(rows)}; use Test: F for several rows"
        )
    weights = tuple(tuple(float(w) for w in row) for row in rows)
    return Contrast(name, conditions, weights, test)


def run_contrast(
    contrast: Contrast, columns: Sequence[str], dropped: Mapping[str, str]
) -> NDArray[np.float64]:
    """Weights over a run's design columns: (p,) for t, (q, p) for F.

    Parameters
    ----------
    contrast : Contrast
    columns : sequence of str
        The run's design columns in order.
    dropped : mapping
        Conditions dropped from this run's design, with the reason.

    Returns
    -------
    ndarray

    Raises
    ------
    UndefinedContrast
        When a condition with a non-zero weight was dropped from this run: the contrast is
        undefined for the run (never silently zero).
    """
    matrix = contrast.matrix
    index = {c: i for i, c in enumerate(columns)}
    out = np.zeros((matrix.shape[0], len(columns)))
    for j, condition in enumerate(contrast.conditions):
        if not np.any(matrix[:, j]):
            continue
        if condition in dropped:
            raise UndefinedContrast(
                f"contrast {contrast.name!r} needs {condition!r}: {dropped[condition]}"
            )
        if condition not in index:
            raise ValueError(
                f"contrast {contrast.name!r}: {condition!r} is not a column of this run's design "
                f"{list(columns)}"
            )
        out[:, index[condition]] = matrix[:, j]
    return out[0] if contrast.test == "t" else out


def run_node(model: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``Run``-level node of a BIDS Stats Model (exactly one is required)."""
    nodes = [n for n in model.get("Nodes", ()) if n.get("Level") == "Run"]
    if len(nodes) != 1:
        names = [n.get("Name") for n in nodes]
        raise ValueError(
            f"the model needs exactly one node with Level: Run, found {len(nodes)} {names}"
        )
    return nodes[0]
