"""Checks and metadata for BOLD NIfTI headers (NIfTI-1/2 via nibabel headers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import numpy as np

_TIME_UNIT_TO_S = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
TR_TOLERANCE_S = 1e-3


class NiftiInputError(ValueError):
    """A NIfTI file that cannot be used as a BOLD run."""


@dataclass(frozen=True)
class BoldHeaderInfo:
    """What the pipeline needs from a BOLD header, with the TR already reconciled.

    Attributes
    ----------
    shape : tuple of int
        (x, y, z, t) as stored in the file.
    dtype : str
        On-disk data type (e.g. ``int16``); data are kept in it, never rescaled.
    affine : ndarray, shape (4, 4)
        Voxel -> world (mm) matrix nibabel selects (sform if set, else qform).
    sform_code, qform_code : int
        NIfTI codes, kept so a round trip restores them.
    zooms_mm : tuple of float
        Voxel sizes (x, y, z) in mm.
    tr_s : float
        Repetition time in seconds (sidecar ``RepetitionTime`` wins over the header, as BIDS says).
    scl_slope, scl_inter : float or None
        Scaling stored in the header (None when unset); never applied to stored data.
    warnings : tuple of str
        Non-fatal findings (e.g. header TR disagreeing with the sidecar).
    """

    shape: tuple[int, ...]
    dtype: str
    affine: np.ndarray
    sform_code: int
    qform_code: int
    zooms_mm: tuple[float, float, float]
    tr_s: float
    scl_slope: float | None
    scl_inter: float | None
    warnings: tuple[str, ...] = ()


def header_tr_s(header: nib.Nifti1Header) -> float | None:
    """TR from ``pixdim[4]`` converted to seconds, or None when the header carries none."""
    zooms = header.get_zooms()
    if len(zooms) < 4 or not np.isfinite(zooms[3]) or zooms[3] <= 0:
        return None
    time_unit = header.get_xyzt_units()[1]
    return float(zooms[3]) * _TIME_UNIT_TO_S.get(time_unit, 1.0)


def inspect_bold_header(
    header: nib.Nifti1Header, sidecar: Mapping[str, object], source: str
) -> BoldHeaderInfo:
    """Validate a BOLD header against its sidecar and collect its metadata.

    Parameters
    ----------
    header : nibabel.Nifti1Header
        The run's header (NIfTI-2 headers work too).
    sidecar : mapping
        The merged BIDS sidecar (inheritance already applied).
    source : str
        File name used in messages.

    Raises
    ------
    NiftiInputError
        Not 4-D (or 4-D with a single volume), or no TR in the sidecar nor the header.
    """
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) != 4 or shape[3] < 2:
        raise NiftiInputError(
            f"{source}: image has shape {shape}; a BOLD run must be 4-D (x, y, z, time) with "
            "at least 2 volumes. Is this a single volume or an anatomical image?"
        )
    warnings: list[str] = []
    from_header = header_tr_s(header)
    from_sidecar = sidecar.get("RepetitionTime")
    if from_sidecar is None and from_header is None:
        raise NiftiInputError(
            f"{source}: no repetition time: neither the sidecar JSON (RepetitionTime) nor the "
            "header (pixdim[4]) gives one. Add RepetitionTime in seconds to the run's sidecar "
            "or to task-<label>_bold.json at the dataset root."
        )
    if from_sidecar is not None:
        if not isinstance(from_sidecar, int | float) or from_sidecar <= 0:
            raise NiftiInputError(
                f"{source}: sidecar RepetitionTime={from_sidecar!r} must be a positive number "
                "of seconds."
            )
        tr_s = float(from_sidecar)
        if from_header is not None and abs(from_header - tr_s) > TR_TOLERANCE_S:
            warnings.append(
                f"{source}: header TR {from_header:g} s differs from sidecar RepetitionTime "
                f"{tr_s:g} s; using the sidecar (BIDS rule)."
            )
    else:
        tr_s = float(from_header)  # type: ignore[arg-type]
    slope, inter = header.get_slope_inter()
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    return BoldHeaderInfo(
        shape=shape,
        dtype=str(header.get_data_dtype()),
        affine=np.asarray(header.get_best_affine(), dtype=float),
        sform_code=int(sform_code),
        qform_code=int(qform_code),
        zooms_mm=tuple(float(z) for z in header.get_zooms()[:3]),  # type: ignore[arg-type]
        tr_s=tr_s,
        scl_slope=None if slope is None else float(slope),
        scl_inter=None if inter is None else float(inter),
        warnings=tuple(warnings),
    )
