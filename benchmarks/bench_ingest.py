"""Ingest benchmark: one full-size run (98 x 98 x 75 x 188, int16 .nii.gz) to a local store.

Reference, measured in the same run on the same file: the naive converter (nibabel loads the
whole run into memory, then ``zarr`` writes it with default chunks and codecs). Each variant
runs in a fresh child process so its peak memory (ru_maxrss) is its own.

    .venv/bin/python benchmarks/bench_ingest.py [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
mode, src, dst = sys.argv[1:4]
t0 = time.perf_counter()
from infra.bids import discover
run = discover(src).runs[0]
if mode == "boldcloud":
    from infra.ingest import ingest_run
    from infra.storage import Store
    ingest_run(src, run, Store(dst))
else:
    import nibabel as nib, numpy as np, zarr
    data = np.asarray(nib.load(run.bold.path).dataobj.get_unscaled()).T
    zarr.save_array(dst + "/naive.zarr", data, zarr_format=3)
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": elapsed, "peak_mb": peak}))
"""


def make_run(folder: Path) -> Path:
    """A one-subject, one-run full-size simulated dataset (reused when present)."""
    if (folder / "dataset_description.json").exists():
        return folder
    from processing.simulate import simulate_study

    simulate_study(folder, subjects=1, seed=0, size="full")
    for extra in sorted(folder.rglob("*_bold.nii.gz"))[1:]:  # keep the first run only
        extra.unlink()
        extra.with_name(extra.name.replace("_bold.nii.gz", "_events.tsv")).unlink()
    return folder


def measure(mode: str, src: Path, repeats: int) -> dict:
    """Median and min seconds, max peak MiB over ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as dst:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(src), dst],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "seconds_min": min(r["seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", default=None, help="folder for the generated dataset")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-ingest-"))
    src = make_run(folder)
    bold = next(src.rglob("*_bold.nii.gz"))
    import nibabel as nib

    img = nib.load(bold)
    raw_mb = img.get_data_dtype().itemsize * math.prod(img.shape) / 2**20
    ours = measure("boldcloud", src, args.repeats)
    ref = measure("naive", src, args.repeats)
    print(
        f"run {bold.name}: shape {img.shape} {img.get_data_dtype()}, {raw_mb:.0f} MiB "
        f"uncompressed, {bold.stat().st_size / 2**20:.0f} MiB gzipped"
    )
    for name, res in (("boldcloud ingest", ours), ("naive nibabel+zarr (reference)", ref)):
        print(
            f"{name:32s} median {res['seconds_median']:.2f} s  min {res['seconds_min']:.2f} s  "
            f"{raw_mb / res['seconds_median']:.0f} MiB/s  peak {res['peak_mb']:.0f} MiB"
        )
    time_ratio = ours["seconds_median"] / ref["seconds_median"]
    print(f"ratio boldcloud/reference: time {time_ratio:.2f}, peak memory "
          f"{ours['peak_mb'] / ref['peak_mb']:.2f}")  # fmt: skip
    print(
        f"targets: < 10 s {'OK' if ours['seconds_median'] < 10 else 'MISSED'}; "
        f"< 1500 MiB peak {'OK' if ours['peak_mb'] < 1500 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
