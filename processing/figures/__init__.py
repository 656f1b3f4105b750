"""Figures shared by QC, stages and the study report: slice montages and small plots."""

from processing.figures.montage import ORIENTATIONS, Outline, pick_slices, save_slice_montage
from processing.figures.plots import save_design_matrix_png, save_scatter_png

__all__ = [
    "ORIENTATIONS",
    "Outline",
    "pick_slices",
    "save_design_matrix_png",
    "save_scatter_png",
    "save_slice_montage",
]
