"""Orchestration: :func:`simulate_study` writes the raw BIDS dataset and its ground truth."""

from __future__ import annotations

import os
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from processing.geometry import volume_center_mm
from processing.simulate import truth as truth_io
from processing.simulate.bids import T1W_SIDECAR, write_dataset_files
from processing.simulate.bold import RunModel, synthesize_run
from processing.simulate.design import condition_regressors, make_events, roles_for
from processing.simulate.effects import effect_maps, mni_blobs
from processing.simulate.motion import simulate_motion
from processing.simulate.phenotype import clinical_scores, demographics
from processing.simulate.planting import plant_amplitudes
from processing.simulate.report import truth_document, write_tables
from processing.simulate.specs import (
    AR1_RHO,
    BOLD_DTYPES,
    CONDITIONS,
    MOTION_THRESHOLD_MM,
    ROLE_RUNS,
    SIZES,
    TASK,
    SiteSpec,
    site_specs,
    stream,
)
from processing.simulate.subject import SubjectSpace, build_subject
from processing.simulate.writers import nifti_header, write_json, write_nifti, write_tsv

__all__ = ["RunInfo", "SimulationSummary", "simulate_study"]


@dataclass(frozen=True)
class RunInfo:
    """One simulated BOLD run (paths are absolute)."""

    subject: str
    session: str
    run: int
    site: str
    tr: float
    n_volumes: int
    bold: Path
    events: Path
    motion: Path
    max_rel_rms_mm: float
    max_translation_jump_mm: float
    planted_bad: bool
    excluded: bool


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_study` wrote.

    Attributes
    ----------
    root, truth_dir : Path
        The raw BIDS dataset and its ``derivatives/truth``.
    subjects, roles, sites : tuple of str
        Per subject: ``sub-XX`` label, attrition role and site label.
    runs : tuple of RunInfo
        Every run written, in order.
    seed, size, bold_dtype : int, str, str
        The arguments used.
    """

    root: Path
    truth_dir: Path
    subjects: tuple[str, ...]
    roles: tuple[str, ...]
    sites: tuple[str, ...]
    runs: tuple[RunInfo, ...]
    seed: int
    size: str
    bold_dtype: str

    @property
    def excluded_runs(self) -> tuple[RunInfo, ...]:
        """Runs planted with a TR-to-TR displacement above 2 mm."""
        return tuple(r for r in self.runs if r.excluded)

    @property
    def sessions_without_data(self) -> tuple[tuple[str, str], ...]:
        """(subject, session) pairs with no imaging (dropouts, missed scans)."""
        have = {(r.subject, r.session) for r in self.runs}
        return tuple(
            (s, f"ses-{ses}")
            for s in self.subjects
            for ses in ("pre", "post")
            if (s, f"ses-{ses}") not in have
        )


def _check_arguments(subjects: int, sites: int, seed: int, size: str, bold_dtype: str) -> None:
    if int(subjects) != subjects or subjects < 1:
        raise ValueError(f"subjects must be a positive integer, got {subjects!r}")
    if int(sites) != sites or not 1 <= sites <= subjects:
        raise ValueError(f"sites must be an integer in [1, subjects={subjects}], got {sites!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if bold_dtype not in BOLD_DTYPES:
        raise ValueError(f"bold_dtype must be one of {BOLD_DTYPES}, got {bold_dtype!r}")


def _run_plan(role: str, seed: int, index: int) -> dict[str, dict[int, bool]]:
    """Session -> run -> planted bad motion; the bad run of ``post_one_bad`` is drawn."""
    plan = {
        ses: {run: status == "bad" for run, status in runs.items()}
        for ses, runs in ROLE_RUNS[role].items()
        if runs
    }
    if role == "post_one_bad" and stream(seed, "bad-run", index).random() < 0.5:
        plan["post"] = {1: False, 2: True}
    return plan


def _effects_zyx(space: SubjectSpace, maps: dict[str, NDArray[np.float32]]) -> list:
    """Per condition: (z, y, x) box of the effect and baseline * beta / 100 inside it."""
    effects = []
    for cond in CONDITIONS:
        beta = maps[cond].T
        nz = np.argwhere(beta != 0)
        if nz.size == 0:
            effects.append(((slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32)))
            continue
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(nz.min(0), nz.max(0), strict=True))
        effects.append((box, space.baseline[box] * beta[box] / np.float32(100.0)))
    return effects


@dataclass(frozen=True)
class _Study:
    """Study-wide settings shared by every subject and run."""

    seed: int
    size: str
    bold_dtype: str
    root: Path
    truth: Path
    root_tr: float
    mni_affine: NDArray[np.float64]
    mni_shape: tuple[int, int, int]
    mni_blobs: list
    executor: Executor


def _drifts(rng: np.random.Generator, n_vols: int) -> NDArray[np.float64]:
    """Linear (SD 1 %) and half-cosine (SD 0.5 %) scanner drifts, shape (2, n_vols)."""
    ramp = np.linspace(-1.0, 1.0, n_vols)
    linear = rng.normal(0, 0.01) * ramp
    return np.stack([linear, rng.normal(0, 0.005) * np.cos(np.pi * (ramp + 1) / 2)])


def _simulate_run(
    st: _Study,
    index: int,
    sid: str,
    site: SiteSpec,
    space: SubjectSpace,
    effects: list,
    ses: str,
    run: int,
    bad: bool,
) -> RunInfo:
    """Simulate and write one run (BOLD, events, sidecar if its TR differs, true motion)."""
    n_vols, tr, keys = site.n_volumes, site.tr, (index, ses, run)
    events = make_events(stream(st.seed, "events", *keys), n_vols * tr)
    center = volume_center_mm(space.bold_affine, space.bold_shape)
    trace = simulate_motion(stream(st.seed, "motion", *keys), n_vols, tr, center, bad)
    model = RunModel(
        baseline=space.baseline,
        effects=effects,
        regressors=condition_regressors(events, n_vols, tr),
        motion=trace.matrices,
        affine=space.bold_affine,
        gain=space.gain,
        gain_drift1=space.gain_drift1,
        gain_drift2=space.gain_drift2,
        drifts=_drifts(stream(st.seed, "drift", *keys), n_vols),
        sigma=space.sigma,
        rho=AR1_RHO,
        noise_rng=lambda slab: stream(st.seed, "noise", *keys, slab),
    )
    raw, slope, inter = synthesize_run(model, st.executor, st.bold_dtype)
    func = st.root / sid / f"ses-{ses}" / "func"
    stem = f"{sid}_ses-{ses}_task-{TASK}_run-{run}"
    header = nifti_header(
        (*space.bold_shape, n_vols), raw.dtype, space.bold_affine, tr=tr, slope=slope, inter=inter
    )
    bold = write_nifti(func / f"{stem}_bold.nii.gz", raw.T, header, st.executor)
    del raw
    events_path = write_tsv(func / f"{stem}_events.tsv", events.to_dict("list"), "%.3f")
    if tr != st.root_tr:
        write_json(func / f"{stem}_bold.json", {"RepetitionTime": tr})
    return RunInfo(
        subject=sid,
        session=f"ses-{ses}",
        run=run,
        site=site.label,
        tr=tr,
        n_volumes=n_vols,
        bold=bold,
        events=events_path,
        motion=truth_io.write_motion_truth(st.truth, sid, f"ses-{ses}", run, trace),
        max_rel_rms_mm=trace.max_rel_rms,
        max_translation_jump_mm=trace.max_translation_jump,
        planted_bad=bad,
        excluded=trace.max_rel_rms > MOTION_THRESHOLD_MM,
    )


def _simulate_subject(
    st: _Study, index: int, sid: str, site: SiteSpec, plan: dict, amplitudes: dict
) -> tuple[list[RunInfo], dict]:
    """T1w, truth and every run of one subject; returns the runs and the truth.json facts."""
    space = build_subject(st.seed, index, site, st.size)
    anat = st.root / sid / "ses-pre" / "anat"
    t1_header = nifti_header(space.t1_raw.shape, np.int16, space.t1_affine)
    write_nifti(anat / f"{sid}_ses-pre_T1w.nii.gz", space.t1_raw, t1_header, st.executor)
    write_json(anat / f"{sid}_ses-pre_T1w.json", T1W_SIDECAR)
    truth_io.write_subject_truth(st.truth, sid, space, st.size, st.executor)
    runs = []
    for ses in ("pre", "post"):
        native = effect_maps(space.blobs, amplitudes, space.bold_shape, ses)
        mni = effect_maps(st.mni_blobs, amplitudes, st.mni_shape, ses)
        truth_io.write_effect_truth(
            st.truth,
            sid,
            f"ses-{ses}",
            mni,
            native,
            st.mni_affine,
            space.bold_affine,
            st.executor,
        )
        effects = _effects_zyx(space, native)
        for run, bad in plan.get(ses, {}).items():
            runs.append(_simulate_run(st, index, sid, site, space, effects, ses, run, bad))
    facts = {
        "roi_native_mm": space.roi_native_mm,
        "bold_affine": space.bold_affine,
        "bold_shape": space.bold_shape,
    }
    return runs, facts


def _n_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def simulate_study(
    out_dir: str | Path,
    subjects: int = 20,
    sites: int = 1,
    seed: int = 0,
    size: str = "full",
    bold_dtype: str = "int16",
) -> SimulationSummary:
    """Write a simulated raw BIDS dataset shaped like the reference evoked-pain study.

    Parameters
    ----------
    out_dir : str or Path
        Dataset root (created; existing files of the same names are overwritten).
    subjects : int
        Number of subjects; each block of 20 carries the paper's attrition pattern.
    sites : int
        Number of sites (subject ``i`` is at site ``i % sites``); sites differ in TR, voxel
        size, matrix, intensity scale and noise.
    seed : int
        Seed; the same arguments give byte-identical files.
    size : {"full", "small"}
        ``full``: BOLD 98 x 98 x 75 at 2 mm (site 1), T1w 2 mm; ``small``: 4 mm BOLD and T1w.
    bold_dtype : {"int16", "uint16", "float32", "int16-scaled"}
        On-disk BOLD type; ``int16-scaled`` stores int16 with scl_slope != 1, scl_inter != 0.

    Returns
    -------
    SimulationSummary

    Notes
    -----
    Layout (``sub-XX`` zero-padded to at least 2 digits)::

        dataset_description.json  README  participants.tsv/.json
        task-cuff_bold.json  task-cuff_events.json  phenotype/<promis|rmq|scs|pcs|maia>.tsv/.json
        phenotype/practice.tsv/.json
        sub-XX/ses-pre/anat/sub-XX_ses-pre_T1w.nii.gz/.json
        sub-XX/ses-<pre|post>/func/sub-XX_ses-YY_task-cuff_run-N_bold.nii.gz, _events.tsv
            (and _bold.json with RepetitionTime where the site's TR differs from the root's)
        derivatives/truth/  dataset_description.json  truth.json  runs.tsv  subjects.tsv
            sub-XX/anat/  transforms, brain masks (see processing.simulate.truth)
            sub-XX/ses-YY/func/  effect maps per condition, true motion per run

    Roles per block of 20 subjects give 7 runs with planted TR-to-TR displacement > 2 mm,
    2 subjects without a usable pre run, 1 dropout and 2 missed post scans (no ``ses-post``),
    1 subject whose post runs both move too much and 3 post sessions with one usable run.
    """
    _check_arguments(subjects, sites, seed, size, bold_dtype)
    root = Path(out_dir)
    truth = root / "derivatives" / "truth"
    site_list = site_specs(sites)
    subject_sites = [site_list[i % sites] for i in range(subjects)]
    ids = [f"sub-{i + 1:0{max(2, len(str(subjects)))}d}" for i in range(subjects)]
    roles = roles_for(subjects, seed)
    plans = [_run_plan(role, seed, i) for i, role in enumerate(roles)]
    demo = demographics(stream(seed, "demographics"), subjects)
    clinical = clinical_scores(
        stream(seed, "clinical"), subjects, np.array([r == "dropout" for r in roles])
    )
    usable = np.array([_usable(p, "pre") and _usable(p, "post") for p in plans])
    planted = plant_amplitudes(seed, clinical, usable)
    arguments = {
        "subjects": subjects,
        "sites": sites,
        "seed": seed,
        "size": size,
        "bold_dtype": bold_dtype,
    }
    write_dataset_files(root, ids, subject_sites, site_list, demo, clinical, arguments)
    mni_affine, mni_shape = truth_io.mni_grid(size)
    spaces: dict[str, dict] = {}
    runs: list[RunInfo] = []
    with ThreadPoolExecutor(_n_threads()) as executor:
        st = _Study(
            seed,
            size,
            bold_dtype,
            root,
            truth,
            site_list[0].tr,
            mni_affine,
            mni_shape,
            mni_blobs(mni_affine, mni_shape),
            executor,
        )
        for i, sid in enumerate(ids):
            subject_runs, spaces[sid] = _simulate_subject(
                st, i, sid, subject_sites[i], plans[i], planted.amplitudes[i]
            )
            runs += subject_runs
    write_tables(truth, ids, roles, subject_sites, plans, runs)
    write_json(
        truth / "truth.json",
        truth_document(arguments, ids, roles, subject_sites, spaces, planted, runs),
    )
    write_json(
        truth / "dataset_description.json",
        {
            "Name": "boldcloud simulation ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "boldcloud processing.simulate"}],
            "SourceDatasets": [{"URL": "../.."}],
        },
    )
    return SimulationSummary(
        root,
        truth,
        tuple(ids),
        tuple(roles),
        tuple(s.label for s in subject_sites),
        tuple(runs),
        seed,
        size,
        bold_dtype,
    )


def _usable(plan: dict[str, dict[int, bool]], ses: str) -> bool:
    """Whether a session has at least one run without planted bad motion."""
    return any(not bad for bad in plan.get(ses, {}).values())
