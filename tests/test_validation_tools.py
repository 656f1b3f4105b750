"""The end-to-end validation scripts of issue 6 (benchmarks/validate_study.py and
validate_seeds.py): how a post - pre cluster is judged explained or a false positive, and the
rates over several runs (Wilson intervals equal scipy's)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infra.arrays import write_tsv
from infra.manifest import TaskRecord
from infra.storage import Store

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from validate_seeds import main as seeds_main
from validate_seeds import summarise, wilson
from validate_study import (
    Blob,
    check_false_positives,
    contrast_weights,
    expected_sign,
)

CONDITIONS = {"P40", "P0", "anticipation"}
RTPJ = Blob("rTPJ", np.array([54.0, -48.0, 24.0]), 8.0, "P40vsP0", "P40", -0.3)
DLPFC = Blob("dlPFC", np.array([-40.0, 30.0, 30.0]), 8.0, "P40vsP0", "P40", 0.25)
ANTICIPATION_RISE = Blob(
    "dlPFC", np.array([-40.0, 30.0, 30.0]), 8.0, "anticipation", "anticipation", 1.0
)
NO_CHANGE = Blob("S2", np.array([-50.0, -20.0, 20.0]), 8.0, "P40", None, 0.0)


def test_contrast_names_and_the_planted_side():
    assert contrast_weights("P40vsP0", CONDITIONS) == {"P40": 1.0, "P0": -1.0}
    assert contrast_weights("anticipation", CONDITIONS) == {"anticipation": 1.0}
    assert contrast_weights("P40plusP0", CONDITIONS) == {}
    assert expected_sign(RTPJ, contrast_weights("P40vsP0", CONDITIONS)) == -1
    assert expected_sign(RTPJ, contrast_weights("P0vsP40", CONDITIONS)) == 1
    assert expected_sign(RTPJ, contrast_weights("anticipation", CONDITIONS)) == 0
    assert expected_sign(NO_CHANGE, contrast_weights("P40", CONDITIONS)) == 0


def _cluster(number: int, side: str, xyz: list[float], p: float) -> dict:
    return {"cluster": number, "side": side, "voxels": 50, "p_fwe": p, "peak_z": 3.5,
            "peak_x_mm": xyz[0], "peak_y_mm": xyz[1], "peak_z_mm": xyz[2]}  # fmt: skip


def test_a_cluster_is_explained_only_by_a_change_of_its_side_nearby():
    clusters = [
        _cluster(1, "negative", [58.0, -44.0, 26.0], 0.01),  # on rTPJ, planted decrease
        _cluster(2, "positive", [54.0, -48.0, 24.0], 0.02),  # on rTPJ, wrong side
        _cluster(3, "positive", [-40.0, 30.0, 42.0], 0.03),  # 12 mm from dlPFC: explained
        _cluster(4, "positive", [-40.0, 30.0, 44.0], 0.03),  # 14 mm: too far
        _cluster(5, "negative", [0.0, 0.0, 0.0], 0.20),  # not significant
    ]
    paired = {
        "P40vsP0": TaskRecord("group_inference", "x", state="done", outputs={"clusters": clusters}),
        # rTPJ's change does not enter anticipation: a cluster there is a false positive
        "anticipation": TaskRecord(
            "group_inference",
            "y",
            state="done",
            outputs={"clusters": [_cluster(1, "negative", [54.0, -48.0, 24.0], 0.04)]},
        ),
    }
    rows = check_false_positives(None, [RTPJ, DLPFC, NO_CHANGE], paired, 0.05, CONDITIONS, 1.5)
    verdict = {(r["analysis"].split()[-1], r["cluster"]): r["false_positive"] for r in rows}
    assert verdict == {
        ("P40vsP0", 1): False, ("P40vsP0", 2): True, ("P40vsP0", 3): False,
        ("P40vsP0", 4): True, ("anticipation", 1): True,
    }  # fmt: skip
    assert next(r["explained_by"] for r in rows if r["cluster"] == 1) == ["rTPJ"]


def test_a_cluster_with_a_local_maximum_on_the_change_is_explained(tmp_path):
    """The peak 13.4 mm from dlPFC (farther than 1.5 x 8 mm), a listed local maximum 5 mm from
    it: the cluster is where the change was planted (as seed 7's anticipation cluster)."""
    store = Store(str(tmp_path))
    maxima = pd.DataFrame(
        {"cluster": [4, 4, 5], "side": ["positive", "positive", "negative"],
         "x_mm": [-40.0, -44.0, -40.0], "y_mm": [20.0, 30.0, 30.0], "z_mm": [39.0, 33.0, 30.0],
         "z": [4.0, 3.6, -3.0]}
    )  # fmt: skip
    write_tsv(store, "group/peaks.tsv", maxima)
    rec = TaskRecord(
        "group_inference",
        "x",
        state="done",
        outputs={
            "clusters": [
                _cluster(4, "positive", [-40.0, 20.0, 39.0], 0.0004),
                _cluster(5, "negative", [-40.0, 30.0, 30.0], 0.01),  # dlPFC rises: wrong side
            ],
            "files": {"peaks": "group/peaks.tsv"},
        },
    )
    blobs, paired = [ANTICIPATION_RISE], {"anticipation": rec}
    by_peak = check_false_positives(None, blobs, paired, 0.05, CONDITIONS, 1.5)
    assert [r["false_positive"] for r in by_peak] == [True, True]
    rows = check_false_positives(store, blobs, paired, 0.05, CONDITIONS, 1.5)
    assert [r["false_positive"] for r in rows] == [False, True]
    assert rows[0]["nearest_blob_mm"] == pytest.approx(13.4, abs=0.1)
    assert rows[0]["nearest_blob_max_mm"] == pytest.approx(5.0, abs=1e-9)


def test_wilson_interval():
    assert wilson(0, 5) == pytest.approx((0.0, 0.4345), abs=1e-4)  # textbook values
    assert wilson(1, 3) == pytest.approx((0.0615, 0.7923), abs=1e-4)
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        wilson(0, 0)


def _result(within: list[bool], p: list[float | None], fp: bool, r: float) -> dict:
    rows = [
        {"roi": name, "p_fwe": pv, "ok": ok, "distance_mm": 7.0 if not ok else 3.0,
         "nearest_local_max_mm": None}
        for name, ok, pv in zip(("rTPJ", "dlPFC"), within, p, strict=True)
    ]  # fmt: skip
    corr = [{"roi": "rTPJ", "measure": "pain", "ok": r < 0, "r": r}]
    return {
        "settings": {"alpha": 0.05},
        "paired_analyses": {c: "done" for c in ("P40", "P0", "P40vsP0", "anticipation")},
        "clusters": {"rows": rows, "pass": all(within)},
        "correlations": {"rows": corr, "pass": r < 0},
        "false_positives": {"rows": [], "pass": not fp},
        "pass": all(within) and r < 0 and not fp,
    }


def test_rates_over_runs(tmp_path, capsys):
    results = [
        _result([True, True], [0.01, 0.02], False, -0.4),
        _result([True, False], [0.01, 0.03], True, -0.2),
        _result([False, False], [None, 0.04], False, 0.1),
    ]
    summary = summarise(results)
    assert summary["runs"] == 3 and summary["all_pass"] == 1
    assert summary["changes"]["rTPJ"] == {"significant": 2, "within": 2, "mm": [3.0, 3.0, 7.0]}
    assert summary["changes"]["dlPFC"]["significant"] == 3
    assert summary["changes"]["dlPFC"]["within"] == 1
    assert summary["correlations"]["rTPJ x pain"] == {"ok": 2, "r": [-0.4, -0.2, 0.1]}
    assert summary["false_positive_runs"] == 1 and summary["map_sides"] == 8
    assert summary["expected_fp_run_rate"] == pytest.approx(1 - 0.95**8)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(results[0]))
    assert seeds_main([str(path)]) == 0
    assert "runs passing every criterion: 1/1" in capsys.readouterr().out
    (tmp_path / "other.json").write_text("{}")
    assert seeds_main([str(tmp_path / "other.json")]) == 2
    assert "not a validate_study.py --json result" in capsys.readouterr().err
