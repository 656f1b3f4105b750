"""T1w -> MNI152NLin2009aSym (2 mm) registration: dipy SyN vs ANTsPy SyN (issue 5).

Subjects come from the reference-study simulator (full size: T1w 96 x 114 x 96 at 2 mm, with
bias field, skull, scalp and noise), which knows each subject's true native <-> MNI transform.
Each library runs in its own fresh process (so ``ru_maxrss`` is its own peak memory and the
import time is a cold import) and does an affine (12 dof, Mattes/dipy mutual information) then
a SyN registration of the brain-extracted T1w (intensity mask of
:func:`processing.preprocess.masks.t1_brain_mask`) to the skull-stripped template. The worker
needs only numpy and the library, so ANTsPy can run from a scratch venv (antspyx 0.6.3 needs
numpy < 2.4, which conflicts with this project's pins)::

    .venv/bin/python benchmarks/bench_registration.py --subjects 3
    .venv/bin/python benchmarks/bench_registration.py --subjects 3 \
        --ants-python /tmp/antsvenv/bin/python
    .venv/bin/python benchmarks/bench_registration.py --skip-dipy --pipeline --epi  # our kernels

Accuracy (per subject, over every template brain voxel y at 2 mm):

* **mean error (mm)**: ``| x_est(y) - x_true(y) |`` where ``x(y)`` is the native point that
  MNI point ``y`` maps to (the estimate is read by warping images of the native world
  coordinates with the library's own resampler: linear interpolation is exact for them);
* **Dice**: the simulator's *true* native brain mask warped to MNI (linear, > 0.5) against the
  template brain mask (nilearn's, template > 0.2).

``--pipeline`` times ``processing.normalise.normalise_t1`` (brain extraction, bias correction,
affine, SyN, QC) and reports the same numbers plus Dice of *our* extracted mask after warping;
``--epi`` times ``normalise_epi`` on the subject's noise-free EPI baseline (98 x 98 x 75 at 2 mm,
the no-T1w path).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------
# Workers (numpy + one library only; arrays are (x, y, z) with NIfTI affines)
# --------------------------------------------------------------------------------------------


def _coordinate_images(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    idx = np.indices(shape, dtype=np.float64)
    world = np.einsum("ij,j...->i...", affine[:3, :3], idx) + affine[:3, 3, None, None, None]
    return [w.astype(np.float32) for w in world]


def _worker_dipy(d: dict) -> dict:
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    static, s_aff = d["template"], d["template_affine"]
    moving, m_aff = d["moving"], d["moving_affine"]
    t0 = time.perf_counter()
    reg = AffineRegistration(
        metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
        level_iters=[100, 50, 0],
        sigmas=[3.0, 1.0, 0.0],
        factors=[4, 2, 1],
        verbosity=0,
    )
    # centres of mass, then translation -> rigid -> affine
    from scipy import ndimage

    cs = s_aff[:3, :3] @ np.array(ndimage.center_of_mass(static)) + s_aff[:3, 3]
    cm = m_aff[:3, :3] @ np.array(ndimage.center_of_mass(moving)) + m_aff[:3, 3]
    start = np.eye(4)
    start[:3, 3] = cm - cs
    for tf in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
        amap = reg.optimize(
            static,
            moving,
            tf,
            None,
            static_grid2world=s_aff,
            moving_grid2world=m_aff,
            starting_affine=start,
        )
        start = amap.affine
    t_aff = time.perf_counter() - t0
    syn = SymmetricDiffeomorphicRegistration(
        CCMetric(3, sigma_diff=2.0, radius=2), level_iters=[40, 20, 10]
    )
    mapping = syn.optimize(
        static, moving, static_grid2world=s_aff, moving_grid2world=m_aff, prealign=start
    )
    t_syn = time.perf_counter() - t0 - t_aff
    coords = [
        mapping.transform(c, interpolation="linear")
        for c in _coordinate_images(m_aff, moving.shape)
    ]
    warped_mask = mapping.transform(d["true_mask"].astype(np.float32), interpolation="linear")
    return {
        "coords": np.stack(coords, -1),
        "warped_mask": warped_mask,
        "t_affine": t_aff,
        "t_syn": t_syn,
    }


def _worker_ants(d: dict) -> dict:
    import ants

    def img(a, aff):
        lps = np.diag([-1.0, -1.0, 1.0])
        sp = np.linalg.norm(aff[:3, :3], axis=0)
        direction = lps @ (aff[:3, :3] / sp)
        origin = lps @ aff[:3, 3]
        return ants.from_numpy(
            np.asarray(a, np.float32),
            origin=tuple(origin),
            spacing=tuple(sp),
            direction=direction,
        )

    fixed = img(d["template"], d["template_affine"])
    moving = img(d["moving"], d["moving_affine"])
    t0 = time.perf_counter()
    reg = ants.registration(fixed, moving, type_of_transform="SyN", random_seed=1)
    t_total = time.perf_counter() - t0
    coords = [
        ants.apply_transforms(fixed, img(c, d["moving_affine"]), reg["fwdtransforms"]).numpy()
        for c in _coordinate_images(d["moving_affine"], d["moving"].shape)
    ]
    mask = img(d["true_mask"].astype(np.float32), d["moving_affine"])
    warped_mask = ants.apply_transforms(fixed, mask, reg["fwdtransforms"]).numpy()
    return {
        "coords": np.stack(coords, -1),
        "warped_mask": warped_mask,
        "t_affine": float("nan"),
        "t_syn": t_total,
    }


def _worker_pipeline(d: dict) -> dict:
    sys.path.insert(0, str(HERE.parents[1]))
    from processing.normalise import normalise_t1, resample_to_template

    t0 = time.perf_counter()
    t1_zyx = np.ascontiguousarray(d["raw"].T)
    result = normalise_t1(t1_zyx, d["moving_affine"])
    t_total = time.perf_counter() - t0
    tf = result.transform
    coords = tf.to_native(tf.grid_points())  # (z, y, x, 3)
    true_mask = np.ascontiguousarray(d["true_mask"].T)
    warped_true = resample_to_template(true_mask, d["moving_affine"], tf, kind="mask")
    warped_ours = resample_to_template(result.brain_mask, d["moving_affine"], tf, kind="mask")
    return {
        "coords": np.ascontiguousarray(np.transpose(coords, (2, 1, 0, 3))),
        "warped_mask": np.ascontiguousarray(warped_true.T).astype(np.float32),
        "warped_ours": np.ascontiguousarray(warped_ours.T).astype(np.float32),
        "t_affine": float("nan"),
        "t_syn": t_total,
        "dice_qc": result.qc.dice,
        "failed": result.qc.failed,
    }


def _worker_pipeline_epi(d: dict) -> dict:
    sys.path.insert(0, str(HERE.parents[1]))
    from processing.normalise import normalise_epi, resample_to_template

    t0 = time.perf_counter()
    result = normalise_epi(d["epi"], d["epi_affine"])
    t_total = time.perf_counter() - t0
    tf = result.transform
    coords = tf.to_native(tf.grid_points())
    true_mask = np.ascontiguousarray(d["true_mask"].T)
    warped_true = resample_to_template(true_mask, d["moving_affine"], tf, kind="mask")
    return {
        "coords": np.ascontiguousarray(np.transpose(coords, (2, 1, 0, 3))),
        "warped_mask": np.ascontiguousarray(warped_true.T).astype(np.float32),
        "t_affine": float("nan"),
        "t_syn": t_total,
        "dice_qc": result.qc.dice,
        "failed": result.qc.failed,
    }


def worker(lib: str, inp: str, out: str) -> None:
    t0 = time.perf_counter()
    if lib == "dipy":
        import dipy.align.imwarp  # noqa: F401
    elif lib == "ants":
        import ants  # noqa: F401
    else:
        sys.path.insert(0, str(HERE.parents[1]))
        import processing.normalise  # noqa: F401
    t_import = time.perf_counter() - t0
    d = dict(np.load(inp))
    fn = {
        "dipy": _worker_dipy,
        "ants": _worker_ants,
        "pipeline": _worker_pipeline,
        "pipeline-epi": _worker_pipeline_epi,
    }[lib]
    t0 = time.perf_counter()
    res = fn(d)
    res["t_wall"] = time.perf_counter() - t0
    res["t_import"] = t_import
    res["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out, **res)


# --------------------------------------------------------------------------------------------
# Driver (needs the project)
# --------------------------------------------------------------------------------------------


def _subject_input(index: int, path: Path) -> dict:
    sys.path.insert(0, str(HERE.parents[1]))
    from nilearn import datasets

    from processing.preprocess.masks import t1_brain_mask
    from processing.simulate.specs import BASE_SITES
    from processing.simulate.subject import build_subject

    tpl = datasets.load_mni152_template(resolution=2)
    tmask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    space = build_subject(0, index, BASE_SITES[0], "full")
    raw = space.t1_raw.astype(np.float32)
    mask = t1_brain_mask(raw.T, space.t1_affine).T
    tpl_aff = np.asarray(tpl.affine, np.float64)
    brain_vox = np.argwhere(tmask)
    brain_mm = brain_vox @ tpl_aff[:3, :3].T + tpl_aff[:3, 3]
    truth = space.transform.to_native(brain_mm)
    np.savez(
        path,
        template=np.asarray(tpl.get_fdata(), np.float32),
        template_affine=tpl_aff,
        moving=np.where(mask, raw, 0).astype(np.float32),
        raw=raw,
        moving_affine=space.t1_affine,
        true_mask=space.t1_mask.astype(np.uint8),
        epi=space.baseline,
        epi_affine=space.bold_affine,
    )
    return {"tmask": tmask, "brain_vox": brain_vox, "truth": truth}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--ants-python", default=None, help="interpreter with antspyx installed")
    ap.add_argument("--skip-dipy", action="store_true")
    ap.add_argument("--pipeline", action="store_true", help="also time processing.normalise")
    ap.add_argument("--epi", action="store_true", help="also time normalise_epi (no T1w)")
    ap.add_argument("--worker", nargs=3, metavar=("LIB", "IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    runs: list[tuple[str, str]] = []
    if not args.skip_dipy:
        runs.append(("dipy", sys.executable))
    if args.ants_python:
        runs.append(("ants", args.ants_python))
    if args.pipeline:
        runs.append(("pipeline", sys.executable))
    if args.epi:
        runs.append(("pipeline-epi", sys.executable))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(args.subjects):
            inp = Path(tmp) / f"in{s}.npz"
            facts = _subject_input(s, inp)
            for lib, python in runs:
                out = Path(tmp) / f"out-{lib}-{s}.npz"
                env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count()))
                subprocess.run(
                    [python, str(HERE), "--worker", lib, str(inp), str(out)], check=True, env=env
                )
                r = dict(np.load(out))
                est = r["coords"][tuple(facts["brain_vox"].T)]
                err = np.linalg.norm(est - facts["truth"], axis=1)
                row = {
                    "lib": lib,
                    "subject": s,
                    "import_s": float(r["t_import"]),
                    "wall_s": float(r["t_wall"]),
                    "peak_mib": float(r["peak_mib"]),
                    "mean_err_mm": float(err.mean()),
                    "p95_err_mm": float(np.percentile(err, 95)),
                    "dice_true_mask": _dice(r["warped_mask"] > 0.5, facts["tmask"]),
                }
                if "warped_ours" in r:
                    row["dice_our_mask"] = _dice(r["warped_ours"] > 0.5, facts["tmask"])
                if "failed" in r:
                    row["qc_dice"] = float(r["dice_qc"])
                    row["failed_flag"] = bool(r["failed"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| library | subject | import s | wall s | peak MiB | mean err mm | p95 err mm | Dice |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['lib']} | {r['subject']} | {r['import_s']:.2f} | {r['wall_s']:.1f} | "
            f"{r['peak_mib']:.0f} | {r['mean_err_mm']:.2f} | {r['p95_err_mm']:.2f} | "
            f"{r['dice_true_mask']:.3f} |"
        )


if __name__ == "__main__":
    main()
