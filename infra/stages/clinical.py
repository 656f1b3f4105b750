"""Engine side of the ``group_roi`` statistics: phenotype tables, ROI-change correlations with
clinical change scores (+ scatter plots), and the clinical tables.

* Correlations (Spearman by default, Pearson on request) of the ROI changes with the change
  scores named in ``boldcloud.roi.clinical_changes`` (phenotype columns with a ``session_id``:
  post - pre; columns without sessions, e.g. practice minutes, as they are), pairwise-complete N,
  with the outlier-robust repeat; scatter plots.
* Clinical tables (``boldcloud.clinical``): paired t-tests pre vs post per measure with mean
  (SD), t, P, d_z and d_av, and the Pearson correlation matrix of the pre measures.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from infra.arrays import write_tsv
from infra.derivatives import write_png
from infra.manifest import content_key
from infra.pipeline import PlanContext
from infra.stages.group_inference import GROUP_ROOT
from infra.storage import Store
from processing.figures.plots import save_scatter_png
from processing.group.clinical import correlation_matrix, paired_tests, roi_correlations


def phenotype_table(ctx: PlanContext) -> tuple[dict[str, dict], str]:
    """Phenotype and participants columns of the dataset, as plain data.

    Parameters
    ----------
    ctx : PlanContext
        Planning context (its dataset's ``phenotype/`` tables and ``participants.tsv``).

    Returns
    -------
    wide : dict
        ``{column: {subject: value}}`` of the numeric columns; columns of tables with a
        ``session_id`` become ``<column>_<session>``.
    key : str
        A fingerprint of ``wide`` (a task-key input).
    """
    wanted = ctx.param("boldcloud.clinical.phenotype_tables")
    tables = dict(ctx.dataset.phenotype or {})
    if wanted:
        missing = [t for t in wanted if t not in tables]
        if missing:
            raise ValueError(
                f"boldcloud.clinical.phenotype_tables names {missing}, not in the dataset's "
                f"phenotype/ folder (tables: {sorted(tables)})"
            )
        tables = {k: v for k, v in tables.items() if k in wanted}
    if ctx.dataset.participants is not None:
        tables = {"participants": ctx.dataset.participants, **tables}
    wide: dict[str, dict] = {}
    for table in tables.values():
        if "participant_id" not in table.columns:
            continue
        subjects = table["participant_id"].astype(str).str.removeprefix("sub-")
        sessions = (
            table["session_id"].astype(str).str.removeprefix("ses-")
            if "session_id" in table.columns
            else None
        )
        for column in table.columns:
            if column in ("participant_id", "session_id"):
                continue
            values = pd.to_numeric(table[column], errors="coerce")
            if values.isna().all():
                continue
            for i, value in enumerate(values):
                name = column if sessions is None else f"{column}_{sessions.iloc[i]}"
                if value == value:
                    wide.setdefault(name, {})[subjects.iloc[i]] = float(value)
    return wide, content_key(wide=wide)


def _change_scores(p: dict, pheno: pd.DataFrame) -> pd.DataFrame:
    scores = {}
    pre, post = p["sessions"]
    for name in p["roi"]["clinical_changes"] or []:
        if f"{name}_{pre}" in pheno.columns and f"{name}_{post}" in pheno.columns:
            scores[f"{name}_change"] = pheno[f"{name}_{post}"] - pheno[f"{name}_{pre}"]
        elif name in pheno.columns:
            scores[name] = pheno[name]
        else:
            raise ValueError(
                f"boldcloud.roi.clinical_changes names {name!r}, which is neither a phenotype "
                f"column with sessions {pre}/{post} nor a subject-level column; available: "
                f"{sorted(pheno.columns)}"
            )
    return pd.DataFrame(scores, index=pheno.index)


def roi_change_correlations(
    store: Store, p: dict, change: pd.DataFrame, pheno: pd.DataFrame, files: dict
) -> list[dict]:
    """Correlations of ROI changes with the clinical change scores; TSV and scatter PNGs.

    Parameters
    ----------
    store : Store
        Where the table and plots go (``group/``).
    p : dict
        The ``group_roi`` payload (``roi`` settings, ``sessions``).
    change : DataFrame
        Post - pre ROI values, one row per subject label, one column per ROI.
    pheno : DataFrame
        :func:`phenotype_table` as a frame (rows: subject labels).
    files : dict
        Output keys, updated in place (``correlations``, ``scatter``).

    Returns
    -------
    list of dict
        The table's rows.
    """
    scores = _change_scores(p, pheno)
    if scores.empty:
        return []
    method = p["roi"]["correlation"]
    robust = bool(p["roi"]["robust_leave_one_out"])
    frames = [roi_correlations(change, scores, method=m, robust=robust)
              for m in dict.fromkeys([method, "spearman", "pearson"])]  # fmt: skip
    table = pd.concat(frames, ignore_index=True)
    if "dropped_subject" in table.columns:
        table["dropped_subject"] = [
            f"sub-{s}" if isinstance(s, str) else s for s in table["dropped_subject"]
        ]
    table["significant"] = table["p"] <= p["roi"]["alpha"]
    files["correlations"] = write_tsv(store, f"{GROUP_ROOT}/desc-roicorrelations_table.tsv", table)
    left, right = change.align(scores, join="outer", axis=0)
    for roi in change.columns:
        for score in scores.columns:
            row = table[(table.roi == roi) & (table.score == score) & (table.method == method)]
            key = f"{GROUP_ROOT}/roi/desc-{roi}_score-{score.replace('_', '')}_scatter.png"
            files["scatter"][f"{roi}|{score}"] = write_png(
                store, key, lambda path, r=roi, s=score, row=row: save_scatter_png(
                    right[s].to_numpy(float), left[r].to_numpy(float),
                    [str(i) for i in left.index], path, title=_scatter_title(r, s, row),
                    xlabel=s, ylabel=f"{r} PSC change"),
            )  # fmt: skip
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
            for rec in table.to_dict("records")]  # fmt: skip


def _scatter_title(roi: str, score: str, row: pd.DataFrame) -> str:
    stats = row.iloc[0].to_dict() if len(row) else {}
    r, pval, n = stats.get("r", float("nan")), stats.get("p", float("nan")), stats.get("n", 0)
    return f"{roi} vs {score}\n{stats.get('method', '')} r={r:.2f} p={pval:.3g} N={n}"


def clinical_tables(store: Store, p: dict, pheno: pd.DataFrame, files: dict) -> dict[str, Any]:
    """Paired t-tests (post vs pre) per measure and the Pearson matrix of the pre measures.

    Parameters
    ----------
    store : Store
        Where the TSVs go (``group/``).
    p : dict
        The ``group_roi`` payload (``clinical_measures``, ``sessions``).
    pheno : DataFrame
        :func:`phenotype_table` as a frame.
    files : dict
        Output keys, updated in place (``clinical_paired``, ``clinical_correlations``).

    Returns
    -------
    dict
        ``{"paired": rows}``, empty when no measures or sessions are configured.
    """
    measures = list(p["clinical_measures"])
    if not measures or not p["sessions"]:
        return {}
    pre, post = p["sessions"]
    missing = [m for m in measures if f"{m}_{pre}" not in pheno.columns]
    if missing:
        known = sorted({c.rsplit("_", 1)[0] for c in pheno.columns if c.endswith(f"_{pre}")})
        raise ValueError(
            f"boldcloud.clinical.measures {missing} are not phenotype columns with sessions "
            f"{pre}/{post}; available: {known}"
        )
    tests = paired_tests(pheno, measures, pre_suffix=f"_{pre}", post_suffix=f"_{post}")
    table = tests.reset_index()
    files["clinical_paired"] = write_tsv(store, f"{GROUP_ROOT}/desc-clinicalpaired_table.tsv",
                                         table)  # fmt: skip
    r, pv, n = correlation_matrix(pheno, [f"{m}_{pre}" for m in measures], method="pearson")
    long = pd.DataFrame(
        [{"a": a, "b": b, "r": r.loc[a, b], "p": pv.loc[a, b], "n": n.loc[a, b]}
         for i, a in enumerate(r.index) for b in r.index[i + 1:]]
    )  # fmt: skip
    files["clinical_correlations"] = write_tsv(
        store, f"{GROUP_ROOT}/desc-clinicalcorrelations_table.tsv", long
    )
    return {"paired": [{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                       for rec in table.to_dict("records")]}  # fmt: skip


__all__ = ["clinical_tables", "phenotype_table", "roi_change_correlations"]
