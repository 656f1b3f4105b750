"""Fixed parameters of the simulated reference study (task, sites, sizes, ROIs, roles).

Everything random in the simulator draws from :func:`stream`, which derives an independent
generator from the study seed and a tuple of keys (names are hashed with CRC-32), so a value
depends only on the seed and on what it is for: never on call order or on the thread that
computes it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

TASK = "cuff"
SESSIONS = ("pre", "post")
RUNS = (1, 2)
CONDITIONS = ("anticipation", "P40", "P0")
BLOCK_ORDER = ("P40", "P0", "P40", "P0", "P0", "P40")
CUFF_S = 10.0
ANTICIPATION_S = (4.0, 10.0)
REST_S = (10.0, 20.0)
LEAD_IN_S = 4.0
RUN_DURATION_S = 188 * 1.28
TEMPLATE_SPACE = "MNI152NLin2009aSym"
MOTION_THRESHOLD_MM = 2.0
MOTION_RADIUS_MM = 80.0
AR1_RHO = 0.3
ECHO_TIME_S = 0.033
FLIP_ANGLE_DEG = 65
BOLD_DTYPES = ("int16", "uint16", "float32", "int16-scaled")
SIZES = ("full", "small")


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent random generator for ``(seed, *keys)``.

    Parameters
    ----------
    seed : int
        Study seed (non-negative).
    *keys : int or str
        What the numbers are for, e.g. ``("motion", 3, "pre", 1)``.

    Returns
    -------
    numpy.random.Generator
        PCG64 generator seeded by ``SeedSequence(seed, spawn_key=keys)``.
    """
    spawn = tuple(k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn))


@dataclass(frozen=True)
class SiteSpec:
    """Acquisition parameters of one site (BOLD only; the T1w protocol is shared).

    ``voxel_mm``/``matrix`` hold the full-size grid and ``small_voxel_mm``/``small_matrix`` the
    coarse grid of ``size="small"``. ``intensity`` scales the EPI baseline and ``noise`` the
    temporal noise standard deviation.
    """

    label: str
    tr: float
    n_volumes: int
    voxel_mm: float
    matrix: tuple[int, int, int]
    small_voxel_mm: float
    small_matrix: tuple[int, int, int]
    intensity: float
    noise: float

    def grid(self, size: str) -> tuple[float, tuple[int, int, int]]:
        """Voxel size (mm) and matrix of this site's BOLD grid for ``size``."""
        if size == "full":
            return self.voxel_mm, self.matrix
        return self.small_voxel_mm, self.small_matrix


BASE_SITES = (
    SiteSpec("1", 1.28, 188, 2.0, (98, 98, 75), 4.0, (40, 48, 36), 1.0, 1.0),
    SiteSpec("2", 2.0, 120, 2.5, (80, 80, 60), 5.0, (34, 40, 30), 0.75, 1.25),
    SiteSpec("3", 1.5, 160, 2.4, (84, 84, 62), 4.8, (36, 40, 32), 1.35, 0.9),
)


def site_specs(n_sites: int) -> tuple[SiteSpec, ...]:
    """The first ``n_sites`` sites; beyond three, the three protocols repeat with other scales.

    Parameters
    ----------
    n_sites : int
        Number of sites (>= 1).

    Returns
    -------
    tuple of SiteSpec
        Labels ``"1"``, ``"2"``, ...
    """
    specs = []
    for k in range(n_sites):
        base = BASE_SITES[k % len(BASE_SITES)]
        cycle = k // len(BASE_SITES)
        specs.append(
            SiteSpec(
                str(k + 1),
                base.tr,
                base.n_volumes,
                base.voxel_mm,
                base.matrix,
                base.small_voxel_mm,
                base.small_matrix,
                round(base.intensity * (1 + 0.15 * cycle), 4),
                round(base.noise * (1 + 0.1 * cycle), 4),
            )
        )
    return tuple(specs)


# T1w grids (native, RAS, centred on the head): voxel size (mm) and matrix per size.
T1_GRID = {"full": (2.0, (96, 114, 96)), "small": (4.0, (48, 57, 48))}
# MNI grid of the truth maps: the nilearn 2 mm template grid, or every other voxel of it.
MNI_STEP = {"full": 1, "small": 2}


@dataclass(frozen=True)
class RoiSpec:
    """A planted effect: Gaussian blob at an MNI coordinate with per-condition amplitudes.

    ``pre`` maps condition -> (mean, between-subject sd) of the amplitude in percent signal
    change per unit regressor. ``change`` (mean, sd) is the post - pre change of ``change_on``
    (the ROI analysis contrast) and ``measure``/``target_r`` the clinical change score it is
    planted to correlate with. The change is drawn as its own Gaussian blob at the same centre
    with FWHM ``change_fwhm_mm`` (``fwhm_mm`` when None), so its spatial extent can follow the
    reference study's reported cluster sizes independently of the pre-session response.
    """

    name: str
    description: str
    mni_mm: tuple[float, float, float]
    fwhm_mm: float
    pre: dict[str, tuple[float, float]]
    contrast: str
    change_on: str | None = None
    change: tuple[float, float] = (0.0, 0.0)
    measure: str | None = None
    target_r: float | None = None
    change_fwhm_mm: float | None = None

    @property
    def change_extent_mm(self) -> float:
        """FWHM (mm) of the planted post - pre change blob."""
        return self.fwhm_mm if self.change_fwhm_mm is None else self.change_fwhm_mm


# Each post - pre change has the FWHM of its ROI's response (8 mm; ``change_fwhm_mm`` None). Broader
# change blobs (rTPJ 15, dlPFC 13, vPCC 11 mm, sessions 6-8) gave the paper's cluster volumes but
# Z peaks that a correct analysis cannot place: their subject-scaled changes make the t map flat
# over a wide top (benchmarks/README.md, "Simulated reference study end to end"; docs/design.md).
ROIS = (
    RoiSpec(
        "rAI",
        "right anterior insula / frontal operculum (pain P40 - P0 and anticipation)",
        (38.0, 20.0, 0.0),
        8.0,
        {"P40": (2.0, 0.4), "P0": (0.6, 0.2), "anticipation": (0.8, 0.25)},
        "P40-P0",
    ),
    RoiSpec(
        "rTPJ",
        "right temporo-parietal junction (P40 response, decreases post)",
        (56.0, -44.0, 30.0),
        8.0,
        {"P40": (2.0, 0.4)},
        "P40-P0",
        "P40",
        (-1.2, 0.7),
        "promis_pain_intensity",
        0.66,
    ),
    RoiSpec(
        "dlPFC",
        "right dorsolateral prefrontal cortex (anticipation, increases post)",
        (46.0, 8.0, 36.0),
        8.0,
        {"anticipation": (1.0, 0.3)},
        "anticipation",
        "anticipation",
        (1.0, 0.6),
        "scs_total",
        -0.65,
    ),
    RoiSpec(
        "vPCC",
        "ventral posterior cingulate cortex (anticipation, increases post)",
        (2.0, -48.0, 16.0),
        8.0,
        {"anticipation": (1.0, 0.3)},
        "anticipation",
        "anticipation",
        (1.0, 0.6),
        "maia_body_listening",
        0.66,
    ),
)

# Per-subject roles: which runs exist and which carry a planted > 2 mm jerk. For 20 subjects
# this gives the paper's attrition: 7 excluded runs, 2 subjects without usable pre runs,
# 1 dropout, 3 without a usable post run and 3 post sessions with a single usable run.
ROLE_RUNS: dict[str, dict[str, dict[int, str]]] = {
    "normal": {"pre": {1: "good", 2: "good"}, "post": {1: "good", 2: "good"}},
    "pre_both_bad": {"pre": {1: "bad", 2: "bad"}, "post": {1: "good", 2: "good"}},
    "post_both_bad": {"pre": {1: "good", 2: "good"}, "post": {1: "bad", 2: "bad"}},
    "post_one_bad": {"pre": {1: "good", 2: "good"}, "post": {1: "bad", 2: "good"}},
    "post_one_run": {"pre": {1: "good", 2: "good"}, "post": {1: "good"}},
    "post_missing": {"pre": {1: "good", 2: "good"}, "post": {}},
    "dropout": {"pre": {1: "good", 2: "good"}, "post": {}},
}
# Slots within each block of 20 subjects: motion roles and other attrition roles are spread so
# that any prefix of subjects holds its share (sub-02 always has bad runs).
MOTION_SLOTS = (1, 5, 9, 13)
MOTION_ROLES = ("pre_both_bad", "pre_both_bad", "post_both_bad", "post_one_bad")
OTHER_SLOTS = (3, 7, 11, 15, 17)
OTHER_ROLES = ("dropout", "post_missing", "post_missing", "post_one_run", "post_one_run")
BLOCK = 20
