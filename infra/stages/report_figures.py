"""The report's own PNG parts, drawn from maps already in the store: each group map as a slice
montage over the template, and each group design matrix. Written under ``group/report/``."""

from __future__ import annotations

from typing import Any

import numpy as np

from infra.derivatives import read_nifti, write_png
from infra.stages.group_inference import GROUP_ROOT
from infra.storage import Store
from processing.figures.montage import Outline, save_slice_montage
from processing.figures.plots import save_design_matrix_png
from processing.normalise.template import TEMPLATE_RESOLUTION_MM, load_template

PARTS_ROOT = f"{GROUP_ROOT}/report"


def _template_t1(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The template T1w on the maps' grid (zeros when the grid is not a template grid)."""
    step = round(float(np.linalg.norm(affine[:3, 0])))
    try:
        t1 = load_template(step).t1
    except (ValueError, OSError):
        t1 = load_template(TEMPLATE_RESOLUTION_MM).t1
    return t1 if t1.shape == shape else np.zeros(shape, dtype=np.float32)


def montage_png(store: Store, analysis: dict[str, Any]) -> str:
    """Slice montage of one analysis' z map over the template, FWE-significant clusters outlined.

    Parameters
    ----------
    store : Store
        Store holding the analysis' NIfTI maps.
    analysis : dict
        A report entry of a done analysis (``label``, ``outputs``, ``params``).

    Returns
    -------
    str
        Store key of the PNG.
    """
    out, files = analysis["outputs"], analysis["outputs"]["files"]
    info = out.get("inference", {})
    source = "ols_z" if info.get("statistic_map") == "ols" and "ols_z" in files else "z"
    zmap, affine = read_nifti(store, files[source])
    significant, _ = read_nifti(store, files["thresholded"])
    threshold = float(analysis.get("params", {}).get("boldcloud.inference.cluster_forming_z", 2.3))
    background = _template_t1(affine, zmap.shape)
    label = analysis["label"]
    title = (f"{label}: z ({info.get('statistic_map', 'z')}) where |z| > {threshold:g}; "
             "black outline: FWE-significant clusters")  # fmt: skip
    outline = Outline((significant != 0).astype(np.float32), 0.5, "black", 0.8)
    extent = background > 0.2 * background.max() if background.any() else None
    return write_png(
        store,
        f"{PARTS_ROOT}/{label}_montage.png",
        lambda path: save_slice_montage(
            background, path, extent=extent, outlines=[outline], overlay=zmap,
            threshold=threshold, affine=affine, n_slices=6, title=title, overlay_label="z",
        ),
    )  # fmt: skip


def design_png(store: Store, label: str, design: dict[str, Any]) -> str:
    """The group design matrix of an analysis (rows: subjects), with its contrast.

    Parameters
    ----------
    store : Store
        Where the PNG goes.
    label : str
        Analysis label (file stem).
    design : dict
        ``group_stack``'s design (``matrix``, ``columns``, ``subjects``, ``contrast``, ``kind``).

    Returns
    -------
    str
        Store key of the PNG.
    """
    rows = [f"sub-{s}" for s in design["subjects"]]
    title = design.get("kind", "").replace("_", "-")
    return write_png(
        store,
        f"{PARTS_ROOT}/{label}_design.png",
        lambda path: save_design_matrix_png(
            design["matrix"], design["columns"], rows, path,
            contrast=design.get("contrast"), title=title,
        ),
    )  # fmt: skip


__all__ = ["PARTS_ROOT", "design_png", "montage_png"]
