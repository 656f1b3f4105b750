"""Study files: load YAML/JSON, validate against schemas/study.schema.json, check the dataset.

Every problem is collected and reported at once, each with file, field and a fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from infra.storage import is_remote

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True)
class Issue:
    """One problem in a study file or its dataset."""

    file: str
    field: str
    message: str
    fix: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.file}: {self.field}: {self.message}{fix}"


@dataclass
class Study:
    """A validated study: the parsed document plus resolved locations."""

    path: str
    doc: dict[str, Any]
    dataset_url: str
    store_url: str | None
    issues: list[Issue] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.doc["name"]

    @property
    def tasks(self) -> list[str]:
        return list(self.doc["model"]["Input"]["task"])

    def select(self, key: str) -> list[str] | None:
        """Labels selected for ``subjects`` / ``sessions`` (None: all)."""
        chosen = self.doc.get("select", {}).get(key)
        if chosen is None and key == "subjects":
            chosen = self.doc["model"]["Input"].get("subject")
        if chosen is None and key == "sessions":
            chosen = self.doc["model"]["Input"].get("session")
        return chosen

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value by dotted path (``preprocessing.smoothing_fwhm_mm``), defaults applied."""
        node: Any = self.doc
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return _schema_default(dotted, default)
            node = node[part]
        return node


def load_schema(name: str = "study") -> dict[str, Any]:
    """A JSON Schema from ``schemas/``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def _schema_default(dotted: str, fallback: Any) -> Any:
    schema = load_schema()
    node: Any = schema
    for part in dotted.split("."):
        props = node.get("properties", {})
        if part not in props:
            return fallback
        node = props[part]
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node.get("default", fallback)


def read_document(path: str) -> tuple[Any, list[Issue]]:
    """Parse a YAML or JSON study file; syntax errors become issues with line numbers."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        return None, [
            Issue(path, "-", f"cannot read the file ({err.strerror}).", "check the path.")
        ]
    try:
        doc = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        return None, [Issue(path, "-", f"not valid YAML/JSON: {err}", "fix the syntax there.")]
    if not isinstance(doc, dict):
        found = type(doc).__name__
        return None, [
            Issue(
                path,
                "-",
                f"expected a mapping at top level, found {found}.",
                "start the file with 'name:', 'dataset:' and 'model:'.",
            )
        ]
    return doc, []


def schema_issues(doc: dict[str, Any], path: str) -> list[Issue]:
    """Every schema violation, with a JSON-path-like field name and a fix."""
    validator = jsonschema.Draft202012Validator(load_schema())
    issues = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        issues.append(Issue(path, where, _readable(err), _fix_for(err)))
    return issues


def _readable(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown field(s)")
    if err.validator in ("oneOf", "anyOf") and err.context:
        return f"{err.instance!r} is not valid: " + "; or ".join(
            sorted({c.message for c in err.context})
        )
    return err.message


def _fix_for(err: jsonschema.ValidationError) -> str:
    schema = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "required":
        return "add the missing field (see docs/examples/reference-study.yaml)."
    if err.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return f"remove or rename it; allowed here: {', '.join(allowed)}."
    if err.validator == "enum":
        return f"use one of {schema.get('enum')}."
    if "description" in schema:
        return schema["description"]
    return "see schemas/study.schema.json."


def model_issues(doc: dict[str, Any], path: str) -> list[Issue]:
    """Checks the schema cannot express: contrasts vs design columns, edges vs node names."""
    issues: list[Issue] = []
    nodes = doc.get("model", {}).get("Nodes", [])
    names = [n.get("Name") for n in nodes]
    for i, node in enumerate(nodes):
        columns = [str(x) for x in node.get("Model", {}).get("X", [])]
        for j, contrast in enumerate(node.get("Contrasts", [])):
            where = f"model.Nodes.{i}.Contrasts.{j}"
            conditions = [str(c) for c in contrast.get("ConditionList", [])]
            weights = contrast.get("Weights", [])
            if contrast.get("Test", "t") == "t" and len(weights) != len(conditions):
                issues.append(
                    Issue(
                        path,
                        where,
                        f"{len(weights)} weights for {len(conditions)} conditions {conditions}.",
                        "give one weight per condition.",
                    )
                )
            if node.get("Level") == "Run":
                unknown = [c for c in conditions if c not in columns]
                if unknown:
                    issues.append(
                        Issue(
                            path,
                            where,
                            f"condition(s) {unknown} are not design "
                            f"columns of node '{node.get('Name')}'.",
                            f"use names from Model.X: {columns}.",
                        )
                    )
    if not issues:  # contrast problems above already explain a failing run model
        issues += _run_node_issues(doc, path)
    for k, edge in enumerate(doc.get("model", {}).get("Edges", [])):
        for end in ("Source", "Destination"):
            if edge.get(end) not in names:
                issues.append(
                    Issue(
                        path,
                        f"model.Edges.{k}.{end}",
                        f"no node named {edge.get(end)!r}.",
                        f"use one of {names}.",
                    )
                )
    if len(set(names)) != len(names):
        issues.append(
            Issue(
                path,
                "model.Nodes",
                f"node names repeat: {names}.",
                "give every node a unique Name.",
            )
        )
    for k, ref in enumerate(doc.get("boldcloud", {}).get("roi", {}).get("maps", [])):
        if ref.split(":", 1)[0] not in names:
            issues.append(
                Issue(
                    path,
                    f"boldcloud.roi.maps.{k}",
                    f"{ref!r} names no node.",
                    f"write '<node>:<contrast>' with a node from {names}.",
                )
            )
    return issues


def _run_node_issues(doc: dict[str, Any], path: str) -> list[Issue]:
    """The run-level model must parse (one Run node, HRF variables among its X)."""
    from processing.firstlevel.model import RunModel, run_node

    try:
        RunModel.from_node(run_node(doc.get("model", {})))
    except (ValueError, KeyError) as err:
        return [Issue(path, "model.Nodes", str(err), "fix the Run node of the model.")]
    return []


def resolve_location(value: str, study_path: str) -> str:
    """A dataset/store location: URLs unchanged, relative paths from the study file's folder."""
    if is_remote(value) or Path(value).is_absolute():
        return value
    return str((Path(study_path).resolve().parent / value).resolve())


def load_study(path: str, store_override: str | None = None) -> Study:
    """Load and validate a study file; issues are in ``study.issues`` (empty when valid)."""
    doc, issues = read_document(path)
    if doc is None:
        return Study(path, {}, "", store_override, issues)
    issues += schema_issues(doc, path)
    if not issues:
        issues += model_issues(doc, path)
    dataset = resolve_location(doc["dataset"], path) if isinstance(doc.get("dataset"), str) else ""
    store = store_override or (resolve_location(doc["store"], path) if doc.get("store") else None)
    return Study(path, doc, dataset, store, issues)
