"""The study report's HTML: one self-contained page (images embedded as data: URIs, TSV links
relative to the page, resolving inside the store's ``group/`` folder).

:func:`render_report` turns :func:`infra.stages.report_collect.report_payload` into
``group/report.html`` plus its PNG parts; nothing is recomputed but the figures.
"""

from __future__ import annotations

import base64
import posixpath
import time
from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import read_tsv
from infra.stages.group_inference import GROUP_ROOT
from infra.stages.report_figures import design_png, montage_png
from infra.stages.report_template import TEMPLATE
from infra.stages.roi import software_versions
from infra.storage import Store
from processing.methods import methods_paragraph

REPORT_KEY = f"{GROUP_ROOT}/report.html"
CLUSTER_COLUMNS = ["side", "cluster", "voxels", "volume_mm3", "p_fwe", "peak_z", "peak_x_mm",
                   "peak_y_mm", "peak_z_mm", "cog_x_mm", "cog_y_mm", "cog_z_mm"]  # fmt: skip
ROI_TABLES = (("rois", "ROIs"), ("change", "Percent signal change, post - pre"),
              ("correlations", "Correlations with clinical change scores"))  # fmt: skip
CLINICAL_TABLES = (("clinical_paired", "Paired t-tests, post vs pre (d_z and d_av)"),
                   ("clinical_correlations", "Pearson correlations of pre measures"))  # fmt: skip


def png_data(store: Store, key: str | None) -> str | None:
    """A stored PNG as a ``data:`` URI (None when absent)."""
    if not key or not store.exists(key):
        return None
    return "data:image/png;base64," + base64.b64encode(store.read_bytes(key)).decode()


def html_table(frame: pd.DataFrame | None, columns: list[str] | None = None) -> str:
    """A compact HTML table (4 significant digits, ``n/a`` for missing values)."""
    if frame is None or frame.empty:
        return '<p class="muted">(none)</p>'
    shown = frame[[c for c in (columns or frame.columns) if c in frame.columns]]
    return shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="n/a",
                         border=0, escape=True)  # fmt: skip


def _link(key: str) -> str:
    return posixpath.relpath(key, posixpath.dirname(REPORT_KEY))


def _tables(store: Store, files: dict, titles, parts: list[str]) -> list[dict[str, str]]:
    out = []
    for key, title in titles:
        if files.get(key):
            parts.append(files[key])
            out.append({"title": title, "html": html_table(read_tsv(store, files[key])),
                        "href": _link(files[key])})  # fmt: skip
    return out


def _analysis(store: Store, a: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    entry = dict(a)
    if a.get("design"):
        entry["design_image"] = png_data(store, _part(parts, design_png(store, a["label"],
                                                                         a["design"])))  # fmt: skip
    if a["state"] != "done":
        return entry
    files = a["outputs"]["files"]
    entry["image"] = png_data(store, _part(parts, montage_png(store, a)))
    entry["table"] = html_table(read_tsv(store, files["clusters"]), CLUSTER_COLUMNS)
    entry["links"] = {name: _link(_part(parts, files[name]))
                      for name in ("clusters", "peaks") if files.get(name)}  # fmt: skip
    entry["names"] = ", ".join(f"sub-{s}" for s in a["outputs"]["subjects"])
    return entry


def _part(parts: list[str], key: str) -> str:
    parts.append(key)
    return key


def _motion_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fd = np.array([r.get("max_fd_mm") for r in rows], dtype=np.float64)
    if not rows or not np.isfinite(fd).any():
        return {"n": len(rows), "excluded": 0, "median_max_fd": np.nan, "worst_max_fd": np.nan}
    return {
        "n": len(rows),
        "excluded": sum(bool(r.get("excluded")) for r in rows),
        "median_max_fd": float(np.nanmedian(fd)),
        "worst_max_fd": float(np.nanmax(fd)),
    }


def render_report(store: Store, p: dict[str, Any]) -> dict[str, Any]:
    """Write ``group/report.html`` and its PNG parts from a report payload.

    Parameters
    ----------
    store : Store
        The study's store (maps and tables are read from it, the report written to it).
    p : dict
        :func:`infra.stages.report_collect.report_payload`.

    Returns
    -------
    dict
        ``report`` (key), ``parts`` (keys under ``group/`` the page embeds or links),
        ``analyses`` and ``significant`` (cluster count).
    """
    import jinja2
    from markupsafe import Markup

    parts: list[str] = []
    shown = [_analysis(store, a, parts) for a in p["analyses"]]
    for a in shown:
        a["table"] = Markup(a.get("table", ""))
    roi = p["roi"]
    files = roi.get("files", {})
    wrap = [{**t, "html": Markup(t["html"])} for t in _tables(store, files, ROI_TABLES, parts)]
    clinical = _tables(store, files, CLINICAL_TABLES, parts)
    scatter = [{"alt": name, "src": png_data(store, _part(parts, key))}
               for name, key in sorted(files.get("scatter", {}).items())]  # fmt: skip
    designs = [{**d, "src": png_data(store, d.get("plot"))} for d in p["designs"]]
    versions = p.get("software") or software_versions()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    page = env.from_string(TEMPLATE).render(
        study=p["study"], generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        versions=versions, subjects=p["subjects"], runs=p["runs"],
        warnings=p.get("warnings"), motion=p["motion"],
        motion_summary=_motion_summary(p["motion"]), designs=designs, analyses=shown,
        roi_tables=wrap, roi_reason=roi.get("reason") or "no significant cluster in the ROI maps",
        scatter=scatter, clinical_tables=[{**t, "html": Markup(t["html"])} for t in clinical],
        methods=methods_paragraph(p["ran"], p["facts"], versions),
    )  # fmt: skip
    store.write_bytes(REPORT_KEY, page.encode())
    done = [a for a in shown if a["state"] == "done"]
    return {"report": REPORT_KEY, "parts": sorted(set(parts)), "analyses": len(shown),
            "significant": sum(a["outputs"].get("significant", 0) for a in done)}  # fmt: skip


__all__ = ["REPORT_KEY", "html_table", "png_data", "render_report"]
