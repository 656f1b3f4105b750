"""Engine side of spatial normalisation: one task per subject, after its sessions' fixed effects.

The task registers the subject's T1w to the template once (affine + SyN), each session's mean
EPI to the T1w (rigid), composes EPI -> T1w -> template and resamples each session's
fixed-effects effect and variance maps, mask and mean image once onto the template grid (FEAT's
order: statistics in native space, then warp). Without a usable T1w (none in the dataset,
unreadable, or no brain found) the mean EPI goes straight to the template and the record says
so; a registration that fails QC is written for inspection but flagged (``failed``), and later
stages leave it out.
"""

from __future__ import annotations

import gzip
from typing import Any

import nibabel as nib
import numpy as np

from infra.arrays import array_attrs, read_array, write_array
from infra.derivatives import derivative_key, read_nifti, write_nifti, write_png
from infra.manifest import TaskRecord, content_key
from infra.pipeline import PlanContext, StagePlan, Unit, plan_units
from infra.stages.statmaps import session_groups
from infra.storage import Store, filesystem
from infra.tasks import TaskSpec
from processing.normalise.normalise import (
    Normalisation,
    identity_transform,
    normalise_epi,
    normalise_t1,
    on_template_grid,
    register_epi_to_t1,
)
from processing.normalise.qc import lr_flip_check, save_registration_overlay_png
from processing.normalise.resample import resample_to_template
from processing.normalise.template import TEMPLATE_RESOLUTION_MM, Template, load_template
from processing.normalise.transforms import TemplateTransform, transform_to_files
from processing.stages import stage

STATS = ("effect", "variance")
# NMI by which the mirrored T1w must beat the T1w as given to flag a left-right flip: a real
# flip scores ~0.1 higher (tests/test_normalise.py); near-symmetric brains differ by < 0.01.
FLIP_MARGIN = 0.03


# ---------------------------------------------------------------- plan
def plan_normalise(ctx: PlanContext) -> StagePlan:
    """One task per subject once every session of it has fixed effects or was excluded."""
    sessions = ctx.load("fixed_effects")
    by_subject: dict[str, list[str]] = {}
    for session in session_groups(ctx):
        by_subject.setdefault(session.split("_")[0], []).append(session)
    units = []
    for subject, keys in sorted(by_subject.items()):
        records = [sessions.get(k) for k in keys]
        if any(r is None or r.state not in ("done", "excluded") for r in records):
            continue  # a session is still in progress or failed
        done = {r.unit: r for r in records if r.state == "done"}
        label = subject.removeprefix("sub-")
        if not done:
            why = "no session with a usable run: " + "; ".join(r.reason or "" for r in records)
            units.append(Unit(subject, label, None, {}, {}, excluded=why))
            continue
        t1w = ctx.dataset.anatomicals.get(label)
        upstream = {
            "fixed_effects": content_key(keys=[r.key for r in done.values()]),
            "t1w": t1w.fingerprint if t1w else "none",
        }
        payload = {
            "t1w": ctx.dataset.url_of(t1w.path) if t1w else None,
            "sessions": {k: r.outputs for k, r in done.items()},
        }
        units.append(Unit(subject, label, None, upstream, payload))
    return plan_units(stage("normalise"), units, ctx, run_normalise)


# ---------------------------------------------------------------- run
def run_normalise(spec: TaskSpec, record: TaskRecord) -> dict[str, Any]:
    """Register the subject, warp each session's maps to the template, save transforms + QC."""
    store, p = Store(spec.store_url), spec.payload
    template = load_template(TEMPLATE_RESOLUTION_MM)
    sessions = dict(sorted(p["sessions"].items()))
    means = {s: read_nifti(store, out["mean"]) for s, out in sessions.items()}
    on_grid = {s for s, (mean, aff) in means.items() if on_template_grid(aff, mean.shape, template)}
    outputs: dict[str, Any] = {"space": template.space, "sessions": {}, "figures": {}}
    entities = {"sub": spec.unit.removeprefix("sub-")}
    reasons: list[str] = []
    anat, t1 = None, None
    if len(on_grid) < len(sessions):
        anat, t1 = _register_anatomy(store, p["t1w"], means, template, entities, outputs, record)
        reasons += outputs.pop("reasons")
    outputs.setdefault("source", "template-space input")
    for session, out in sessions.items():
        mean, affine = means[session]
        ses_entities = _session_entities(session)
        if session in on_grid:
            to_template = identity_transform(template)
            record.warnings.append(f"{session}: already on the {template.space} grid, copied")
        elif anat is not None:
            rigid = register_epi_to_t1(mean, affine, *t1, anat.brain_mask)
            to_template = anat.transform.compose_native(rigid.moving_to_fixed)
        else:
            direct = normalise_epi(mean, affine, template=template)
            to_template = direct.transform
            reasons += [f"{session}: {r}" for r in direct.qc.reasons]
            outputs["figures"][session] = _overlay(store, ses_entities, "bold", template, direct)
            outputs[f"transforms_{session}"] = _save_transform(
                store, ses_entities, "bold", direct.transform
            )
            outputs[f"qc_{session}"] = direct.qc.as_dict()
            outputs[f"registration_mm_{session}"] = direct.registration_mm
        if out.get("noise_lag1") is None:
            record.warnings.append(
                f"{session}: no noise lag-1 correlation from the first level; variance maps "
                "interpolated as FSL does (overstates the resampled variance)"
            )
        outputs["sessions"][session] = _warp_session(
            store, p["out"], session, out, affine, to_template, template, ses_entities
        )
    outputs["failed"] = bool(reasons)
    if reasons:
        record.reason = "registration failed QC: " + "; ".join(reasons)
        record.warnings.append(record.reason + " (maps written for inspection, not used)")
    return outputs


def _register_anatomy(
    store: Store,
    t1w_url: str | None,
    means: dict[str, tuple[np.ndarray, np.ndarray]],
    template: Template,
    entities: dict[str, str],
    outputs: dict[str, Any],
    record: TaskRecord,
) -> tuple[Normalisation | None, tuple[np.ndarray, np.ndarray] | None]:
    """T1w -> template with QC (flip check against the first session's mean EPI), or ``None``
    with a warning when the subject has no usable T1w. Adds QC, transforms, figure, ``source``,
    ``fallback`` and ``reasons`` (why the registration failed QC) to ``outputs``."""
    t1, fallback = _load_t1w(t1w_url)
    anat, reasons = None, []
    if t1 is not None:
        try:
            anat = normalise_t1(*t1, template=template)
        except ValueError as err:
            fallback = f"T1w unusable ({err})"
    if anat is not None:
        first_mean, first_affine = next(iter(means.values()))
        flip = lr_flip_check(first_mean, first_affine, *t1, anat.brain_mask, margin=FLIP_MARGIN)
        outputs["lr_flip"] = {"flipped": flip.flipped, "nmi": flip.nmi_as_is,
                              "nmi_mirrored": flip.nmi_mirrored}  # fmt: skip
        if flip.flipped:
            reasons.append("the T1w looks left-right flipped relative to the EPI")
        reasons += anat.qc.reasons
        outputs["qc"] = anat.qc.as_dict()
        outputs["registration_mm"] = anat.registration_mm
        outputs["transforms"] = _save_transform(store, entities, "T1w", anat.transform)
        outputs["figures"]["T1w"] = _overlay(store, entities, "T1w", template, anat)
    else:
        record.warnings.append(f"{fallback}: registering the mean EPI straight to the template")
    outputs["source"] = "T1w" if anat is not None else "bold"
    outputs["fallback"] = None if anat is not None else fallback
    outputs["reasons"] = list(reasons)
    return anat, (t1 if anat is not None else None)


def _load_t1w(url: str | None) -> tuple[tuple[np.ndarray, np.ndarray] | None, str | None]:
    """((z, y, x) float32, affine) of the T1w, or None and why not."""
    if url is None:
        return None, "no T1w in the dataset for this subject"
    try:
        fs, path = filesystem(url)
        with fs.open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        img = nib.Nifti1Image.from_bytes(raw)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as err:
        return None, f"T1w {url} unreadable ({type(err).__name__}: {err})"
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return None, f"T1w {url} is not 3-D (shape {data.shape})"
    return (np.ascontiguousarray(data.T), img.affine), None


def _session_entities(session: str) -> dict[str, str]:
    """``sub-01_ses-pre_task-cuff`` -> ``{"sub": "01", "ses": "pre", "task": "cuff"}``."""
    return dict(part.split("-", 1) for part in session.split("_"))


def _warp_session(
    store: Store,
    out: str,
    session: str,
    fe: dict[str, Any],
    affine: np.ndarray,
    transform: TemplateTransform,
    template: Template,
    entities: dict[str, str],
) -> dict[str, Any]:
    """Resample one session's effect/variance maps, mask and mean image onto the template."""
    space = {"space": template.space, "res": str(TEMPLATE_RESOLUTION_MM)}
    attrs = {"affine": template.affine.tolist(), "space": template.space}
    prefix = f"{out}/{session}"
    maps, nifti = {}, {}
    for name, key in sorted(fe["maps"].items()):
        contrast, _, stat = name.rpartition(":")
        if stat not in STATS:
            continue
        native = read_array(store, key)
        lag1 = fe.get("noise_lag1") if stat == "variance" else None
        warped = resample_to_template(
            native, _affine(store, key), transform, kind=stat, noise_lag1=lag1
        )
        key_out = f"{prefix}/contrast-{contrast}_stat-{stat}"
        maps[name] = write_array(store, key_out, warped.astype(np.float32), ("z", "y", "x"),
                                 attrs=attrs)  # fmt: skip
        side = {"Contrast": contrast, "Statistic": stat, "Space": template.space,
                "Resampling": _resampling(stat, lag1), "Source": key}  # fmt: skip
        nifti[name] = write_nifti(
            store,
            derivative_key(entities, "statmap", ".nii.gz", contrast=contrast, stat=stat, **space),
            warped,
            template.affine,
            sidecar=side,
        )
    mask = resample_to_template(read_array(store, fe["mask"]), affine, transform, kind="mask")
    mean = resample_to_template(read_nifti(store, fe["mean"])[0], affine, transform, "effect")
    mask_key = write_array(store, f"{prefix}/mask", mask.astype(np.uint8), ("z", "y", "x"),
                           attrs=attrs)  # fmt: skip
    mean_key = write_array(store, f"{prefix}/mean", mean.astype(np.float32), ("z", "y", "x"),
                           attrs=attrs)  # fmt: skip
    write_nifti(store, derivative_key(entities, "mask", ".nii.gz", desc="brain", **space),
                mask, template.affine)  # fmt: skip
    return {"maps": maps, "nifti": nifti, "mask": mask_key, "mean": mean_key,
            "voxels": int(mask.sum()), "noise_lag1": fe.get("noise_lag1")}  # fmt: skip


def _resampling(stat: str, lag1: list[float] | None) -> str:
    if stat != "variance":
        return "linear"
    if lag1 is None:
        return "linear (variance interpolated as FSL does: overstates the resampled variance)"
    xyz = ", ".join(f"{v:.3f}" for v in lag1)
    return f"variance of the linearly resampled effect (noise lag-1 correlation x, y, z: {xyz})"


def _affine(store: Store, key: str) -> np.ndarray:
    return np.asarray(array_attrs(store, key)["affine"])


def _save_transform(
    store: Store, entities: dict[str, str], source: str, transform: TemplateTransform
) -> dict[str, str]:
    """Write the transform's ITK/ANTs files under ``.../anat`` (T1w) or ``.../func`` (bold)."""
    datatype = "anat" if source == "T1w" else "func"
    names = {"from": source, "to": transform.space, "mode": "image"}
    keys = {}
    for name, blob in transform_to_files(transform).items():
        stem, ext = name.split(".", 1)
        desc = {"affine": "affine", "transform": None, "warp": "warp", "inversewarp": "inverse"}
        extra = {**names, **({"desc": desc[stem]} if desc.get(stem) else {})}
        key = derivative_key(entities, "xfm", "." + ext, datatype, **extra)
        store.write_bytes(key, blob)
        keys[stem] = key
    return keys


def _overlay(
    store: Store, entities: dict[str, str], source: str, template: Template, reg: Normalisation
) -> str:
    """QC PNG: the template with the registered image's edges, QC numbers in the title."""
    qc = reg.qc.as_dict()
    title = f"{source} -> {template.space}: Dice {qc['Dice']:.3f}, NMI {qc['NMI']:.3f}"
    key = derivative_key(entities, "reg", ".png", "figures", space=template.space, desc=source)
    return write_png(
        store,
        key,
        lambda path: save_registration_overlay_png(
            template.t1, reg.warped, path, affine=template.affine, title=title
        ),
    )


__all__ = ["plan_normalise", "run_normalise"]
