"""Array I/O by store key: ingested runs, intermediate arrays and small tables.

Intermediate arrays are Zarr v3 arrays (Blosc-zstd, shuffle) with named dimensions, so xarray
opens every one of them; small 1-D/2-D results (motion parameters) are TSV.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import zarr

from infra.ingest import COMPRESSOR, open_run_group
from infra.storage import Store


def run_attrs(store: Store, run_key: str) -> dict:
    """The ``boldcloud`` attributes of an ingested run (TR, affine, events, ...)."""
    return dict(open_run_group(store, run_key).attrs["boldcloud"])


def read_volumes(store: Store, run_key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Volumes ``start:stop`` of an ingested run as float32 (t, z, y, x), NIfTI scaling applied."""
    group = open_run_group(store, run_key)
    attrs = group.attrs["boldcloud"]
    data = np.asarray(group["0"][start:stop], dtype=np.float32)
    slope, inter = attrs.get("scl_slope"), attrs.get("scl_inter")
    if slope is not None and np.isfinite(slope) and slope != 0 and (slope, inter) != (1.0, 0.0):
        data *= np.float32(slope)
        data += np.float32(inter or 0.0)
    return data


def write_array(
    store: Store,
    key: str,
    data: np.ndarray,
    dims: Sequence[str],
    chunks: Sequence[int] | None = None,
    attrs: dict | None = None,
) -> str:
    """Write ``data`` as a Zarr v3 array at ``key`` (replacing anything there)."""
    store.remove(key)
    array = zarr.create_array(
        store=store.zarr_store(key),
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(chunks) if chunks else data.shape,
        compressors=COMPRESSOR,
        dimension_names=tuple(dims),
        fill_value=0,
        zarr_format=3,
    )
    array[...] = data
    if attrs:
        array.attrs.update(attrs)
    return key


def read_array(store: Store, key: str, selection: tuple = ...) -> np.ndarray:
    """Read (part of) a Zarr array written by :func:`write_array`."""
    array = zarr.open_array(store=store.zarr_store(key), mode="r", zarr_format=3)
    return np.asarray(array[selection])


def array_attrs(store: Store, key: str) -> dict:
    """Attributes of a Zarr array written by :func:`write_array` (e.g. ``affine``, ``tr_s``)."""
    return dict(zarr.open_array(store=store.zarr_store(key), mode="r", zarr_format=3).attrs)


def array_chunks(store: Store, key: str) -> tuple[int, ...]:
    """Chunk shape of a Zarr array written by :func:`write_array`."""
    return tuple(zarr.open_array(store=store.zarr_store(key), mode="r", zarr_format=3).chunks)


def write_tsv(store: Store, key: str, table: pd.DataFrame) -> str:
    """Write a table as BIDS TSV (``n/a`` for missing values)."""
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, na_rep="n/a", float_format="%.8g")
    store.write_bytes(key, buffer.getvalue().encode())
    return key


def read_tsv(store: Store, key: str) -> pd.DataFrame:
    """Read a TSV written by :func:`write_tsv`."""
    return pd.read_csv(io.BytesIO(store.read_bytes(key)), sep="\t", na_values=["n/a"])
