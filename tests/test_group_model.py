"""Group models from the study's BIDS Stats Model: parsing of every Dataset-node form, designs
from participants' variables (covariates, factors, variance groups) and bad-input errors."""

import copy

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from infra.arrays import write_array
from infra.stages.group_stack import check_grids
from infra.storage import Store
from infra.study import load_study
from processing.group.flame import ols
from processing.group.model import GroupAnalysis, group_analyses
from processing.group.model_design import model_design, variable_table

FIRST = ["P40", "P0", "P40vsP0", "anticipation"]
SUBJECTS = [f"{i:02d}" for i in range(1, 9)]


def _model(**dataset_node):
    """The reference model with its last Dataset node replaced by ``dataset_node``."""
    model = copy.deepcopy(load_study("docs/examples/reference-study.yaml").doc["model"])
    node = {"Level": "Dataset", "Name": "groupBySession", "GroupBy": ["session", "contrast"],
            "Model": {"Type": "glm", "X": [1]}, **dataset_node}  # fmt: skip
    model["Nodes"] = [n for n in model["Nodes"] if n["Level"] != "Dataset"] + [node]
    model["Edges"] = [e for e in model["Edges"] if e["Destination"] != "groupPostVsPre"]
    return model


def test_reference_study_parses_to_one_sample_and_paired_analyses():
    study = load_study("docs/examples/reference-study.yaml")
    found = group_analyses(study.doc["model"], ["cuff"], ["pre", "post"], FIRST)
    labels = [a.label for a in found]
    assert len(found) == 12 and "ses-pre_task-cuff_contrast-P40vsP0" in labels
    assert "ses-postMinusPre_task-cuff_contrast-anticipation" in labels
    paired = next(a for a in found if a.session_label == "postMinusPre")
    assert paired.kind == "paired" and paired.sessions == ("post", "pre")
    assert paired.weights == (1.0, -1.0) and paired.x == ("1",) and paired.group_contrast is None
    assert GroupAnalysis.from_json({**paired.to_json(), "covariates": []}) == paired  # old records
    with pytest.raises(ValueError, match="not first-level t contrasts"):
        group_analyses(study.doc["model"], ["cuff"], ["pre", "post"], ["P40"], only=["P50"])


def test_covariate_two_group_and_factor_forms():
    covariate = _model(Model={"Type": "glm", "X": [1, "age"]},
                       Contrasts=[{"Name": "age", "ConditionList": ["age"], "Weights": [1]}],
                       DummyContrasts={"Test": "t"})  # fmt: skip
    found = group_analyses(covariate, ["cuff"], ["pre"], ["P40"])
    assert [a.label for a in found] == [
        "ses-pre_task-cuff_contrast-P40",
        "ses-pre_task-cuff_contrast-P40Age",
    ]
    assert found[1].conditions == ("age",) and found[1].variables == ("age",)
    assert found[1].entities == {"task": "cuff", "contrast": "P40Age", "ses": "pre"}
    assert found[1].contrast == "P40"  # the first-level contrast (ROI weights) stays
    two = _model(Model={"Type": "glm", "X": ["group.patient", "group.control", "age"]},
                 Contrasts=[{"Name": "patientVsControl", "Weights": [1, -1],
                             "ConditionList": ["group.patient", "group.control"]}])  # fmt: skip
    (a,) = group_analyses(two, ["cuff"], ["pre"], ["P40"])
    assert a.label.endswith("contrast-P40PatientVsControl") and a.variables == ("group", "age")
    factor = _model(Model={"Type": "glm", "X": ["group"]},
                    Contrasts=[{"Name": "diff", "ConditionList": ["group.a", "group.b"],
                                "Weights": [1, -1], "Test": "t"}])  # fmt: skip
    (f,) = group_analyses(factor, ["cuff"], ["pre"], ["P40"])
    assert f.x == ("group",) and f.group_weights == (1.0, -1.0)


def test_unsupported_dataset_forms_are_clear_errors():
    no_intercept = _model(Model={"Type": "glm", "X": ["group"]})
    with pytest.raises(ValueError, match=r"no intercept 1.*DummyContrasts"):
        group_analyses(no_intercept, ["cuff"], ["pre"], ["P40"])
    f_test = _model(Contrasts=[{"Name": "f", "ConditionList": [1], "Weights": [[1]], "Test": "F"}])
    with pytest.raises(ValueError, match="only t contrasts"):
        group_analyses(f_test, ["cuff"], ["pre"], ["P40"])
    lengths = _model(Contrasts=[{"Name": "x", "ConditionList": [1, "age"], "Weights": [1]}])
    with pytest.raises(ValueError, match="1 weights for 2 conditions"):
        group_analyses(lengths, ["cuff"], ["pre"], ["P40"])


TABLE = {
    "age": [31.0, 45.0, 38.0, 52.0, 29.0, 60.0, 41.0, 35.0],
    "group": ["patient", "control"] * 4,
    "site": ["a", "a", "b", "b", "a", "b", "a", "b"],
}


def test_two_group_design_ols_equals_scipy_ttest_ind():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(8, 40)) + 0.7 * (np.array(TABLE["group"]) == "patient")[:, None]
    built = model_design(["group"], ["group.patient", "group.control"], [1, -1], SUBJECTS, TABLE)
    assert built.design.columns == ("group.control", "group.patient")
    assert built.permutation == "rows"  # the mean is nuisance: exchangeable rows
    fit = ols(y, built.design, built.contrast)
    patient = np.array(TABLE["group"]) == "patient"
    ref = stats.ttest_ind(y[patient], y[~patient], equal_var=True)
    np.testing.assert_allclose(fit.t, ref.statistic, rtol=1e-12)
    assert fit.dof == 6


def test_covariate_design_ols_equals_lstsq_and_covariate_is_demeaned():
    rng = np.random.default_rng(1)
    age = np.array(TABLE["age"])
    x_true = np.column_stack([np.ones(8), age - age.mean(), np.array(TABLE["site"]) == "b"])
    y = x_true @ rng.normal(size=(3, 30)) + rng.normal(size=(8, 30))
    x = ["1", "age", "site.b"]
    for cond, j in (("age", 1), ("1", 0)):
        built = model_design(x, [cond], [1.0], SUBJECTS, TABLE, variance_groups="site")
        np.testing.assert_allclose(built.design.matrix, x_true)
        assert built.permutation == ("rows" if cond == "age" else "sign")
        fit = ols(y, built.design, built.contrast)
        beta, rss, *_ = np.linalg.lstsq(x_true, y, rcond=None)
        cov = np.linalg.inv(x_true.T @ x_true)[j, j]
        np.testing.assert_allclose(fit.effect, beta[j], rtol=1e-10)
        np.testing.assert_allclose(fit.t, beta[j] / np.sqrt(rss / 5 * cov), rtol=1e-10)
        assert built.design.variance_groups.tolist() == [0, 0, 1, 1, 0, 1, 0, 1]


def test_missing_values_drop_subjects_and_say_who():
    table = {**TABLE, "age": [31.0, None, 38.0, 52.0, np.nan, 60.0, 41.0, 35.0]}
    built = model_design(["1", "age"], ["age"], [1.0], SUBJECTS, table)
    assert built.dropped == {"02": "missing age (group model variables)",
                             "05": "missing age (group model variables)"}  # fmt: skip
    assert built.design.subjects == ("01", "03", "04", "06", "07", "08")
    kept = np.array([31.0, 38.0, 52.0, 60.0, 41.0, 35.0])
    np.testing.assert_allclose(built.design.matrix[:, 1], kept - kept.mean())
    few = {"age": [31.0, None, None, 52.0, 40.0]}
    with pytest.raises(ValueError, match=r"at least 3 subjects, got 2 .*dropped.*'02', '03'"):
        model_design(["1", "age"], ["1"], [1], SUBJECTS[:4], {"age": few["age"][:4]})


def test_design_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="intercept 1 and the factor 'group'"):
        model_design(["1", "group"], ["1"], [1], SUBJECTS, TABLE)
    with pytest.raises(ValueError, match=r"no value 'patients'; its values are \['control'"):
        model_design(["group.patients"], ["group.patients"], [1], SUBJECTS, TABLE)
    with pytest.raises(ValueError, match=r"condition 'sex' is not a column.*'intercept', 'age'"):
        model_design(["1", "age"], ["sex"], [1], SUBJECTS, TABLE)
    with pytest.raises(ValueError, match=r"variance groups \['c'\] have fewer than 2"):
        model_design(["1"], ["1"], [1], SUBJECTS[:4], {"v": ["a", "a", "c", "a"]},
                     variance_groups="v")  # fmt: skip
    with pytest.raises(ValueError, match="rank deficient"):
        model_design(["1", "age"], ["1"], [1], SUBJECTS[:4], {"age": [3, 3, 3, 3]})


def test_variable_table_reads_participants_then_phenotype_and_lists_columns():
    participants = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"],
                                 "age": [30, None, 50], "site": ["a", "b", "a"]})  # fmt: skip
    phenotype = {
        "promis": pd.DataFrame(
            {
                "participant_id": ["sub-01", "sub-01", "sub-02", "sub-02"],
                "session_id": ["ses-pre", "ses-post"] * 2,
                "pain": [5.0, 3.0, 6.0, 4.0],
            }
        ),
        "practice": pd.DataFrame({"participant_id": ["sub-01", "sub-03"], "minutes": [90, 30]}),
    }
    subs = ["01", "02", "03"]
    table = variable_table(participants, phenotype, subs, ["age", "pain", "minutes"], ["post"])
    assert table == {"age": [30.0, None, 50.0], "pain": [3.0, 4.0, None],
                     "minutes": [90, None, 30]}  # fmt: skip
    with pytest.raises(ValueError, match=r"'bmi'.*available columns: \['age', 'minutes', 'pain'"):
        variable_table(participants, phenotype, subs, ["bmi"])
    with pytest.raises(ValueError, match=r"one value per session.*participants\.tsv"):
        variable_table(participants, phenotype, subs, ["pain"], ["post", "pre"])


def test_maps_on_different_grids_name_both_subjects(tmp_path):
    store = Store(str(tmp_path))
    analysis = GroupAnalysis("g", "cuff", "P40", ("pre",), (1.0,), "pre", "one_sample")
    included = {}
    grids = (("01", (4, 5, 6), 2.0), ("02", (4, 5, 6), 2.0), ("03", (4, 5, 7), 3.0))
    for sub, shape, step in grids:
        affine = np.diag([step, step, step, 1.0]).tolist()
        key = write_array(store, f"m/{sub}", np.zeros(shape, np.float32), ("z", "y", "x"),
                          attrs={"affine": affine})  # fmt: skip
        included[sub] = {"pre": {"effect": key}}
    shape, _, _ = check_grids(store, included, ["01", "02"], analysis)
    assert shape == (4, 5, 6)
    with pytest.raises(ValueError, match=r"sub-01 .*\(4, 5, 6\).*sub-03 on \(4, 5, 7\).*3\.0"):
        check_grids(store, included, ["01", "02", "03"], analysis)
