"""The study's group analyses, read from the BIDS Stats Models ``Subject``/``Dataset`` nodes.

Each ``Dataset`` node becomes one group analysis per first-level t contrast (its
``DummyContrasts``: the group mean of that contrast), and per session when it groups by session:

* a Dataset node fed by a ``Session`` (or ``Run``) node and grouped by ``session`` gives a
  one-sample analysis of each session's fixed-effects maps (reference study: ``groupBySession``,
  label ``ses-pre``);
* a Dataset node fed by a ``Subject`` node gives one analysis per contrast of that node, whose
  ``ConditionList`` names sessions (``session.post``, ``session.pre``) with weights: the
  subject-level combination ``sum_s w_s effect_s`` with variance ``sum_s w_s^2 variance_s``
  (``[1, -1]``: the paired post - pre difference; label ``ses-<contrast>``, e.g.
  ``ses-postMinusPre``).

``Model.X`` of the Dataset node is the group design: ``1`` (the intercept) plus optional
participants.tsv columns as demeaned covariates. The source of a node is the ``Source`` of the
edge that ends at it (BIDS Stats Models), or the node before it when the model has no edges.
Explicit ``Contrasts`` on a Dataset node are not supported yet (a clear error says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GroupAnalysis", "group_analyses"]


@dataclass(frozen=True)
class GroupAnalysis:
    """One group model: a Dataset node applied to one first-level contrast (and session)."""

    node: str
    task: str
    contrast: str
    sessions: tuple[str | None, ...]  # sessions combined per subject, in weight order
    weights: tuple[float, ...]  # one per session: (1,) one-sample, (1, -1) paired
    session_label: str | None  # "pre", "postMinusPre", or None (dataset without sessions)
    kind: str  # "one_sample" or "paired" (a combination of sessions)
    covariates: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """Unit name and output stem: ``ses-pre_task-cuff_contrast-P40vsP0`` (BIDS order)."""
        parts = [f"ses-{self.session_label}"] if self.session_label else []
        return "_".join([*parts, f"task-{self.task}", f"contrast-{self.contrast}"])

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of the outputs (``ses``, ``task``, ``contrast``)."""
        out = {"task": self.task, "contrast": self.contrast}
        if self.session_label:
            out["ses"] = self.session_label
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain data for payloads, records and task keys."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> GroupAnalysis:
        """Inverse of :meth:`to_json`."""
        data = dict(obj)
        for key in ("sessions", "weights", "covariates"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


def _source(nodes: list[Mapping], edges: Sequence[Mapping], index: int) -> Mapping | None:
    name = nodes[index]["Name"]
    by_name = {n["Name"]: n for n in nodes}
    for edge in edges:
        if edge.get("Destination") == name:
            return by_name.get(edge.get("Source"))
    return nodes[index - 1] if index > 0 and not edges else None


def _session_weights(node: Mapping, spec: Mapping) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Sessions and weights of a Subject-level contrast over ``session.<label>`` conditions."""
    sessions, weights = [], []
    raw = spec["Weights"]
    if raw and isinstance(raw[0], list | tuple):
        raise ValueError(
            f"node {node['Name']!r}, contrast {spec['Name']!r}: only t contrasts (one row of "
            "weights) are supported at the Subject level"
        )
    for condition, weight in zip(spec["ConditionList"], raw, strict=True):
        text = str(condition)
        if not text.startswith("session."):
            raise ValueError(
                f"node {node['Name']!r}, contrast {spec['Name']!r}: condition {text!r} must name "
                "a session as 'session.<label>' (e.g. session.post)"
            )
        if float(weight) != 0.0:
            sessions.append(text.removeprefix("session."))
            weights.append(float(weight))
    if not sessions:
        raise ValueError(f"node {node['Name']!r}, contrast {spec['Name']!r}: all weights are 0")
    return tuple(sessions), tuple(weights)


def group_analyses(
    model: Mapping[str, Any],
    tasks: Sequence[str],
    sessions: Sequence[str | None],
    first_level: Sequence[str],
    only: Sequence[str] | None = None,
) -> list[GroupAnalysis]:
    """Every group analysis the model asks for.

    Parameters
    ----------
    model : mapping
        The study's BIDS Stats Model (schema-valid).
    tasks : sequence of str
        Tasks of the study (``model.Input.task``).
    sessions : sequence of str or None
        Sessions present in the dataset selection (``[None]`` for a dataset without sessions).
    first_level : sequence of str
        Names of the first-level t contrasts (those the session fixed effects produce).
    only : sequence of str, optional
        ``boldcloud.group_level.contrasts``: keep only these first-level contrasts.

    Returns
    -------
    list of GroupAnalysis
        In node order, then task, session and contrast order.

    Raises
    ------
    ValueError
        Naming the node at fault (unknown contrast, session or unsupported construct).
    """
    nodes = list(model.get("Nodes", ()))
    edges = list(model.get("Edges", ()) or ())
    contrasts = list(first_level)
    if only:
        unknown = [c for c in only if c not in contrasts]
        if unknown:
            raise ValueError(
                f"boldcloud.group_level.contrasts names {unknown}, which are not first-level t "
                f"contrasts; use some of {contrasts}"
            )
        contrasts = [c for c in contrasts if c in only]
    present = [s for s in sessions if s is not None]
    out: list[GroupAnalysis] = []
    for i, node in enumerate(nodes):
        if node.get("Level") != "Dataset":
            continue
        name = node["Name"]
        if node.get("Contrasts"):
            raise ValueError(
                f"node {name!r}: explicit Contrasts at the Dataset level are not supported yet; "
                "use DummyContrasts: {Test: t} (the group mean of each input contrast)"
            )
        dummy = node.get("DummyContrasts") or {"Test": "t"}
        if dummy.get("Test", "t") == "skip":
            continue
        wanted = [c for c in contrasts if not dummy.get("Contrasts") or c in dummy["Contrasts"]]
        x = list(node["Model"]["X"])
        covariates = tuple(str(v) for v in x if not (isinstance(v, int | float) and v == 1))
        if not any(isinstance(v, int | float) and v == 1 for v in x):
            raise ValueError(f"node {name!r}: Model.X needs the intercept 1 (the group mean)")
        source = _source(nodes, edges, i)
        level = source.get("Level") if source else "Session"
        combos: list[tuple[tuple, tuple, str | None, str]] = []
        if level == "Subject":
            for spec in source.get("Contrasts") or ():
                ses, w = _session_weights(source, spec)
                if any(s not in present for s in ses):
                    continue  # e.g. select: sessions: [pre] - no paired map to make
                kind = "paired" if len(ses) == 2 and sorted(w) == [-1.0, 1.0] else "combination"
                combos.append((ses, w, str(spec["Name"]), kind))
        elif level in ("Session", "Run"):
            group_by = node.get("GroupBy") or []
            if len(present) > 1 and "session" not in group_by:
                raise ValueError(
                    f"node {name!r} takes session-level maps from {len(present)} sessions "
                    f"{present} but does not group by session; add 'session' to GroupBy or "
                    "combine sessions in a Subject node first"
                )
            for ses in sessions:
                combos.append(((ses,), (1.0,), ses, "one_sample"))
        else:
            raise ValueError(f"node {name!r}: a Dataset node cannot take input from {level!r}")
        for task in tasks:
            for ses, w, label, kind in combos:
                for contrast in wanted:
                    out.append(GroupAnalysis(name, task, contrast, ses, w, label, kind, covariates))
    labels = [a.label for a in out]
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        raise ValueError(
            f"two Dataset nodes produce the same group maps {repeated}; restrict one of them "
            "with DummyContrasts.Contrasts"
        )
    return out
