"""Study files: the reference example is valid; bad files give every problem, readably."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, make_tiny_bids

from infra.study import load_study

EXAMPLE = REPO / "docs" / "examples" / "reference-study.yaml"


def write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_reference_example_is_valid_and_encodes_the_paper():
    study = load_study(str(EXAMPLE))
    assert study.issues == []
    assert study.get("preprocessing.smoothing_fwhm_mm") == 5.0
    assert study.get("preprocessing.highpass_cutoff_s") == 90
    assert study.get("preprocessing.motion_exclusion_mm") == 2.0
    assert study.get("boldcloud.inference.cluster_forming_z") == 2.3
    assert study.get("boldcloud.roi.sphere_diameter_mm") == 4
    assert study.get("preprocessing.interpolation") == "cubic"  # FEAT's mcflirt -spline_final
    run_node = study.doc["model"]["Nodes"][0]
    assert run_node["Model"]["HRF"]["Parameters"]["Derivative"] is True
    names = [c["Name"] for c in run_node["Contrasts"]]
    assert names == ["P40", "P0", "P40vsP0", "anticipation"]
    assert study.dataset_url.endswith("demo-output/bids")


def test_defaults_come_from_the_schema(tmp_path):
    doc = example()
    del doc["preprocessing"]
    study = load_study(write(tmp_path, doc))
    assert study.get("preprocessing.highpass_cutoff_s") == 100  # FEAT's default
    assert study.get("boldcloud.run_level.noise_model") == "film"


def test_every_schema_problem_is_reported_at_once(tmp_path):
    doc = example()
    doc["preprocessing"]["smoothing_fwhm_mm"] = -5
    doc["preprocessing"]["smooth"] = 5
    doc["boldcloud"]["run_level"]["noise_model"] = "ar2"
    del doc["model"]["Nodes"][0]["Model"]["X"]
    issues = load_study(write(tmp_path, doc)).issues
    text = "\n".join(map(str, issues))
    assert len(issues) == 4, text
    assert "preprocessing.smoothing_fwhm_mm: -5 is less than the minimum of 0" in text
    assert "unknown field(s) ('smooth' was unexpected)" in text
    assert "remove or rename it; allowed here:" in text
    assert "boldcloud.run_level.noise_model: 'ar2' is not one of ['film', 'ar1', 'ols']" in text
    assert "model.Nodes.0.Model: 'X' is a required property" in text


def test_model_consistency_problems(tmp_path):
    doc = example()
    doc["model"]["Nodes"][0]["Contrasts"][2]["Weights"] = [1]
    doc["model"]["Nodes"][0]["Contrasts"][3]["ConditionList"] = ["anticipaton"]
    doc["model"]["Edges"][0]["Destination"] = "sessions"
    text = "\n".join(map(str, load_study(write(tmp_path, doc)).issues))
    assert "1 weights for 2 conditions ['P40', 'P0']" in text
    assert "condition(s) ['anticipaton'] are not design columns" in text
    assert "model.Edges.0.Destination: no node named 'sessions'" in text


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    issues = load_study(str(path)).issues
    assert len(issues) == 1 and "line 2" in str(issues[0])


def test_cli_validate_checks_the_dataset_too(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    (next(bids.rglob("sub-01_ses-pre_task-demo_run-2_events.tsv"))).write_text("onset\n1\n")
    doc = {
        "name": "tiny",
        "dataset": "bids",
        "model": {
            "Name": "m",
            "BIDSModelVersion": "1.0.0",
            "Input": {"task": ["demo"]},
            "Nodes": [
                {
                    "Level": "Run",
                    "Name": "run",
                    "Model": {"X": ["A", "C", "trans_x"]},
                    "Contrasts": [{"Name": "A", "ConditionList": ["A"], "Weights": [1]}],
                },
                {
                    "Level": "Dataset",
                    "Name": "byAge",
                    "GroupBy": ["contrast"],
                    "Model": {"Type": "glm", "X": [1, "agee"]},
                    "Contrasts": [{"Name": "age", "ConditionList": ["agee"], "Weights": [1]}],
                },
            ],
        },
    }
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "validate", write(tmp_path, doc)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "300"},
    )
    assert result.returncode == 1
    assert "sub-01_ses-pre_task-demo_run-2_events.tsv: events: " in result.stdout
    assert "missing column(s) ['duration', 'trial_type']" in result.stdout
    assert "'C' is neither a trial_type" in result.stdout
    assert "Dataset node 'byAge' uses 'agee', which is not a column" in result.stdout
    assert "3 error(s)" in result.stdout


def test_motion_resampling_defaults_to_cubic_spline(tmp_path):
    """Left out of a study file, the final motion resampling is FEAT's cubic B-spline."""
    doc = example()
    del doc["preprocessing"]["interpolation"]
    study = load_study(write(tmp_path, doc))
    assert study.issues == []
    assert study.get("preprocessing.interpolation") == "cubic"
    doc["preprocessing"]["interpolation"] = "sinc"
    text = "\n".join(str(i) for i in load_study(write(tmp_path, doc)).issues)
    assert "sinc" in text and "trilinear" in text and "cubic" in text
