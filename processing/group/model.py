"""The study's group analyses, read from the BIDS Stats Models ``Subject``/``Dataset`` nodes.

Each ``Dataset`` node becomes group analyses per first-level t contrast, and per session when it
groups by session:

* a Dataset node fed by a ``Session`` (or ``Run``) node and grouped by ``session`` gives one
  model of each session's fixed-effects maps (reference study: ``groupBySession``, ``ses-pre``);
* a Dataset node fed by a ``Subject`` node gives one model per contrast of that node, whose
  ``ConditionList`` names sessions (``session.post``, ``session.pre``) with weights: the
  subject-level combination ``sum_s w_s effect_s`` with variance ``sum_s w_s^2 variance_s``
  (``[1, -1]``: the paired post - pre difference; label ``ses-<contrast>``, e.g.
  ``ses-postMinusPre``).

The source of a node is the ``Source`` of the edge that ends at it (BIDS Stats Models), or the
node before it when the model has no edges.

Group design (``Model.X`` of the Dataset node)
    Dataset-level variables are the columns of ``participants.tsv`` (and of ``phenotype/*.tsv``,
    see :func:`processing.group.model_design.variable_table`), named as in BIDS Stats Models:

    * ``1``: the intercept (design column ``intercept``; a contrast may call it ``1`` or
      ``intercept``);
    * ``age`` (a numeric column): a covariate, demeaned over the subjects in the model, so the
      intercept stays the group mean at the average covariate value (FEAT "demean EVs");
    * ``group`` (a non-numeric column): a factor, one indicator column ``group.<level>`` per
      level (cell means; it replaces the intercept, so ``1`` must not be in X as well);
    * ``group.patient``: the indicator of one level of a column.

Contrasts
    Without explicit ``Contrasts`` (``DummyContrasts``, the default) each analysis tests the
    intercept: the group mean (X must contain ``1``). Explicit ``Contrasts`` of the Dataset node
    (t tests, one row of ``Weights`` over a ``ConditionList`` of X columns, e.g.
    ``{Name: patientVsControl, ConditionList: [group.patient, group.control], Weights: [1, -1]}``)
    each give an analysis per first-level contrast; their output entity is
    ``contrast-<first-level><Name>`` (``contrast-P40vsP0PatientVsControl``), so every map has its
    own name. ``DummyContrasts`` together with explicit ``Contrasts`` adds the group mean.

Variance groups (FLAME1) come from ``boldcloud.group_level.variance_groups``, a column such as
``site``: one between-subject variance per value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["GroupAnalysis", "group_analyses"]

INTERCEPT = "1"


@dataclass(frozen=True)
class GroupAnalysis:
    """One group model: a Dataset node contrast applied to one first-level contrast (and session).

    Attributes
    ----------
    node, task, contrast : str
        Dataset node name, task, first-level t contrast.
    sessions, weights : tuple
        Sessions combined per subject, in weight order, and their weights (``(1,)`` one-sample,
        ``(1, -1)`` paired).
    session_label : str or None
        ``pre``, ``postMinusPre``, or None (a dataset without sessions).
    kind : str
        Session combination: ``one_sample``, ``paired`` or ``combination``.
    x : tuple of str
        ``Model.X`` of the node (``"1"`` the intercept).
    group_contrast : str or None
        Name of an explicit Dataset contrast; None for the group mean (DummyContrasts).
    conditions, group_weights : tuple
        ``ConditionList`` and ``Weights`` of that contrast (``("1",), (1.0,)`` for the mean).
    """

    node: str
    task: str
    contrast: str
    sessions: tuple[str | None, ...]
    weights: tuple[float, ...]
    session_label: str | None
    kind: str
    x: tuple[str, ...] = (INTERCEPT,)
    group_contrast: str | None = None
    conditions: tuple[str, ...] = (INTERCEPT,)
    group_weights: tuple[float, ...] = (1.0,)

    @property
    def output_contrast(self) -> str:
        """Value of the ``contrast`` entity: the first-level contrast [+ the Dataset contrast]."""
        if not self.group_contrast:
            return self.contrast
        return self.contrast + self.group_contrast[0].upper() + self.group_contrast[1:]

    @property
    def label(self) -> str:
        """Unit name and output stem: ``ses-pre_task-cuff_contrast-P40vsP0`` (BIDS order)."""
        parts = [f"ses-{self.session_label}"] if self.session_label else []
        return "_".join([*parts, f"task-{self.task}", f"contrast-{self.output_contrast}"])

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of the outputs (``ses``, ``task``, ``contrast``)."""
        out = {"task": self.task, "contrast": self.output_contrast}
        if self.session_label:
            out["ses"] = self.session_label
        return out

    @property
    def variables(self) -> tuple[str, ...]:
        """Dataset-level variables (participants/phenotype columns) that X uses, in X order."""
        out: list[str] = []
        for entry in self.x:
            if entry != INTERCEPT:
                name = entry.split(".", 1)[0]
                if name not in out:
                    out.append(name)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """Plain data for payloads, records and task keys."""
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> GroupAnalysis:
        """Inverse of :meth:`to_json` (keys of older records that no longer exist are ignored)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in obj.items() if k in known}
        for key in ("sessions", "weights", "x", "conditions", "group_weights"):
            if key in data:
                data[key] = tuple(data[key] or ())
        return cls(**data)


def _source(nodes: list[Mapping], edges: Sequence[Mapping], index: int) -> Mapping | None:
    name = nodes[index]["Name"]
    by_name = {n["Name"]: n for n in nodes}
    for edge in edges:
        if edge.get("Destination") == name:
            return by_name.get(edge.get("Source"))
    return nodes[index - 1] if index > 0 and not edges else None


def _one_row(node: Mapping, spec: Mapping) -> list:
    raw = list(spec["Weights"])
    if spec.get("Test", "t") != "t" or (raw and isinstance(raw[0], list | tuple)):
        raise ValueError(
            f"node {node['Name']!r}, contrast {spec['Name']!r}: only t contrasts (Test: t, one "
            f"row of weights) are supported at the {node.get('Level')} level; split an F "
            "contrast into t contrasts"
        )
    if len(raw) != len(spec["ConditionList"]):
        raise ValueError(
            f"node {node['Name']!r}, contrast {spec['Name']!r}: {len(raw)} weights for "
            f"{len(spec['ConditionList'])} conditions {spec['ConditionList']}; give one weight each"
        )
    return raw


def _session_weights(node: Mapping, spec: Mapping) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Sessions and weights of a Subject-level contrast over ``session.<label>`` conditions."""
    sessions, weights = [], []
    for condition, weight in zip(spec["ConditionList"], _one_row(node, spec), strict=True):
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


def _x_entry(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != 1:
            raise ValueError(f"Model.X entry {value!r}: the only number allowed is 1 (intercept)")
        return INTERCEPT
    return str(value)


def _group_contrasts(node: Mapping, x: tuple[str, ...]) -> list[tuple[str | None, tuple, tuple]]:
    """``(name, conditions, weights)`` of every group contrast of a Dataset node."""
    name = node["Name"]
    explicit = list(node.get("Contrasts") or ())
    dummy = node.get("DummyContrasts")
    if dummy is None and not explicit:
        dummy = {"Test": "t"}
    out: list[tuple[str | None, tuple, tuple]] = []
    if dummy is not None and dummy.get("Test", "t") != "skip":
        if INTERCEPT not in x:
            if not explicit:
                raise ValueError(
                    f"node {name!r}: Model.X {list(x)} has no intercept 1, so DummyContrasts "
                    "(the group mean) is undefined; add 1 to X or give explicit Contrasts "
                    "(e.g. ConditionList [group.patient, group.control], Weights [1, -1])"
                )
        else:
            out.append((None, (INTERCEPT,), (1.0,)))
    for spec in explicit:
        weights = tuple(float(w) for w in _one_row(node, spec))
        conditions = tuple(_x_entry(c) if c in (1, 1.0) else str(c) for c in spec["ConditionList"])
        out.append((str(spec["Name"]), conditions, weights))
    return out


def _session_combos(node: Mapping, source: Mapping | None, present: list[str], sessions: Sequence):
    level = source.get("Level") if source else "Session"
    name = node["Name"]
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
    return combos


def _wanted(contrasts: list[str], only: Sequence[str] | None) -> list[str]:
    if not only:
        return contrasts
    unknown = [c for c in only if c not in contrasts]
    if unknown:
        raise ValueError(
            f"boldcloud.group_level.contrasts names {unknown}, which are not first-level t "
            f"contrasts; use some of {contrasts}"
        )
    return [c for c in contrasts if c in only]


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
        In node order, then task, session, first-level contrast and group contrast order.

    Raises
    ------
    ValueError
        Naming the node at fault (unknown contrast, session or unsupported construct).
    """
    nodes = list(model.get("Nodes", ()))
    edges = list(model.get("Edges", ()) or ())
    contrasts = _wanted(list(first_level), only)
    present = [s for s in sessions if s is not None]
    out: list[GroupAnalysis] = []
    for i, node in enumerate(nodes):
        if node.get("Level") != "Dataset":
            continue
        x = tuple(_x_entry(v) for v in node["Model"]["X"])
        tests = _group_contrasts(node, x)
        dummy = node.get("DummyContrasts") or {}
        wanted = [c for c in contrasts if not dummy.get("Contrasts") or c in dummy["Contrasts"]]
        combos = _session_combos(node, _source(nodes, edges, i), present, sessions)
        for task in tasks:
            for ses, w, label, kind in combos:
                for contrast in wanted:
                    for test, conditions, weights in tests:
                        out.append(GroupAnalysis(node["Name"], task, contrast, ses, w, label,
                                                 kind, x, test, conditions, weights))  # fmt: skip
    labels = [a.label for a in out]
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        raise ValueError(
            f"two Dataset nodes produce the same group maps {repeated}; restrict one of them "
            "with DummyContrasts.Contrasts or rename a Dataset contrast"
        )
    return out
