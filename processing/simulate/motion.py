"""Head-motion trajectories with planted jerks.

Convention: ``params[t]`` (trans in mm, rot in radians, see :mod:`processing.geometry`, rotation
about the BOLD volume centre) describe the rigid map ``M_t`` that takes a point's world position
in the reference volume to its world position in volume ``t``. The reference is the middle
volume ``n_volumes // 2`` (94 of 188) whose parameters are exactly zero. Volume ``t`` is therefore
``V_t(q) = V_ref(M_t^-1 q)``, and ``M_t`` is what a motion-correction tool that registers volume
``t`` to the reference (and then resamples it at ``M_t p``) should estimate.

TR-to-TR displacement is MCFLIRT's relative RMS (Jenkinson 2002): the RMS displacement of
``M_t M_{t-1}^-1`` over a sphere of radius 80 mm at the volume centre. Runs meant to be excluded
get one or two jerks (a 2.8-4 mm step within one TR) so that the maximum exceeds 2.4 mm; all other
runs are kept at or below 1.5 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from processing.geometry import rigid_matrix, rigid_params, rms_displacement
from processing.simulate.specs import MOTION_RADIUS_MM

__all__ = ["MotionTrace", "relative_rms", "simulate_motion"]

GOOD_MAX_MM = 1.5
BAD_MIN_MM = 2.4
# Relative size of the smooth wander of each parameter (mm, mm, mm, deg, deg, deg).
WANDER = np.array([0.4, 0.8, 1.0, 0.9, 0.35, 0.35])


@dataclass(frozen=True)
class MotionTrace:
    """One run's planted motion.

    Attributes
    ----------
    params : ndarray, shape (n_volumes, 6)
        Rounded to 1e-6 (the values written to the truth TSV); row ``reference`` is zero.
    matrices : ndarray, shape (n_volumes, 4, 4)
        ``rigid_matrix(params, center_mm)``.
    rel_rms : ndarray, shape (n_volumes,)
        TR-to-TR RMS displacement in mm (0 for the first volume).
    reference : int
        Reference volume index.
    """

    params: NDArray[np.float64]
    matrices: NDArray[np.float64]
    rel_rms: NDArray[np.float64]
    reference: int

    @property
    def max_rel_rms(self) -> float:
        """Largest TR-to-TR RMS displacement (mm)."""
        return float(self.rel_rms.max())

    @property
    def max_translation_jump(self) -> float:
        """Largest TR-to-TR change of the translation vector (mm)."""
        return float(np.linalg.norm(np.diff(self.params[:, :3], axis=0), axis=1).max())


def relative_rms(matrices: NDArray[np.float64], center_mm: NDArray[np.float64]) -> NDArray:
    """TR-to-TR RMS displacement (mm), shape (n,), first entry 0."""
    rel = np.zeros(len(matrices))
    rel[1:] = rms_displacement(matrices[:-1], matrices[1:], center_mm, MOTION_RADIUS_MM)
    return rel


def _wander(rng: np.random.Generator, n: int, tr: float) -> NDArray[np.float64]:
    """Low-pass filtered random walk, shape (n, 6), in mm and radians."""
    walk = np.cumsum(rng.normal(0.0, 1.0, (n, 6)), axis=0)
    smooth = ndimage.gaussian_filter1d(walk, sigma=6.0 / tr, axis=0, mode="nearest")
    smooth -= smooth.mean(axis=0)
    smooth /= np.abs(smooth).max(axis=0) + 1e-12
    scale = WANDER * rng.uniform(0.3, 1.0)
    scale[3:] = np.deg2rad(scale[3:])
    return smooth * scale


def _jerks(rng: np.random.Generator, n: int, bad: bool) -> NDArray[np.float64]:
    """Step-like jerks, shape (n, 6): large ones for bad runs, maybe a small one otherwise."""
    out = np.zeros((n, 6))
    count = int(rng.integers(1, 3)) if bad else int(rng.random() < 0.5)
    for _ in range(count):
        when = int(rng.integers(8, n - 8))
        direction = rng.normal(0.0, [0.4, 1.0, 1.0])
        size = rng.uniform(2.8, 4.0) if bad else rng.uniform(0.2, 0.8)
        step = np.zeros(6)
        step[:3] = direction / np.linalg.norm(direction) * size
        step[3] = np.deg2rad(rng.uniform(-1.0, 1.0) * size / 4.0)
        keep = rng.uniform(0.3, 1.0)  # the head settles partly back over ~10 volumes
        settle = np.clip(np.arange(n - when) / 10.0, 0.0, 1.0)
        out[when:] += step * (1.0 - (1.0 - keep) * settle)[:, None]
    return out


def simulate_motion(
    rng: np.random.Generator,
    n_volumes: int,
    tr: float,
    center_mm: NDArray[np.float64],
    bad: bool,
) -> MotionTrace:
    """A smooth head-motion trajectory with occasional jerks.

    Parameters
    ----------
    rng : numpy.random.Generator
        The run's generator.
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s); sets the smoothness of the wander (6 s Gaussian).
    center_mm : ndarray, shape (3,)
        Rotation centre: the world coordinate of the BOLD volume centre.
    bad : bool
        Whether the run must exceed the 2 mm exclusion threshold (max > 2.4 mm) or stay at or
        below 1.5 mm.

    Returns
    -------
    MotionTrace
    """
    wander, jerks = _wander(rng, n_volumes, tr), _jerks(rng, n_volumes, bad)
    for _ in range(50):
        rel = relative_rms(rigid_matrix(wander + jerks, center_mm), center_mm)
        if bad and rel.max() < BAD_MIN_MM:
            jerks *= 1.1
        elif not bad and rel.max() > GOOD_MAX_MM:
            wander *= 0.9
            jerks *= 0.9
        else:
            break
    ref = n_volumes // 2
    mats = rigid_matrix(wander + jerks, center_mm)
    mats = mats @ np.linalg.inv(mats[ref])
    params = np.round(rigid_params(mats, center_mm), 6)
    params[ref] = 0.0
    params += 0.0  # no negative zeros in the written TSV
    mats = rigid_matrix(params, center_mm)
    return MotionTrace(params, mats, relative_rms(mats, center_mm), ref)
