"""The registration template: MNI152 ICBM 2009a nonlinear symmetric, from nilearn's wheel.

nilearn ships ``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` (1 mm, 197 x 233 x 189,
skull-stripped, uint8) in ``nilearn/datasets/data``: the ICBM 2009a *nonlinear symmetric* T1w
template, TemplateFlow's ``MNI152NLin2009aSym`` (not fMRIPrep's default ``MNI152NLin2009cAsym``,
nor FSL's ``MNI152NLin6Asym``). :func:`load_template` resamples it to 2 mm with nilearn (the
grid the simulator's truth maps use: 99 x 117 x 95 voxels, origin (-98, -134, -72) mm) and
takes nilearn's brain mask definition (template > 0.2 after scaling to 0-1), with enclosed
holes filled. Nothing is downloaded.

Arrays follow the project convention: ``(z, y, x)`` in C order, with the NIfTI affine mapping
voxel indices ``(i, j, k) = (x, y, z)`` to RAS+ world millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["TEMPLATE_RESOLUTION_MM", "TEMPLATE_SPACE", "Template", "load_template"]

TEMPLATE_SPACE = "MNI152NLin2009aSym"
TEMPLATE_RESOLUTION_MM = 2
_MASK_THRESHOLD = 0.2  # nilearn.datasets.load_mni152_brain_mask's default


@dataclass(frozen=True)
class Template:
    """A template image on its grid.

    Attributes
    ----------
    space : str
        TemplateFlow identifier, e.g. ``"MNI152NLin2009aSym"``.
    affine : ndarray, shape (4, 4)
        Voxel ``(x, y, z)`` -> RAS+ mm.
    t1 : ndarray, shape (z, y, x), float32
        Skull-stripped T1w template scaled to 0-1 (WM ~0.8, GM ~0.65, CSF ~0.3).
    mask : ndarray of bool, shape (z, y, x)
        Brain mask.
    """

    space: str
    affine: NDArray[np.float64]
    t1: NDArray[np.float32]
    mask: NDArray[np.bool_]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(z, y, x)``."""
        return self.t1.shape  # type: ignore[return-value]

    @property
    def resolution_mm(self) -> float:
        """Voxel size in mm (isotropic)."""
        return float(np.linalg.norm(self.affine[:3, 0]))


@lru_cache(maxsize=4)
def load_template(resolution_mm: int = TEMPLATE_RESOLUTION_MM) -> Template:
    """The MNI152NLin2009aSym template at ``resolution_mm`` (cached; arrays are read-only).

    Parameters
    ----------
    resolution_mm : int
        Isotropic voxel size in mm (1 = nilearn's native grid; 2 = the project's MNI grid).

    Returns
    -------
    Template
    """
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution_mm)
    xyz = np.asarray(img.get_fdata(), dtype=np.float32)
    mask = ndimage.binary_fill_holes(xyz > _MASK_THRESHOLD)
    t1 = np.ascontiguousarray(xyz.T)
    brain = np.ascontiguousarray(mask.T)
    t1.setflags(write=False)
    brain.setflags(write=False)
    affine = np.asarray(img.affine, dtype=np.float64)
    affine.setflags(write=False)
    return Template(TEMPLATE_SPACE, affine, t1, brain)
