"""The run-level model read from a BIDS Stats Models node: columns, contrasts, clear errors."""

import numpy as np
import pytest
import yaml

from processing.firstlevel.model import RunModel, UndefinedContrast, run_contrast, run_node

EXAMPLE = "docs/examples/reference-study.yaml"


def _reference_node():
    with open(EXAMPLE) as fh:
        return run_node(yaml.safe_load(fh)["model"])


def test_reference_study_node_parses_to_conditions_confounds_and_contrasts():
    model = RunModel.from_node(_reference_node(), noise_model="film")
    assert model.conditions == ("anticipation", "P40", "P0")
    assert model.confounds == ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    assert model.hrf_model == "fsl" and model.derivatives
    assert [c.name for c in model.contrasts] == ["P40", "P0", "P40vsP0", "anticipation"]


def test_contrast_weights_follow_the_runs_columns():
    model = RunModel.from_node(_reference_node())
    columns = ["anticipation", "anticipation_derivative", "P40", "P40_derivative", "P0", "trans_x"]
    vs = next(c for c in model.contrasts if c.name == "P40vsP0")
    np.testing.assert_array_equal(run_contrast(vs, columns, {}), [0, 0, 1, 0, -1, 0])


def test_contrast_needing_a_dropped_condition_is_undefined_not_zero():
    model = RunModel.from_node(_reference_node())
    vs = next(c for c in model.contrasts if c.name == "P40vsP0")
    with pytest.raises(UndefinedContrast, match="'P40vsP0' needs 'P0': no events"):
        run_contrast(vs, ["anticipation", "P40"], {"P0": "no events in this run"})
    anticipation = next(c for c in model.contrasts if c.name == "anticipation")
    assert run_contrast(anticipation, ["anticipation", "P40"], {"P0": "no events"}).tolist() == [
        1,
        0,
    ]


def _node(**contrast):
    return {
        "Level": "Run",
        "Name": "run",
        "Model": {"X": ["a", "b", 1, "trans_x"], "HRF": {"Variables": ["a", "b"], "Model": "spm"}},
        "Contrasts": [contrast],
    }


def test_bad_contrasts_name_the_contrast():
    with pytest.raises(ValueError, match=r"contrast 'ab': unknown condition\(s\) \['c'\]"):
        RunModel.from_node(_node(Name="ab", ConditionList=["a", "c"], Weights=[1, -1]))
    with pytest.raises(ValueError, match="contrast 'ab': 1 weights"):
        RunModel.from_node(_node(Name="ab", ConditionList=["a", "b"], Weights=[1]))
    with pytest.raises(ValueError, match="t contrast takes one row"):
        RunModel.from_node(_node(Name="ab", ConditionList=["a", "b"], Weights=[[1, 0], [0, 1]]))


def test_f_contrast_rows_and_intercept_dropped():
    model = RunModel.from_node(
        _node(Name="any", ConditionList=["a", "b"], Weights=[[1, 0], [0, 1]], Test="F"),
        extra_confounds=["rot_x"],
    )
    assert model.confounds == ("trans_x", "rot_x")  # the intercept 1 is not a column
    weights = run_contrast(model.contrasts[0], ["a", "b", "trans_x", "rot_x"], {})
    np.testing.assert_array_equal(weights, [[1, 0, 0, 0], [0, 1, 0, 0]])


def test_model_needs_exactly_one_run_node():
    with pytest.raises(ValueError, match="exactly one node with Level: Run, found 0"):
        run_node({"Nodes": [{"Level": "Session", "Name": "s"}]})
