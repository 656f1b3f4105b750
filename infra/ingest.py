"""Convert BIDS NIfTI runs to chunked Zarr (t, z, y, x) in the NIfTI-Zarr layout.

Layout of one run, ``raw/sub-XX/[ses-YY/]func/<run>_bold.zarr`` (a Zarr v3 group):

- ``0``: the data, dims (t, z, y, x), the file's own dtype (never rescaled), chunks of whole
  volumes (``chunk_volumes`` of them, about 16 MiB uncompressed), Blosc-zstd with shuffle.
- ``nifti``: uint8, the file's bytes before the data (header + extensions), as NIfTI-Zarr says.
- group attributes: ``ome`` multiscales (axes and voxel sizes), ``boldcloud`` (source sha256,
  TR, affine, sform/qform codes, scaling, BIDS entities, sidecar, validated events, ``complete``).

The data are streamed from the (gzipped) file a chunk at a time, so memory stays near two
chunks whatever the run length. ``complete`` is set last: readers refuse a run without it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from infra.bids import BoldRun
from infra.storage import Store, filesystem, is_remote
from processing.ingest import inspect_bold_header, validate_events
from processing.ingest.nifti import NiftiInputError

INGEST_VERSION = "1"
TARGET_CHUNK_BYTES = 16 * 2**20
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
_READ_BLOCK = 8 * 2**20


@dataclass(frozen=True)
class IngestResult:
    """What one converted run produced."""

    run: str
    zarr_key: str
    sha256: str
    shape: tuple[int, ...]
    dtype: str
    chunk_volumes: int
    warnings: tuple[str, ...]


def run_zarr_key(run: BoldRun) -> str:
    """Store key of a run's Zarr group."""
    parts = ["raw", f"sub-{run.subject}"]
    if run.session:
        parts.append(f"ses-{run.session}")
    return "/".join([*parts, "func", f"{run.key}_bold.zarr"])


def chunk_volumes_for(volume_bytes: int, n_volumes: int) -> int:
    """Volumes per chunk: whole volumes, about ``TARGET_CHUNK_BYTES`` per chunk."""
    return int(max(1, min(n_volumes, TARGET_CHUNK_BYTES // max(volume_bytes, 1))))


def sha256_of(fs: Any, path: str) -> str:
    """SHA-256 of a file on any filesystem, streamed."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def local_copy(dataset_url: str, path: str) -> Iterator[str]:
    """A local path for a dataset file (downloaded to a temporary file when remote)."""
    if not is_remote(dataset_url):
        yield path
        return
    fs, _ = filesystem(dataset_url)
    suffix = ".nii.gz" if path.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="boldcloud-")
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        os.unlink(tmp)


def read_events(dataset_url: str, run: BoldRun, n_volumes: int, tr_s: float) -> pd.DataFrame:
    """The run's validated events table (empty table for preprocessed input without one)."""
    if run.events is None:
        if run.preprocessed:
            return pd.DataFrame({"onset": [], "duration": [], "trial_type": []})
        raise NiftiInputError(
            f"{run.bold.path}: no events file; add {run.key}_events.tsv beside the BOLD file."
        )
    fs, _ = filesystem(dataset_url)
    raw = pd.read_csv(io.BytesIO(fs.cat_file(run.events.path)), sep="\t", na_values=["n/a"])
    return validate_events(raw, n_volumes * tr_s, source=run.events.path)


def ingest_run(
    dataset_url: str, run: BoldRun, store: Store, sha: str | None = None
) -> IngestResult:
    """Convert one run to Zarr in ``store`` (replacing an older conversion of it).

    Raises
    ------
    NiftiInputError, EventsError
        With the file name and the fix; the caller records the failure and goes on.
    """
    if sha is None:
        sha = sha256_of(filesystem(dataset_url)[0], run.bold.path)
    with local_copy(dataset_url, run.bold.path) as local:
        header, header_bytes = _read_header(local, run.bold.path)
        info = inspect_bold_header(header, run.sidecar, source=run.bold.path)
        events = read_events(dataset_url, run, info.shape[3], info.tr_s)
        key = run_zarr_key(run)
        nx, ny, nz, nt = info.shape
        dtype = np.dtype(header.get_data_dtype()).newbyteorder("=")
        per_chunk = chunk_volumes_for(nx * ny * nz * dtype.itemsize, nt)
        group = _create_group(store, key, (nt, nz, ny, nx), dtype, per_chunk, header_bytes)
        data = group["0"]
        for start, block in _stream_volumes(local, header, per_chunk, run.bold.path):
            data[start : start + block.shape[0]] = block
        group.attrs.update(
            {
                "ome": _ome_attrs(run.key, info.tr_s, info.zooms_mm),
                "boldcloud": _run_attrs(dataset_url, run, info, sha, events, per_chunk),
            }
        )
    return IngestResult(run.key, key, sha, (nt, nz, ny, nx), str(dtype), per_chunk, info.warnings)


def _read_header(local: str, source: str) -> tuple[nib.Nifti1Header, bytes]:
    try:
        img = nib.load(local)
    except Exception as err:  # nibabel raises many types for a bad file
        raise NiftiInputError(
            f"{source}: cannot read the NIfTI header ({type(err).__name__}: {err}). The file is "
            "corrupt or not NIfTI; re-export it from the scanner data or re-download it."
        ) from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiInputError(f"{source}: {type(img).__name__} is not NIfTI; convert it to NIfTI.")
    offset = int(img.dataobj.offset)  # img.header is a copy whose vox_offset nibabel resets
    with _open_raw(local) as handle:
        header_bytes = handle.read(offset)
    header = parse_header_bytes(header_bytes)
    return header, header_bytes


@contextmanager
def _open_raw(local: str) -> Iterator[io.BufferedIOBase]:
    opener = gzip.open if local.endswith(".gz") else open
    with opener(local, "rb") as handle:
        yield handle


def _stream_volumes(
    local: str, header: nib.Nifti1Header, per_chunk: int, source: str
) -> Iterator[tuple[int, np.ndarray]]:
    """Blocks of ``per_chunk`` volumes as (t, z, y, x) arrays in native byte order."""
    nx, ny, nz, nt = (int(n) for n in header.get_data_shape()[:4])
    disk_dtype = np.dtype(header.get_data_dtype())
    volume_bytes = nx * ny * nz * disk_dtype.itemsize
    try:
        with _open_raw(local) as handle:
            handle.read(int(header.get_data_offset()))
            for start in range(0, nt, per_chunk):
                count = min(per_chunk, nt - start)
                buffer = handle.read(count * volume_bytes)
                if len(buffer) != count * volume_bytes:
                    raise NiftiInputError(
                        f"{source}: file is truncated: volume {start + len(buffer) // volume_bytes}"
                        f" of {nt} is incomplete. Re-copy the file from its source."
                    )
                block = np.frombuffer(buffer, dtype=disk_dtype).reshape(count, nz, ny, nx)
                yield start, block.astype(disk_dtype.newbyteorder("="), copy=False)
            handle.read()  # reach the end of the gzip stream so its CRC-32 is verified
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise NiftiInputError(
            f"{source}: compressed data are corrupt or truncated ({err}). Re-copy the file from "
            "its source (gzip -t tests it)."
        ) from err


def _create_group(store: Store, key: str, shape, dtype, per_chunk: int, header_bytes: bytes):
    store.remove(key)  # an older or half-written conversion never mixes with the new one
    group = zarr.open_group(store=store.zarr_store(key), mode="w", zarr_format=3)
    group.attrs["boldcloud"] = {"complete": False}
    group.create_array(
        "0",
        shape=shape,
        dtype=dtype,
        chunks=(per_chunk, *shape[1:]),
        compressors=COMPRESSOR,
        dimension_names=("t", "z", "y", "x"),
        fill_value=0,
    )
    nifti = group.create_array(
        "nifti", shape=(len(header_bytes),), dtype="uint8", dimension_names=("nifti_byte",)
    )
    nifti[:] = np.frombuffer(header_bytes, dtype=np.uint8)
    return group


def _ome_attrs(name: str, tr_s: float, zooms_mm) -> dict:
    axes = [{"name": "t", "type": "time", "unit": "second"}] + [
        {"name": ax, "type": "space", "unit": "millimeter"} for ax in ("z", "y", "x")
    ]
    scale = [tr_s, zooms_mm[2], zooms_mm[1], zooms_mm[0]]
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": axes,
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ],
    }


def _run_attrs(dataset_url: str, run: BoldRun, info, sha: str, events, per_chunk: int) -> dict:
    def url_of(path: str) -> str:
        return f"s3://{path}" if dataset_url.startswith("s3://") else path

    return {
        "complete": True,
        "ingest_version": INGEST_VERSION,
        "source": {
            "url": url_of(run.bold.path),
            "sha256": sha,
            "size": run.bold.size,
            "fingerprint": run.bold.fingerprint,
            "sidecars": [url_of(p) for p in run.sidecar_files],
            "events": url_of(run.events.path) if run.events else None,
        },
        "entities": dict(run.entities),
        "sidecar": run.sidecar,
        "preprocessed": run.preprocessed,
        "tr_s": info.tr_s,
        "affine": np.asarray(info.affine).tolist(),
        "sform_code": info.sform_code,
        "qform_code": info.qform_code,
        "zooms_mm": list(info.zooms_mm),
        "scl_slope": info.scl_slope,
        "scl_inter": info.scl_inter,
        "dtype": info.dtype,
        "chunk_volumes": per_chunk,
        "events": events.to_dict(orient="list"),
        "warnings": list(info.warnings),
    }


class IncompleteRunError(RuntimeError):
    """A Zarr run whose conversion did not finish."""


def open_run_group(store: Store, key: str) -> zarr.Group:
    """Open a converted run; refuses one whose conversion did not complete."""
    group = zarr.open_group(store=store.zarr_store(key), mode="r", zarr_format=3)
    if not group.attrs.get("boldcloud", {}).get("complete"):
        raise IncompleteRunError(
            f"{store.full_url(key)} is incomplete (its ingest was interrupted); run "
            "`boldcloud ingest` or `boldcloud run` again to convert it."
        )
    return group


def parse_header_bytes(header_bytes: bytes) -> nib.Nifti1Header:
    """A nibabel header from the stored ``nifti`` bytes (NIfTI-1 or NIfTI-2, either byte order)."""
    size_le = int.from_bytes(header_bytes[:4], "little")
    size_be = int.from_bytes(header_bytes[:4], "big")
    klass = nib.Nifti2Header if 540 in (size_le, size_be) else nib.Nifti1Header
    block = header_bytes[: 540 if klass is nib.Nifti2Header else 348]
    return klass.from_fileobj(io.BytesIO(block), check=False)


def export_nifti(store: Store, key: str, out_path: str) -> str:
    """Write a converted run back to NIfTI: header bytes as ingested, then the data.

    The result equals the source in header, data and dtype; ``.nii.gz`` output is gzipped.
    """
    group = open_run_group(store, key)
    header_bytes = np.asarray(group["nifti"][:]).tobytes()
    header = parse_header_bytes(header_bytes)
    disk_dtype = np.dtype(header.get_data_dtype())
    data = group["0"]
    opener = gzip.open if out_path.endswith(".gz") else open
    with opener(out_path, "wb") as out:
        out.write(header_bytes)
        step = data.chunks[0]
        for start in range(0, data.shape[0], step):
            out.write(np.asarray(data[start : start + step]).astype(disk_dtype).tobytes())
    return out_path
