"""First-level benchmark: design + GLM + 4 contrasts for one full-size run (98 x 98 x 75 x 188).

Input: one simulated full-size run of the reference study, preprocessed by boldcloud up to the
``filter`` stage once (cached in ``--keep``). Then, each in a fresh child process, on the same
filtered data, mask and design:

- ``nilearn-ar1``: the reference, ``FirstLevelModel(noise_model="ar1", mask_img=mask,
  signal_scaling=False, minimize_memory=True)`` fitted on the in-memory 4-D image with
  boldcloud's design matrix (plus a constant column, which nilearn needs), then 4 t contrasts.
- ``boldcloud-<model>-1proc``: the ``design`` .. ``glm_maps`` stages executed in one process
  (``inprocess`` executor; includes all Zarr reads and the NIfTI/PNG outputs).
- ``boldcloud-<model>-dask2``: the same stages on a local Dask cluster with 2 workers.

Peak memory is ``ru_maxrss`` of the child (in-process variants) or the largest worker RSS
sampled every 50 ms (Dask), minus nothing: these are absolute peaks.

    .venv/bin/python benchmarks/bench_firstlevel.py [--keep /tmp/bench-firstlevel] [--repeats 1]
        [--modes boldcloud-ar1-memory,boldcloud-film-memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

STAGES = ["design", "glm_autocorr", "glm_autocorr_smooth", "glm", "glm_maps"]

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
mode, folder = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, str(Path(sys.argv[3])))
from bench_firstlevel import context, STAGES

def main():
    ctx = context(folder, mode.split("-")[1] if mode.startswith("boldcloud") else "ar1")
    if mode == "nilearn-ar1":
        out = run_nilearn(ctx)
    elif mode.endswith("memory"):
        out = run_in_memory(ctx, mode.split("-")[1])
    else:
        out = run_boldcloud(ctx, mode)
    print("RESULT " + json.dumps(out))

def run_nilearn(ctx):
    import numpy as np, nibabel as nib
    from infra.arrays import read_array, read_tsv
    from infra.manifest import Manifest
    from nilearn.glm.first_level import FirstLevelModel
    m = Manifest(ctx.store)
    filt = next(r for r in m.records("filter") if r.state == "done")
    ref = next(r for r in m.records("motion_reference") if r.unit == filt.unit)
    design = read_tsv(ctx.store, m.get("design", filt.unit).outputs["design"])
    bold = read_array(ctx.store, filt.outputs["bold"])
    mask = read_array(ctx.store, ref.outputs["mask"]).astype(np.uint8)
    import zarr
    bold_array = zarr.open_array(store=ctx.store.zarr_store(filt.outputs["bold"]))
    affine = np.asarray(bold_array.attrs["affine"])
    img = nib.Nifti1Image(np.ascontiguousarray(bold.transpose(3, 2, 1, 0)), affine)
    mask_img = nib.Nifti1Image(np.ascontiguousarray(mask.T), affine)
    del bold
    design["constant"] = 1.0
    t0 = time.perf_counter()
    model = FirstLevelModel(t_r=1.28, noise_model="ar1", mask_img=mask_img,
                            signal_scaling=False, minimize_memory=True)
    model.fit(img, design_matrices=design)
    for contrast in ("P40", "P0", "P40 - P0", "anticipation"):
        model.compute_contrast(contrast, output_type="all")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "voxels": int(mask.sum())}

def run_in_memory(ctx, noise_model):
    import numpy as np, pandas as pd
    from infra.arrays import read_array, read_tsv, run_attrs
    from infra.manifest import Manifest
    from infra.stages.firstlevel import run_model
    from processing.firstlevel.design import build_design
    from processing.firstlevel.volume import fit_run
    from processing.preprocess.highpass import highpass_sigma_volumes
    m = Manifest(ctx.store)
    filt = next(r for r in m.records("filter") if r.state == "done")
    ref = next(r for r in m.records("motion_reference") if r.unit == filt.unit)
    raw = next(r for r in m.records("ingest") if r.unit == filt.unit)
    motion = next(r for r in m.records("motion") if r.unit == filt.unit)
    attrs = run_attrs(ctx.store, raw.outputs["zarr"])
    confounds = read_tsv(ctx.store, motion.outputs["confounds"])
    bold = read_array(ctx.store, filt.outputs["bold"])
    mask = read_array(ctx.store, ref.outputs["mask"]).astype(bool)
    from infra.arrays import array_attrs
    affine = np.asarray(array_attrs(ctx.store, filt.outputs["bold"])["affine"])
    model, _ = run_model(ctx)
    cutoff = ctx.param("preprocessing.highpass_cutoff_s")
    t0 = time.perf_counter()
    design = build_design(pd.DataFrame(attrs["events"]), len(confounds), float(attrs["tr_s"]),
                          model.conditions, hrf_model=model.hrf_model,
                          confounds=confounds[list(model.confounds)], highpass_cutoff_s=cutoff)
    maps = fit_run(bold, mask, affine, design.matrix.to_numpy(), list(design.matrix.columns),
                   model.contrasts, noise_model,
                   highpass_sigma=highpass_sigma_volumes(float(attrs["tr_s"]), cutoff))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "maps": len(maps.names)}

def run_boldcloud(ctx, mode):
    from rss import ChildPeakRSS
    from rich.console import Console
    from infra.clusters import make_executor
    from infra.runner import run_pipeline
    kind = "local" if mode.endswith("dask2") else "inprocess"
    executor = make_executor(kind, workers=2) if kind == "local" else make_executor(kind)
    ctx.force = True
    with ChildPeakRSS() as rss:
        try:
            t0 = time.perf_counter()
            reports = run_pipeline(ctx, executor, Console(quiet=True), stages=STAGES)
            seconds = time.perf_counter() - t0
        finally:
            executor.close()
    failed = [r.error for rep in reports for r in rep.failed]
    assert not failed, failed
    if kind == "local":
        peak = rss.peak_mib
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak}

if __name__ == "__main__":
    main()
"""


def context(folder: Path, noise_model: str):
    """A PlanContext on the cached study with the given noise model."""
    import yaml

    from infra.bids import discover
    from infra.pipeline import PlanContext
    from infra.storage import Store
    from infra.study import load_study

    path = folder / f"study-{noise_model}.yaml"
    doc = yaml.safe_load((folder / "study.yaml").read_text())
    doc["boldcloud"]["run_level"]["noise_model"] = noise_model
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    study = load_study(str(path))
    dataset = discover(study.dataset_url, study.tasks, study.select("subjects"), ["pre"])
    dataset.runs = [r for r in dataset.runs if r.key.endswith("run-1")]
    return PlanContext(study, dataset, Store(study.store_url))


def prepare(folder: Path) -> None:
    """Simulate and preprocess one full-size run (once)."""
    import yaml
    from rich.console import Console

    from infra.clusters import make_executor
    from infra.demo import write_demo_study
    from infra.runner import run_pipeline
    from processing.simulate import simulate_study

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "bids" / "dataset_description.json").exists():
        simulate_study(folder / "bids", subjects=1, seed=0, size="full")
    path = write_demo_study(folder)
    doc = yaml.safe_load(path.read_text())
    doc["select"] = {"subjects": ["01"], "sessions": ["pre"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ctx = context(folder, "film")
    executor = make_executor("local", workers=2)
    try:
        run_pipeline(ctx, executor, Console(), stages=None)
    finally:
        executor.close()


def measure(mode: str, folder: Path, repeats: int) -> dict:
    """Median seconds and max peak MiB over ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(folder), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            check=False,
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            raise RuntimeError(f"{mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        runs.append(json.loads(line[0][7:]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
    }


MODES = (
    "nilearn-ar1",
    "boldcloud-ar1-memory",
    "boldcloud-film-memory",
    "boldcloud-ar1-1proc",
    "boldcloud-film-1proc",
    "boldcloud-ar1-dask2",
    "boldcloud-film-dask2",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=Path("/tmp/bench-firstlevel"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated variants to time (nilearn-ar1, the reference, always runs)",
    )
    args = parser.parse_args()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    prepare(args.keep)
    modes = [
        "nilearn-ar1",
        *(m for m in MODES if m in args.modes.split(",") and m != "nilearn-ar1"),
    ]
    results = {mode: measure(mode, args.keep, args.repeats) for mode in modes}
    reference = results["nilearn-ar1"]["seconds"]
    print(f"{'variant':24} {'seconds':>8} {'peak MiB':>9} {'speed-up vs nilearn ar1':>24}")
    for mode, res in results.items():
        ratio = reference / res["seconds"]
        print(f"{mode:24} {res['seconds']:8.2f} {res['peak_mb']:9.0f} {ratio:24.2f}")


if __name__ == "__main__":
    main()
