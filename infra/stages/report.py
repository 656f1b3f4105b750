"""Engine side of ``group_report``: the study report, ``derivatives/boldcloud/group/report.html``.

The page is self-contained (images embedded as data: URIs; TSV links relative to it, inside the
store's ``group/`` folder) and lists the cohort and every exclusion with its reason, the motion
QC summary, the design matrices, each group map as a slice montage over the template with its
cluster table, the ROI and clinical tables with scatter plots, and a methods paragraph written
from the parameters the stages recorded when they ran, with software versions.

Modules: :mod:`infra.stages.report_collect` (records -> payload), :mod:`infra.stages.report_html`
(payload -> page), :mod:`infra.stages.report_figures` (montages, group designs),
:mod:`processing.methods` (the methods paragraph). ``group_roi`` lives in
:mod:`infra.stages.roi`. ``boldcloud report`` calls :func:`write_report`.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.group import analyses
from infra.stages.report_collect import report_payload
from infra.stages.report_html import REPORT_KEY, render_report
from infra.stages.roi import STUDY_UNIT, final_record, inference_records
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.stages import stage


def plan_group_report(ctx: PlanContext) -> StagePlan:
    """The study report, once the ROI/clinical task and every group analysis are final.

    Parameters
    ----------
    ctx : PlanContext
        Planning context.

    Returns
    -------
    StagePlan
        One ``report`` task (none while upstream group stages are unfinished).
    """
    units = []
    inference = inference_records(ctx) if analyses(ctx) else None
    roi = final_record(ctx.load("group_roi"), STUDY_UNIT)
    if inference is not None and roi is not None:
        payload = report_payload(ctx)
        upstream = {
            "group_inference": content_key(keys=sorted(r.key for r in inference)),
            "group_roi": roi.key,
            "summary": content_key(p=payload),
        }
        units.append(Unit("report", None, None, upstream, payload))
    return plan_units(stage("group_report"), units, ctx, run_group_report)


def run_group_report(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Render the report from the payload planned from the records."""
    return render_report(Store(spec.store_url), spec.payload)


def write_report(ctx: PlanContext) -> dict[str, Any]:
    """(Re)write the report from the records now in the store, whatever has finished.

    Parameters
    ----------
    ctx : PlanContext
        Planning context of the study whose store holds the records.

    Returns
    -------
    dict
        :func:`infra.stages.report_html.render_report`'s outputs (``report``, ``parts``...).

    Raises
    ------
    ValueError
        When the store holds no record of any stage (nothing has run there).
    """
    if not ctx.store.exists("manifest/tasks"):
        raise ValueError(
            f"no task records in {ctx.store.url}: run `boldcloud run` on the study first, or "
            "pass --store with the store that holds its results"
        )
    return render_report(ctx.store, report_payload(ctx))


def copy_report(store: Store, written: dict[str, Any], out: Path) -> Path:
    """Copy the report and the parts it links (same relative paths) into a local folder.

    Parameters
    ----------
    store : Store
        The store holding the report.
    written : dict
        :func:`write_report`'s outputs.
    out : Path
        Local folder (created).

    Returns
    -------
    Path
        The copied ``report.html``.
    """
    base = posixpath.dirname(written["report"])
    for key in [written["report"], *written["parts"]]:
        relative = posixpath.relpath(key, base)
        if relative.startswith(".."):
            continue  # outside the report's folder: not linked from the page
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(key))
    return out / posixpath.basename(written["report"])


__all__ = ["REPORT_KEY", "copy_report", "plan_group_report", "run_group_report", "write_report"]
