"""User-facing outputs under ``derivatives/boldcloud/``: BIDS-Derivatives names, NIfTI, PNG."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from infra.storage import Store
from processing.ingest import build_bids_name

ROOT = "derivatives/boldcloud"


def derivative_key(
    entities: Mapping[str, str], suffix: str, extension: str, datatype: str = "func", **extra: str
) -> str:
    """Key of a derivative file, e.g. ``derivatives/boldcloud/sub-01/ses-pre/func/..._mask.nii.gz``.

    ``extra`` entities (``desc``, ``space``, ``contrast``, ``stat``...) are added to the run's.
    """
    ents = {**entities, **extra}
    folder = [ROOT, f"sub-{ents['sub']}"]
    if "ses" in ents:
        folder.append(f"ses-{ents['ses']}")
    name = build_bids_name(ents, suffix, extension)
    return "/".join([*folder, datatype, name])


def nifti_bytes(
    data: np.ndarray, affine: np.ndarray, tr_s: float | None = None, zyx: bool = True
) -> bytes:
    """A gzipped NIfTI-1 of ``data`` ((z, y, x) or (t, z, y, x) when ``zyx``), mm/s units."""
    array = np.asarray(data)
    if zyx:
        array = array.T  # (x, y, z[, t]) as NIfTI wants
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    if tr_s is not None and array.ndim == 4:
        img.header["pixdim"][4] = tr_s
    return gzip.compress(img.to_bytes(), compresslevel=4, mtime=0)


def write_nifti(
    store: Store,
    key: str,
    data: np.ndarray,
    affine: np.ndarray,
    tr_s: float | None = None,
    sidecar: Mapping | None = None,
) -> str:
    """Write a NIfTI (and its JSON sidecar when given) at ``key``."""
    store.write_bytes(key, nifti_bytes(data, affine, tr_s))
    if sidecar is not None:
        store.write_json(key.replace(".nii.gz", ".json"), dict(sidecar))
    return key


def write_json(store: Store, key: str, obj: Mapping) -> str:
    """Write a JSON sidecar with stable formatting."""
    store.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
    return key


def read_nifti(store: Store, key: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI written by :func:`write_nifti` as ``((z, y, x) array, affine)``."""
    raw = store.read_bytes(key)
    if key.endswith(".gz"):
        raw = gzip.decompress(raw)
    img = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(img.dataobj).T, img.affine


def write_png(store: Store, key: str, draw: Callable[[Path], object]) -> str:
    """Write the PNG that ``draw(path)`` saves at a temporary path to ``key``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        store.write_bytes(key, path.read_bytes())
    return key
