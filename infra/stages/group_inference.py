"""Engine side of group inference: whole-brain maps, FWE-corrected clusters, NIfTI, PNG, TSV.

One task per analysis once its fit blocks and permutation batches are done. Files go to
``derivatives/boldcloud/group/`` with BIDS Stats Models style names (entities in BIDS order)::

    ses-pre_task-cuff_space-<tpl>_contrast-P40vsP0_stat-<s>_statmap.nii.gz   s = effect,
        variance, t, z (FLAME1 or OLS, as the study chose), betweenvar (FLAME1 between-subject
        variance), pfwe (voxelwise or TFCE FWE p, when asked for)
    ..._desc-ols_contrast-..._stat-{t,z}_statmap.nii.gz    OLS t/z: the permutation statistic
    ..._desc-thresholded_contrast-..._stat-z_statmap.nii.gz   z inside significant clusters
    ..._desc-clusterindex_contrast-..._statmap.nii.gz    +k positive / -k negative cluster k
    ..._desc-group_contrast-..._mask.nii.gz                voxels where every subject has data
    ..._desc-clusters_contrast-..._table.tsv, ..._desc-peaks_contrast-..._table.tsv
    ..._contrast-..._stat-z_statmap.png                    thumbnail over the template

Paired analyses use the Subject node's contrast as the session label (``ses-postMinusPre``).
Clusters with permutation inference are formed on the OLS map (``t > t(z 2.3)``, reported as its
exact z) because that is the statistic that was permuted; with GRF (FEAT's method) they are
formed on the FLAME1/OLS z map with the smoothness of the OLS residuals.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd

from infra.arrays import read_array, write_tsv
from infra.derivatives import ROOT, write_json, write_nifti, write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.firstlevel import _slices
from infra.stages.group import analyses, design_of, in_mask_data, permutation_plan
from infra.storage import Store
from infra.tasks import TaskSpec
from processing.firstlevel.figures import save_stat_overlay_png
from processing.group.clusters import cluster_table
from processing.group.grf import estimate_smoothness, grf_cluster_p, ols_residuals
from processing.group.model import GroupAnalysis
from processing.group.permutation import cluster_forming_t, combine_batches, fwe_p
from processing.group.tfce import tfce
from processing.ingest import build_bids_name
from processing.normalise.template import TEMPLATE_RESOLUTION_MM, load_template
from processing.stages import stage
from processing.zstat import t_to_z

GROUP_ROOT = f"{ROOT}/group"


def group_key(entities: dict[str, str], suffix: str, extension: str, **extra: str) -> str:
    """``derivatives/boldcloud/group/<BIDS name>``."""
    return f"{GROUP_ROOT}/{build_bids_name({**entities, **extra}, suffix, extension)}"


# ---------------------------------------------------------------- plan
def plan_group_inference(ctx: PlanContext) -> StagePlan:
    """One task per analysis once every fit block and permutation batch of it is done."""
    stacks, fits, perms = (ctx.load(s) for s in ("group_stack", "group_fit", "group_permutation"))
    method = ctx.param("boldcloud.inference.method")
    params = {
        "method": method,
        "statistic": ctx.param("boldcloud.inference.statistic"),
        "z": float(ctx.param("boldcloud.inference.cluster_forming_z")),
        "cluster_p": float(ctx.param("boldcloud.inference.cluster_p")),
        "two_sided": bool(ctx.param("boldcloud.inference.two_sided")),
        "estimator": ctx.param("boldcloud.group_level.estimator"),
    }
    units = []
    for analysis in analyses(ctx):
        rec = stacks.get(analysis.label)
        if rec is None or rec.state not in ("done", "excluded"):
            continue
        if rec.state == "excluded":
            units.append(Unit(analysis.label, None, None, {}, {}, excluded=rec.reason))
            continue
        blocks = [fits.get(f"{analysis.label}_block-{label}") for label, _ in rec.outputs["blocks"]]
        if any(r is None or r.state != "done" or r.inputs.get("group_stack") != rec.key
               for r in blocks):  # fmt: skip
            continue
        batches: list = []
        if method == "permutation":
            _, n_batches, _ = permutation_plan(
                rec.outputs,
                int(ctx.param("boldcloud.inference.n_permutations")),
                int(ctx.param("boldcloud.inference.batch_size")),
            )
            batches = [perms.get(f"{analysis.label}_batch-{b:04d}") for b in range(n_batches)]
            if any(
                r is None
                or r.state != "done"
                or r.inputs.get("group_stack") != rec.key
                or r.inputs.get("batch") != f"{b}/{n_batches}"
                for b, r in enumerate(batches)
            ):
                continue
        upstream = {
            "group_stack": rec.key,
            "group_fit": content_key(keys=sorted(r.key for r in blocks)),
            "group_permutation": content_key(keys=sorted(r.key for r in batches)),
        }
        payload = {
            "stack": rec.outputs,
            "blocks": [r.outputs for r in blocks],
            "batches": [r.outputs for r in batches],
            **params,
        }
        units.append(Unit(analysis.label, None, None, upstream, payload))
    return plan_units(stage("group_inference"), units, ctx, run_group_inference)


# ---------------------------------------------------------------- run
def _assemble(store: Store, stack: dict, blocks: list[dict]) -> dict[str, np.ndarray]:
    shape = tuple(stack["shape"])
    names = blocks[0]["names"]
    maps = np.zeros((len(names), *shape), dtype=np.float32)
    for out in blocks:
        maps[(slice(None), *_slices(out["block"]))] = read_array(store, out["maps"])
    return dict(zip(names, maps, strict=True))


def _null(batches: list[dict], store: Store, side: str) -> dict[str, np.ndarray]:
    parts = [store.read_json(b["maxima"])[side] for b in batches]
    parts = [{k: np.asarray(v) for k, v in part.items() if k != "tfce_dh"} for part in parts]
    return combine_batches(parts, batches[0]["n_total"])


def run_group_inference(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Join blocks and batches; write maps, cluster tables and a thumbnail for one analysis."""
    store, p = Store(spec.store_url), spec.payload
    stack = p["stack"]
    analysis = GroupAnalysis.from_json(stack["analysis"])
    affine = np.asarray(stack["affine"])
    space = stack.get("space") or "MNI152NLin2009aSym"
    ents = {**analysis.entities, "space": space}
    maps = _assemble(store, stack, p["blocks"])
    mask = maps["mask"] > 0.5
    dof, ols_dof = float(p["blocks"][0]["dof"]), float(p["blocks"][0]["ols_dof"])
    design, _ = design_of(stack["design"])
    sides = ("positive", "negative") if p["two_sided"] else ("positive",)
    base_side = {
        "Analysis": analysis.to_json(),
        "Subjects": [f"sub-{s}" for s in stack["subjects"]],
        "ExcludedSubjects": {f"sub-{s}": r for s, r in stack["excluded"].items()},
        "Estimator": p["estimator"],
        "DegreesOfFreedom": dof,
        "Design": {
            k: stack["design"].get(k)
            for k in ("columns", "contrast", "contrast_name", "permutation", "group_names")
        },
        "Software": {"Name": "boldcloud", "Version": version("boldcloud")},
    }
    files: dict[str, str] = {}
    for stat in ("effect", "variance", "t", "z"):
        files[stat] = write_nifti(
            store,
            group_key(ents, "statmap", ".nii.gz", stat=stat),
            maps[stat],
            affine,
            sidecar={**base_side, "Statistic": stat},
        )
    between = [k for k in maps if k.startswith("between_")]
    if p["estimator"] == "flame1":
        files["betweenvar"] = write_nifti(
            store, group_key(ents, "statmap", ".nii.gz", stat="betweenvar"),
            np.max([maps[k] for k in between], axis=0), affine,
            sidecar={**base_side, "Statistic": "between-subject variance (FLAME1 REML, largest "
                     "over variance groups)"},
        )  # fmt: skip
    ols_z = np.where(mask, t_to_z(maps["ols_t"].astype(np.float64), ols_dof), 0.0)
    files["ols_t"] = write_nifti(store, group_key(ents, "statmap", ".nii.gz", desc="ols", stat="t"),
                                 maps["ols_t"], affine, sidecar={**base_side, "Estimator": "ols",
                                 "DegreesOfFreedom": ols_dof, "Statistic": "t"})  # fmt: skip
    files["ols_z"] = write_nifti(store, group_key(ents, "statmap", ".nii.gz", desc="ols", stat="z"),
                                 ols_z.astype(np.float32), affine)  # fmt: skip
    files["mask"] = write_nifti(
        store, group_key(ents, "mask", ".nii.gz", desc="group"), mask.astype(np.uint8), affine
    )
    # clusters: 3-D arrays in NIfTI order (i, j, k) = transpose of (z, y, x)
    mask_ijk = mask.T
    measure = "mass" if p["statistic"] == "cluster_mass" else "extent"
    info: dict[str, Any] = {"method": p["method"], "measure": measure}
    kwargs: dict[str, Any] = {"threshold": p["z"], "mask": mask_ijk, "sides": sides,
                              "p_threshold": p["cluster_p"]}  # fmt: skip
    if p["method"] == "permutation":
        nulls = {side: _null(p["batches"], store, side) for side in sides}
        t_thr = cluster_forming_t(p["z"], ols_dof)
        zmap = ols_z
        kwargs.update(
            null_max={s: nulls[s][f"max_{measure}"] for s in sides}, measure=measure,
            mass_map=maps["ols_t"].T.astype(np.float64), mass_threshold=t_thr,
        )  # fmt: skip
        first = p["batches"][0]
        info.update(n_permutations=int(first["n_total"]), exhaustive=bool(first["exhaustive"]),
                    cluster_forming_t=t_thr, statistic_map="ols",
                    rearrangement=stack["design"].get("permutation", "sign"),
                    exchangeability_blocks=first.get("exchangeability_blocks"))  # fmt: skip
        files.update(_voxelwise(store, p, maps, mask, nulls, sides, ents, affine, base_side))
    elif p["method"] == "grf":
        data, _ = in_mask_data(store, stack)
        smooth = estimate_smoothness(ols_residuals(data, design.matrix), mask_ijk)
        zmap = maps["z"].astype(np.float64)
        kwargs["cluster_p"] = lambda sizes, _mass: grf_cluster_p(
            sizes, p["z"], smooth.dlh, smooth.volume
        )
        info.update(fwhm_mm=smooth.fwhm_mm(affine).tolist(), dlh=smooth.dlh,
                    resel_voxels=smooth.resel_voxels, statistic_map=p["estimator"])  # fmt: skip
    else:
        zmap = maps["z"].astype(np.float64)
        kwargs["p_threshold"] = None
        info["statistic_map"] = p["estimator"]
    if p["method"] != "permutation":
        # the mass of GRF/uncorrected clusters uses |z| over the threshold
        kwargs["mass_map"] = None
    result = cluster_table(zmap.T, affine, cope=maps["effect"].T, **kwargs)
    table = result.table
    files["clusters"] = write_tsv(store, group_key(ents, "table", ".tsv", desc="clusters"), table)
    files["peaks"] = write_tsv(
        store, group_key(ents, "table", ".tsv", desc="peaks"), result.local_maxima
    )
    index = np.zeros(mask_ijk.shape, dtype=np.int32)
    thresholded = np.zeros(mask_ijk.shape)
    for side in sides:
        sgn = 1 if side == "positive" else -1
        index += sgn * result.index_maps[side]
        thresholded += result.thresholded[side]
    files["clusterindex"] = write_nifti(
        store, group_key(ents, "statmap", ".nii.gz", desc="clusterindex"), index.T, affine,
        sidecar={"Description": "cluster index: +k for positive cluster k, -k for negative "
                 "cluster k (the largest cluster of a side has the highest k, as FSL)"},
    )  # fmt: skip
    files["thresholded"] = write_nifti(
        store, group_key(ents, "statmap", ".nii.gz", desc="thresholded", stat="z"),
        thresholded.T.astype(np.float32), affine,
        sidecar={**base_side, "Statistic": "z", "Inference": info},
    )  # fmt: skip
    files["thumbnail"] = _thumbnail(store, ents, zmap, affine, p["z"], analysis)
    significant = table[table["p_fwe"] <= p["cluster_p"]] if len(table) else table
    write_json(store, group_key(ents, "statmap", ".json", desc="inference"),
               {**base_side, "Inference": info})  # fmt: skip
    return {
        "files": files,
        "analysis": analysis.to_json(),
        "subjects": stack["subjects"],
        "excluded": stack["excluded"],
        "n": stack["n"],
        "dof": dof,
        "inference": info,
        "clusters": _rows(table),
        "significant": len(significant),
        "affine": stack["affine"],
        "shape": stack["shape"],
        "mask": stack["mask"],
    }


def _rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    keep = ["side", "cluster", "voxels", "volume_mm3", "p_fwe", "peak_z", "peak_x_mm",
            "peak_y_mm", "peak_z_mm", "cope_max", "cope_max_x_mm", "cope_max_y_mm",
            "cope_max_z_mm"]  # fmt: skip
    out = []
    for row in table[keep].to_dict("records"):
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    return out


def _voxelwise(store, p, maps, mask, nulls, sides, ents, affine, base_side) -> dict[str, str]:
    """Voxelwise (max t) or TFCE FWE p maps, when the study's statistic asks for them."""
    if p["statistic"] not in ("voxel", "tfce"):
        return {}
    t_ijk = maps["ols_t"].T.astype(np.float64)
    pmap = np.ones(t_ijk.shape)
    for side in sides:
        signed = t_ijk if side == "positive" else -t_ijk
        if p["statistic"] == "tfce":
            dh = store.read_json(p["batches"][0]["maxima"])[side]["tfce_dh"]
            obs = tfce(np.where(mask.T, signed, 0.0), dh)
            side_p = fwe_p(obs, nulls[side]["max_tfce"])
        else:
            side_p = fwe_p(signed, nulls[side]["max_t"])
        pmap = np.minimum(pmap, np.where(mask.T & (signed > 0), side_p, 1.0))
    desc = "tfce" if p["statistic"] == "tfce" else "voxel"
    key = group_key(ents, "statmap", ".nii.gz", desc=desc, stat="pfwe")
    side = {**base_side, "Statistic": f"FWE-corrected p ({desc}), smaller of the two sides"}
    return {"pfwe": write_nifti(store, key, pmap.T.astype(np.float32), affine, sidecar=side)}


_TEMPLATE: dict[str, Any] = {}


def _thumbnail(store, ents, zmap, affine, threshold, analysis: GroupAnalysis) -> str:
    """PNG of the z map (|z| > threshold) over the template T1w."""
    step = round(float(np.linalg.norm(np.asarray(affine)[:3, 0])))
    if step not in _TEMPLATE:
        try:
            _TEMPLATE[step] = load_template(step).t1
        except (ValueError, OSError):
            _TEMPLATE[step] = load_template(TEMPLATE_RESOLUTION_MM).t1
    background = _TEMPLATE[step]
    if background.shape != zmap.shape:
        background = np.zeros(zmap.shape, dtype=np.float32)
    title = f"{analysis.label} (|z| > {threshold})"
    key = group_key(ents, "statmap", ".png", stat="z")
    return write_png(
        store,
        key,
        lambda path: save_stat_overlay_png(
            background, zmap, path, threshold=threshold, title=title, affine=affine
        ),
    )


__all__ = ["GROUP_ROOT", "group_key", "plan_group_inference", "run_group_inference"]
