"""processing is pure science; infra reaches it only through public names.

``lint-imports`` (import-linter, run by ``make test``) enforces the forbidden imports; this test
adds the rule import-linter cannot express: infra never imports a private processing module or
name (anything starting with ``_``).
"""

from __future__ import annotations

import ast

from conftest import REPO

FORBIDDEN_IN_PROCESSING = {
    "dask",
    "distributed",
    "fsspec",
    "s3fs",
    "boto3",
    "botocore",
    "zarr",
    "xarray",
    "infra",
}


def imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                yield node.module, alias.name


def test_processing_imports_no_engine_or_storage():
    offenders = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in (REPO / "processing").rglob("*.py")
        for module, _ in imports(path)
        if module.split(".")[0] in FORBIDDEN_IN_PROCESSING
    ]
    assert offenders == []


def test_infra_uses_only_public_processing_names():
    offenders = [
        f"{path.relative_to(REPO)}: {module}.{name}"
        for path in (REPO / "infra").rglob("*.py")
        for module, name in imports(path)
        if module.startswith("processing")
        and (any(p.startswith("_") for p in module.split(".")) or (name or "").startswith("_"))
    ]
    assert offenders == []
