"""Ground-truth derivative (``derivatives/truth``): writers and a reader for the transforms.

Per subject (``sub-XX/anat``), native space = the T1w world space (also the BOLD world space of
every run's reference volume):

* ``..._from-T1w_to-MNI152NLin2009aSym_desc-affine_xfm.txt``: the 4 x 4 affine ``A``
  (native mm -> MNI mm);
* ``..._from-T1w_to-MNI152NLin2009aSym_desc-displacement_xfm.nii.gz``: ``u`` on the T1w grid,
  (x, y, z, 3) float32 in mm, with ``mni = A @ native + u(native)``;
* ``..._from-MNI152NLin2009aSym_to-T1w_desc-displacement_xfm.nii.gz``: ``v`` on the MNI grid of
  the truth maps, with ``native = A^-1 @ mni + v(mni)``;
* ``..._space-T1w_desc-brain_mask.nii.gz`` (T1w grid) and ``..._space-T1w_res-bold_desc-
  brain_mask.nii.gz`` (the subject's BOLD grid).

Per session (``sub-XX/ses-YY/func``): planted effect maps (% signal change per unit regressor) per
condition, ``..._space-MNI152NLin2009aSym_contrast-<cond>_stat-psc_statmap.nii.gz`` and
``..._space-T1w_res-bold_contrast-<cond>_stat-psc_statmap.nii.gz``; per run the true motion
``..._run-N_desc-truemotion_timeseries.tsv`` (see :mod:`processing.simulate.motion`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import apply_affine
from processing.simulate.anatomy import grid_points, template_maps
from processing.simulate.motion import MotionTrace
from processing.simulate.specs import MNI_STEP, TASK, TEMPLATE_SPACE
from processing.simulate.subject import SubjectSpace
from processing.simulate.writers import nifti_header, write_json, write_nifti, write_tsv

__all__ = [
    "StoredTransform",
    "load_subject_transform",
    "mni_grid",
    "write_effect_truth",
    "write_motion_truth",
    "write_subject_truth",
]

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
FWD = f"from-T1w_to-{TEMPLATE_SPACE}"
INV = f"from-{TEMPLATE_SPACE}_to-T1w"


def mni_grid(size: str) -> tuple[NDArray[np.float64], tuple[int, int, int]]:
    """Affine and shape of the MNI grid of the truth maps (2 mm full, 4 mm small)."""
    maps = template_maps()
    step = MNI_STEP[size]
    affine = maps.affine.copy()
    affine[:3, :3] *= step
    shape = tuple(-(-n // step) for n in maps.t1.shape)
    return affine, shape


def _affine_text(matrix: NDArray[np.float64]) -> str:
    rows = [" ".join(f"{v + 0.0:.10f}" for v in row) for row in matrix]
    return "\n".join(rows) + "\n"


def _field(path: Path, field: NDArray, affine, code: int, text: str, executor) -> None:
    data = np.asarray(field, dtype=np.float32)
    header = nifti_header(data.shape, np.float32, affine, intent="vector", code=code)
    write_nifti(path, data, header, executor)
    write_json(
        path.with_name(path.name.replace(".nii.gz", ".json")), {"Description": text, "Units": "mm"}
    )


def write_subject_truth(
    truth: Path, sid: str, space: SubjectSpace, size: str, executor: Executor
) -> None:
    """Write a subject's transforms and native brain masks (see module docstring)."""
    anat = truth / sid / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    tf = space.transform
    (anat / f"{sid}_{FWD}_desc-affine_xfm.txt").write_text(_affine_text(tf.affine))
    t1_points = grid_points(space.t1_affine, space.t1_raw.shape)
    _field(
        anat / f"{sid}_{FWD}_desc-displacement_xfm.nii.gz",
        tf.displacement(t1_points),
        space.t1_affine,
        1,
        "u(x) on the native T1w grid: MNI = A @ native + u(native) (A: desc-affine_xfm.txt)",
        executor,
    )
    mni_affine, mni_shape = mni_grid(size)
    mni_points = grid_points(mni_affine, mni_shape)
    inverse = tf.to_native(mni_points) - apply_affine(np.linalg.inv(tf.affine), mni_points)
    _field(
        anat / f"{sid}_{INV}_desc-displacement_xfm.nii.gz",
        inverse,
        mni_affine,
        4,
        "v(y) on the MNI grid: native = inv(A) @ MNI + v(MNI) (A: desc-affine_xfm.txt)",
        executor,
    )
    for name, mask, affine in (
        (f"{sid}_space-T1w_desc-brain_mask.nii.gz", space.t1_mask, space.t1_affine),
        (f"{sid}_space-T1w_res-bold_desc-brain_mask.nii.gz", space.bold_mask, space.bold_affine),
    ):
        write_nifti(anat / name, mask, nifti_header(mask.shape, np.uint8, affine), executor)


def write_effect_truth(
    truth: Path,
    sid: str,
    ses: str,
    mni_maps: dict[str, NDArray[np.float32]],
    native_maps: dict[str, NDArray[np.float32]],
    mni_affine: NDArray[np.float64],
    bold_affine: NDArray[np.float64],
    executor: Executor,
) -> None:
    """Write the planted effect maps of one session, per condition, in MNI and native space."""
    func = truth / sid / ses / "func"
    for cond in mni_maps:
        for space_label, maps, affine, code in (
            (f"space-{TEMPLATE_SPACE}", mni_maps, mni_affine, 4),
            ("space-T1w_res-bold", native_maps, bold_affine, 1),
        ):
            data = maps[cond]
            name = f"{sid}_{ses}_task-{TASK}_{space_label}_contrast-{cond}_stat-psc_statmap.nii.gz"
            header = nifti_header(data.shape, np.float32, affine, code=code)
            write_nifti(func / name, data, header, executor)


def write_motion_truth(truth: Path, sid: str, ses: str, run: int, trace: MotionTrace) -> Path:
    """Write a run's true motion parameters (TSV + JSON sidecar)."""
    path = truth / sid / ses / "func" / f"{sid}_{ses}_task-{TASK}_run-{run}_desc-truemotion"
    tsv = path.with_name(path.name + "_timeseries.tsv")
    columns = {c: trace.params[:, k] for k, c in enumerate(MOTION_COLUMNS)}
    write_tsv(tsv, columns, float_format="%.6f")
    write_json(
        path.with_name(path.name + "_timeseries.json"),
        {
            "Description": "Planted rigid head motion. Row t holds the parameters of M_t, the "
            "map from a point's world position in the reference volume to its position in "
            "volume t: M(x) = R (x - c) + c + t, R = Rz @ Ry @ Rx, c = world coordinate of the "
            "BOLD volume centre.",
            "ReferenceVolume": trace.reference,
            "trans_x": {"Units": "mm"},
            "trans_y": {"Units": "mm"},
            "trans_z": {"Units": "mm"},
            "rot_x": {"Units": "rad"},
            "rot_y": {"Units": "rad"},
            "rot_z": {"Units": "rad"},
        },
    )
    return tsv


def _sample_field(img: nib.Nifti1Image, points: NDArray[np.float64]) -> NDArray[np.float64]:
    data = np.asarray(img.dataobj, dtype=np.float64)
    vox = apply_affine(np.linalg.inv(img.affine), points).reshape(-1, 3).T
    cols = [ndimage.map_coordinates(data[..., k], vox, order=1, mode="nearest") for k in range(3)]
    return np.stack(cols, axis=-1).reshape(points.shape)


@dataclass(frozen=True)
class StoredTransform:
    """A subject's native <-> MNI transform read back from ``derivatives/truth``.

    Attributes
    ----------
    affine : ndarray, shape (4, 4)
        ``A``, native mm -> MNI mm.
    forward : nibabel.Nifti1Image
        ``u`` on the native T1w grid.
    inverse : nibabel.Nifti1Image
        ``v`` on the MNI grid.
    """

    affine: NDArray[np.float64]
    forward: nib.Nifti1Image
    inverse: nib.Nifti1Image

    def to_mni(self, points: ArrayLike) -> NDArray[np.float64]:
        """Native mm -> MNI mm, shape (..., 3), trilinear in the stored field."""
        pts = np.asarray(points, dtype=np.float64)
        return apply_affine(self.affine, pts) + _sample_field(self.forward, pts)

    def to_native(self, points: ArrayLike) -> NDArray[np.float64]:
        """MNI mm -> native mm, shape (..., 3), trilinear in the stored field."""
        pts = np.asarray(points, dtype=np.float64)
        return apply_affine(np.linalg.inv(self.affine), pts) + _sample_field(self.inverse, pts)


def load_subject_transform(truth: str | Path, subject: str) -> StoredTransform:
    """Read a subject's stored transform.

    Parameters
    ----------
    truth : str or Path
        The ``derivatives/truth`` folder.
    subject : str
        ``sub-XX``.

    Returns
    -------
    StoredTransform
    """
    anat = Path(truth) / subject / "anat"
    text = anat / f"{subject}_{FWD}_desc-affine_xfm.txt"
    if not text.exists():
        raise FileNotFoundError(f"no stored transform for {subject}: {text} is missing")
    return StoredTransform(
        np.loadtxt(text),
        nib.load(anat / f"{subject}_{FWD}_desc-displacement_xfm.nii.gz"),
        nib.load(anat / f"{subject}_{INV}_desc-displacement_xfm.nii.gz"),
    )
