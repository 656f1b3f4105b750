"""Grand-mean scaling of a run, as FEAT does before temporal filtering.

FEAT multiplies the whole 4-D run by one factor so that the in-brain median equals 10000:
``fslstats func -k mask -p 50`` over *all in-mask voxel values of all volumes* (the 3-D mask is
applied to every volume), then ``fslmaths func -mul (10000 / median)``. That is the default here
(``over="all_volumes"``). ``over="temporal_mean"`` uses instead the median over in-mask voxels of
the temporal mean image, a common alternative; the two differ slightly.

The median is numpy's (mean of the two middle values for an even count); ``fslstats -p 50``
picks one order statistic, a difference far below anything that matters after scaling.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["grand_mean_scale", "grand_median"]


def _validate(arr: NDArray, mask: NDArray) -> None:
    """Raise a ValueError naming the problem for bad run/mask inputs."""
    if arr.ndim != 4:
        raise ValueError(f"data must be a 4-D run (t, z, y, x), got shape {arr.shape}")
    if mask.shape != arr.shape[1:]:
        raise ValueError(
            f"mask shape {mask.shape} does not match the run's spatial shape {arr.shape[1:]}; "
            "pass the (z, y, x) brain mask of this run"
        )
    if not mask.any():
        raise ValueError("mask is empty: no in-brain voxels to compute the median from")


def grand_median(
    data: ArrayLike,
    mask: ArrayLike,
    over: Literal["all_volumes", "temporal_mean"] = "all_volumes",
) -> float:
    """The in-mask median that grand-mean scaling maps to the target.

    Parameters
    ----------
    data : array_like, shape (t, z, y, x)
        The run.
    mask : array_like of bool, shape (z, y, x)
        Brain mask.
    over : {"all_volumes", "temporal_mean"}
        ``"all_volumes"`` (FEAT): median of every in-mask value of every volume;
        ``"temporal_mean"``: median over in-mask voxels of the temporal mean image.

    Returns
    -------
    float
        The median, in the data's intensity units.
    """
    arr = np.asarray(data)
    inside = np.asarray(mask).astype(bool)
    _validate(arr, inside)
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            "data holds NaN or inf; replace non-finite voxels (e.g. np.nan_to_num) before scaling"
        )
    values = arr[:, inside]  # (t, n_in_mask)
    if over == "all_volumes":
        return float(np.median(values))
    if over == "temporal_mean":
        return float(np.median(values.mean(axis=0, dtype=np.float64)))
    raise ValueError(f"over must be 'all_volumes' or 'temporal_mean', got {over!r}")


def grand_mean_scale(
    data: ArrayLike,
    mask: ArrayLike,
    target: float = 10000.0,
    over: Literal["all_volumes", "temporal_mean"] = "all_volumes",
) -> tuple[NDArray[np.float32], float]:
    """Scale a whole run by one factor so that its in-mask median equals ``target``.

    Parameters
    ----------
    data : array_like, shape (t, z, y, x)
        The run (any real dtype); must be finite inside the mask.
    mask : array_like of bool, shape (z, y, x)
        Brain mask.
    target : float
        Value the median is mapped to (FEAT: 10000).
    over : {"all_volumes", "temporal_mean"}
        Which median, see :func:`grand_median` (default FEAT's).

    Returns
    -------
    scaled : ndarray, shape (t, z, y, x), float32
        ``data * factor`` (every voxel, inside the mask or not).
    factor : float
        ``target / median``.
    """
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a positive finite number, got {target!r}")
    median = grand_median(data, mask, over)
    if not median > 0:
        raise ValueError(
            f"in-mask median is {median}, cannot scale it to {target}; "
            "check that the mask covers the brain and the data are raw intensities"
        )
    factor = float(target / median)
    scaled = np.asarray(data, dtype=np.float32) * np.float32(factor)
    return scaled, factor
