"""Byte-reproducible writers: NIfTI-1 (.nii.gz), TSV and JSON.

NIfTI files are written by hand (nibabel builds the header) so that nothing depends on the clock
or the path: the gzip header has mtime 0, no file name and OS 255. The deflate stream is made of
independently compressed 16 MiB chunks joined with sync flushes (as pigz does), which lets the
chunks be compressed in parallel threads while the result stays a single standard gzip member
whose bytes do not depend on the number of threads. The RLE strategy compresses noisy integer
images as well as the default strategy at about twice the speed.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

__all__ = ["nifti_header", "write_json", "write_nifti", "write_tsv"]

CHUNK_BYTES = 16 << 20
GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


def nifti_header(
    shape: tuple[int, ...],
    dtype: np.dtype | str,
    affine: ArrayLike,
    tr: float | None = None,
    slope: float = 1.0,
    inter: float = 0.0,
    intent: str | None = None,
    description: str = "boldcloud simulate",
    code: int = 1,
) -> nib.Nifti1Header:
    """A NIfTI-1 header with units (mm, s), sform/qform code 1 (scanner) or 4 (MNI).

    Parameters
    ----------
    shape : tuple of int
        Data shape in (x, y, z[, t | c]) order.
    dtype : numpy dtype
        On-disk data type.
    affine : array_like, shape (4, 4)
        Voxel -> mm affine.
    tr : float, optional
        Repetition time (s), stored in ``pixdim[4]`` of 4-D series.
    slope, inter : float
        ``scl_slope`` and ``scl_inter`` (1 and 0 mean unscaled).
    intent : str, optional
        nibabel intent code name, e.g. ``"vector"`` for displacement fields.
    description : str
        ``descrip`` field (at most 79 characters).
    code : int
        sform and qform code: 1 scanner (native images), 4 MNI152 (template-space maps).

    Returns
    -------
    nibabel.Nifti1Header
    """
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_data_shape(shape)
    aff = np.asarray(affine, dtype=np.float64)
    zooms = list(np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))
    if len(shape) > 3:
        zooms += [tr if tr is not None else 1.0] + [1.0] * (len(shape) - 4)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_sform(aff, code=code)
    hdr.set_qform(aff, code=code)
    hdr.set_slope_inter(slope, inter)
    if intent is not None:
        hdr.set_intent(intent)
    hdr["descrip"] = description.encode()[:79]
    hdr["vox_offset"] = 352
    return hdr


def _deflate(chunk: memoryview, last: bool) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return comp.compress(chunk) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def write_nifti(
    path: str | Path,
    data: NDArray,
    header: nib.Nifti1Header,
    executor: Executor | None = None,
) -> Path:
    """Write ``header`` and ``data`` as a reproducible ``.nii.gz``.

    Parameters
    ----------
    path : str or Path
        Output file (parents are created).
    data : ndarray, shape matching the header, (x, y, z, ...) order
        Raw on-disk values (already scaled/quantised), any memory layout; an F-contiguous
        array (e.g. ``tzyx_array.T``) is written without a copy.
    header : nibabel.Nifti1Header
        From :func:`nifti_header`.
    executor : concurrent.futures.Executor, optional
        Threads for parallel compression.

    Returns
    -------
    Path
    """
    path = Path(path)
    if tuple(data.shape) != tuple(header.get_data_shape()):
        raise ValueError(f"data shape {data.shape} != header shape {header.get_data_shape()}")
    if data.dtype != header.get_data_dtype():
        raise ValueError(f"data dtype {data.dtype} != header dtype {header.get_data_dtype()}")
    flat = np.asfortranarray(data).reshape(-1, order="F")
    payload = memoryview(flat).cast("B")
    head = header.binaryblock + b"\x00" * 4
    pieces = [memoryview(head)] + [
        payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)
    ]
    flags = [False] * (len(pieces) - 1) + [True]
    if executor is None:
        compressed = list(map(_deflate, pieces, flags))
    else:
        compressed = list(executor.map(_deflate, pieces, flags))
    crc = zlib.crc32(payload, zlib.crc32(head))
    size = (len(head) + len(payload)) & 0xFFFFFFFF
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fobj:
        fobj.write(GZIP_HEADER)
        for part in compressed:
            fobj.write(part)
        fobj.write(struct.pack("<II", crc & 0xFFFFFFFF, size))
    return path


def _clean(value):
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def write_json(path: str | Path, obj: Mapping) -> Path:
    """Write ``obj`` as indented JSON (floats rounded to 6 decimals, NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(obj), indent=2) + "\n")
    return path


def write_tsv(
    path: str | Path, columns: Mapping[str, Sequence], float_format: str = "%.6g"
) -> Path:
    """Write a BIDS TSV (tab separated, ``n/a`` for missing, ``\\n`` line ends)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(dict(columns))
    frame.to_csv(
        path, sep="\t", index=False, na_rep="n/a", float_format=float_format, lineterminator="\n"
    )
    return path
