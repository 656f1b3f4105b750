"""Rates of issue 6's end-to-end criteria over several simulated studies (seeds).

Each criterion of ``validate_study.py`` is a pass/fail of one run, and two of them are chance
events even for a calibrated analysis: whether a cluster's Z peak lands within 6 mm of the
planted coordinate (criterion 1), and whether any post - pre map has a false-positive cluster
(criterion 3: each map and side is tested at cluster FWE ``alpha``, so over ``k`` map sides a
run has one with probability up to ``1 - (1 - alpha) ** k``). This script reads the JSON that
``validate_study.py --json`` wrote for each run and prints the rates, with Wilson 95 % intervals,
beside that expectation.

    .venv/bin/python benchmarks/validate_seeds.py RUN1/validate.json RUN2/validate.json ...

Exit status 0; 2 when a file is missing or not a ``validate_study.py`` result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scipy import stats


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion (scipy's ``binomtest``)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """The ``validate_study.py`` results, in the order given."""
    results = []
    for path in paths:
        doc = json.loads(path.read_text())
        if not {"clusters", "correlations", "false_positives", "paired_analyses"} <= set(doc):
            raise ValueError(f"{path} is not a validate_study.py --json result")
        doc["_path"] = str(path)
        results.append(doc)
    return results


def _rate(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits}/{n} ({low:.2f}-{high:.2f})"


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per planted change, per planted correlation and per run: counts and rates.

    Parameters
    ----------
    results : list of dict
        ``validate_study.py`` results, one per run.

    Returns
    -------
    dict
        ``changes`` (roi -> significant, within, distances), ``correlations`` (roi/measure ->
        right sign, r values), ``false_positive_runs``, ``map_sides``, ``alpha``,
        ``expected_fp_run_rate`` (the independent-maps bound), ``all_pass``, ``runs``.
    """
    changes: dict[str, dict[str, Any]] = {}
    for res in results:
        for row in res["clusters"]["rows"]:
            entry = changes.setdefault(row["roi"], {"significant": 0, "within": 0, "mm": []})
            entry["significant"] += row["p_fwe"] is not None
            entry["within"] += bool(row["ok"])
            near = [d for d in (row["distance_mm"], row["nearest_local_max_mm"]) if d is not None]
            entry["mm"].append(round(min(near), 1) if near else None)
    correlations: dict[str, dict[str, Any]] = {}
    for res in results:
        for row in res["correlations"]["rows"]:
            entry = correlations.setdefault(f"{row['roi']} x {row['measure']}", {"ok": 0, "r": []})
            entry["ok"] += bool(row["ok"])
            entry["r"].append(None if row["r"] is None else round(row["r"], 2))
    alpha = max(res["settings"]["alpha"] for res in results)
    sides = max(2 * len(res["paired_analyses"]) for res in results)
    return {
        "runs": len(results),
        "changes": changes,
        "correlations": correlations,
        "false_positive_runs": sum(not res["false_positives"]["pass"] for res in results),
        "alpha": alpha,
        "map_sides": sides,
        "expected_fp_run_rate": 1 - (1 - alpha) ** sides,
        "all_pass": sum(bool(res["pass"]) for res in results),
    }


def print_summary(summary: dict[str, Any]) -> None:
    """The rates as plain text."""
    n = summary["runs"]
    print(f"{n} runs")
    print("criterion 1, per planted change: significant | peak within the limit | distances mm")
    for roi, e in summary["changes"].items():
        print(f"  {roi:8s} {_rate(e['significant'], n):18s} {_rate(e['within'], n):18s} {e['mm']}")
    print("criterion 2, per planted correlation: right sign | r")
    for name, e in summary["correlations"].items():
        print(f"  {name:28s} {_rate(e['ok'], n):18s} {e['r']}")
    fp = summary["false_positive_runs"]
    print(
        f"criterion 3, runs with a false-positive cluster: {_rate(fp, n)}; at most "
        f"{summary['expected_fp_run_rate']:.2f} expected by chance "
        f"({summary['map_sides']} map sides at FWE {summary['alpha']:g}, independent maps)"
    )
    print(f"runs passing every criterion: {_rate(summary['all_pass'], n)}")


def main(argv: list[str] | None = None) -> int:
    """Read the results, print the rates."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="validate_study.py --json files")
    args = ap.parse_args(argv)
    try:
        summary = summarise(load(args.results))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
