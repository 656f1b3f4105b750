"""The report's methods paragraph, written from the parameters recorded by the stages that ran.

The input is plain data (no store, no engine): for each stage with finished records, the
distinct values each of its parameters took (``{stage: {dotted.param: [values]}}``), plus facts
only known from outputs (template, permutation counts actually used). A stage without records
is not described; the paragraph ends by naming such stages, so nothing is claimed that did not
run. Differing values across records (e.g. a partial re-run) are all listed, joined by " / ".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DESCRIBED_STAGES", "methods_paragraph"]

DESCRIBED_STAGES = (
    "motion",
    "preprocess",
    "filter",
    "design",
    "glm",
    "fixed_effects",
    "normalise",
    "group_fit",
    "group_inference",
    "group_roi",
)
STATISTICS = {
    "cluster_extent": "cluster-extent",
    "cluster_mass": "cluster-mass",
    "tfce": "TFCE (H = 2, E = 0.5)",
    "voxel": "voxelwise maximum-t",
}

Ran = Mapping[str, Mapping[str, Sequence[Any]]]


def _v(ran: Ran, stage: str, param: str) -> str | None:
    """The recorded value(s) of a parameter, formatted; None when not recorded."""
    values = ran.get(stage, {}).get(param)
    if not values:
        return None
    return " / ".join(
        ", ".join(map(str, v))
        if isinstance(v, list)
        else f"{v:g}"
        if isinstance(v, float)
        else str(v)
        for v in values
    )


def _first_level(ran: Ran) -> list[str]:
    out = []
    if (mm := _v(ran, "motion", "preprocessing.motion_exclusion_mm")) is not None:
        out.append(
            f"Runs with any volume-to-volume displacement (relative RMS) above {mm} mm "
            "were excluded."
        )
    if "preprocess" in ran:
        fwhm = _v(ran, "preprocess", "preprocessing.smoothing_fwhm_mm")
        interp = _v(ran, "preprocess", "preprocessing.interpolation")
        out.append(
            "Volumes were motion corrected (rigid"
            + (f", {interp} interpolation" if interp else "")
            + ")"
            + (f" and smoothed with a {fwhm} mm FWHM Gaussian" if fwhm else "")
            + "."
        )
    if "filter" in ran:
        scale = _v(ran, "filter", "preprocessing.grand_mean_scaling")
        cutoff = _v(ran, "filter", "preprocessing.highpass_cutoff_s")
        scaled = f"grand-mean scaled to {scale} and " if scale not in (None, "False", "0") else ""
        out.append(
            f"Data were {scaled}high-pass filtered (FSL's Gaussian-weighted linear fit"
            + (f", {cutoff} s cutoff" if cutoff else "")
            + ")."
        )
    if (confounds := _v(ran, "design", "boldcloud.run_level.confounds")) is not None:
        out.append(
            f"Run designs held the HRF-convolved conditions and confounds ({confounds}), "
            "high-passed like the data."
        )
    if (noise := _v(ran, "glm", "boldcloud.run_level.noise_model")) is not None:
        bias = _v(ran, "glm", "boldcloud.run_level.autocorr_bias_correction") == "True"
        model = {
            "film": "FILM prewhitening with a Tukey-tapered autocorrelation smoothed in the brain",
            "ar1": "AR(1) prewhitening"
            + (" with a smoothed coefficient and a sandwich variance" if bias else ""),
            "ols": "ordinary least squares",
        }
        out.append(
            f"First-level GLMs used {model.get(noise, noise)} (noise model {noise}"
            + (", autocorrelation bias correction" if bias else "")
            + ")."
        )
    if "fixed_effects" in ran:
        cap = _v(ran, "fixed_effects", "boldcloud.session_level.dof_cap")
        out.append(
            "Runs of a session were combined by inverse-variance fixed effects"
            + (f" (dof cap {cap})" if cap else "")
            + ", after a rigid registration of each later run's mean image to the first run's "
            "where they were not already aligned."
        )
    return out


def _group(ran: Ran, facts: Mapping[str, Any]) -> list[str]:
    out = []
    if "normalise" in ran and facts.get("template"):
        out.append(
            f"Session maps were warped to {facts['template']} (T1w affine + SyN, mean EPI "
            "rigid to T1w), composed and applied once"
            + (
                "; variance maps were propagated through the trilinear interpolation using the "
                "noise's spatial lag-1 correlation from the first-level residuals."
                if facts.get("variance_propagated")
                else "."
            )
        )
        if coarse := facts.get("coarse_registration_mm"):
            grid = " / ".join(f"{v:g}" for v in coarse)
            out.append(
                "Images with voxels at least twice the template's were registered on the "
                f"template resampled to {grid} mm, and their warps sampled onto the output grid."
            )
    if (est := _v(ran, "group_fit", "boldcloud.group_level.estimator")) is not None:
        how = (
            "FLAME1 mixed effects (lower-level variances; between-subject variance by REML "
            "per voxel; dof at FSL's lower bound)"
            if est == "flame1"
            else "OLS"
        )
        paired = " Paired post - pre maps are subject-level differences with summed variances."
        groups = _v(ran, "group_stack", "boldcloud.group_level.variance_groups")
        out.append(
            f"Group maps were estimated with {how}"
            + (f", one variance group per {groups}" if groups not in (None, "None") else "")
            + "."
            + (paired if facts.get("paired") else "")
        )
    if "group_inference" in ran:
        out.append(_inference(ran, facts))
    if "group_roi" in ran:
        out.extend(_roi(ran, facts))
    return out


def _row_permutations(facts: Mapping[str, Any]) -> str:
    rows, blocks = facts.get("row_permutations", 0), facts.get("within_blocks", 0)
    if not rows:
        return ""
    text = (
        f"; {rows} analys{'is' if rows == 1 else 'es'} whose contrast is not a mean (covariate "
        "slopes, group differences) permuted rows of the Freedman-Lane residuals instead"
    )
    if blocks:
        text += f", {blocks} of them only within exchangeability blocks (the variance groups)"
    return text


def _inference(ran: Ran, facts: Mapping[str, Any]) -> str:
    g = "group_inference"
    method = _v(ran, g, "boldcloud.inference.method")
    z, p = (
        _v(ran, g, "boldcloud.inference.cluster_forming_z"),
        _v(ran, g, "boldcloud.inference.cluster_p"),
    )
    two = _v(ran, g, "boldcloud.inference.two_sided") == "True"
    sides = "both signs tested" if two else "positive effects only"
    if method == "permutation":
        stat = _v(ran, g, "boldcloud.inference.statistic") or ""
        stat = " / ".join(STATISTICS.get(s, s) for s in stat.split(" / "))
        n = _v(ran, "group_permutation", "boldcloud.inference.n_permutations")
        seed = _v(ran, "group_permutation", "boldcloud.inference.seed")
        used = ", ".join(f"{k} for N = {n_}" for n_, k in facts.get("exhaustive", []))
        return (
            f"Inference was by permutation: {n} random sign flips of the OLS t statistic"
            + (f" (seed {seed})" if seed is not None else "")
            + (f", exhaustive where 2^N is smaller ({used})" if used else "")
            + _row_permutations(facts)
            + f"; {stat} FWE-corrected P < {p} at a cluster-forming threshold Z > {z}, "
            f"{sides}."
        )
    if method == "grf":
        return (
            f"Clusters were corrected with Gaussian random field theory as in FEAT "
            f"(smoothness from the residuals, 26-connectivity) at Z > {z}, cluster P < {p}, "
            f"{sides}."
        )
    return f"Maps were thresholded at Z > {z} without correction ({sides})."


def _roi(ran: Ran, facts: Mapping[str, Any]) -> list[str]:
    r = "group_roi"
    size = _v(ran, r, "boldcloud.roi.sphere_diameter_mm")
    maps = _v(ran, r, "boldcloud.roi.maps")
    measure = _v(ran, r, "boldcloud.roi.measure")
    corr = _v(ran, r, "boldcloud.roi.correlation")
    changes = _v(ran, r, "boldcloud.roi.clinical_changes")
    robust = _v(ran, r, "boldcloud.roi.robust_leave_one_out") == "True"
    where = f"the significant cluster peaks of {maps}" if maps not in (None, "None") else ""
    if facts.get("coordinates"):
        where += (" and " if where else "") + f"{facts['coordinates']} study-file coordinate(s)"
    text = [
        f"ROIs were {size} mm spheres on {where or 'no map'}; the ROI measure was "
        + (
            "percent signal change as featquery (100 x effect x regressor peak height / mean "
            "functional)"
            if measure == "percent_signal_change"
            else "the mean effect"
        )
        + "."
    ]
    if changes not in (None, "None"):
        text.append(
            f"{(corr or '').capitalize()} correlations of post - pre ROI changes with "
            f"{changes} used pairwise-complete subjects"
            + (", repeated without the most influential subject" if robust else "")
            + f" (alpha {_v(ran, r, 'boldcloud.roi.alpha')})."
        )
    measures = _v(ran, r, "boldcloud.clinical.measures")
    if measures not in (None, "None"):
        text.append(
            f"Clinical measures ({measures}) were compared post vs pre by paired t-tests "
            "(pairwise-complete N; d_z = mean difference / SD of differences, d_av = "
            "mean difference / mean of the two SDs) and their pre values correlated "
            "(Pearson)."
        )
    return text


def methods_paragraph(
    ran: Ran, facts: Mapping[str, Any] | None = None, versions: Mapping[str, str] | None = None
) -> str:
    """Methods text from the parameters recorded by the stages that ran.

    Parameters
    ----------
    ran : mapping
        ``{stage: {dotted.parameter: [distinct recorded values]}}`` for each stage with finished
        records (a stage that declares no parameters maps to ``{}``).
    facts : mapping, optional
        ``template`` (e.g. ``"MNI152NLin2009aSym 2 mm"``), ``paired`` (bool), ``exhaustive``
        (list of ``(N, permutations)`` pairs of analyses with exhaustive sign flips),
        ``row_permutations`` and ``within_blocks`` (numbers of analyses with Freedman-Lane row
        permutations, and of those within exchangeability blocks) and ``coordinates`` (number
        of study-file ROI coordinates).
    versions : mapping, optional
        Package -> version, listed at the end.

    Returns
    -------
    str
    """
    facts = facts or {}
    parts = _first_level(ran) + _group(ran, facts)
    missing = [s for s in DESCRIBED_STAGES if s not in ran]
    if missing:
        parts.append(
            f"Stages without records in this store, so not described: {', '.join(missing)}."
        )
    if versions:
        parts.append("Software: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return " ".join(parts)
