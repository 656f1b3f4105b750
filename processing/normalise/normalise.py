"""Per-subject normalisation kernels: T1w -> template, mean EPI -> T1w, mean EPI -> template.

Typical wiring for one subject (the engine's per-subject task)::

    t1n = normalise_t1(t1, t1_affine)                      # affine 12 dof + SyN, brain mask, QC
    rigid = register_epi_to_t1(mean_epi, epi_affine, t1, t1_affine, t1n.brain_mask)
    epi_to_mni = t1n.transform.compose_native(rigid.moving_to_fixed)   # EPI -> T1w -> MNI
    cope_mni = resample_to_template(cope, epi_affine, epi_to_mni, kind="effect")
    varcope_mni = resample_to_template(varcope, epi_affine, epi_to_mni, kind="variance")
    mask_mni = resample_to_template(mask, epi_affine, epi_to_mni, kind="mask")

Without a usable T1w (missing, unreadable, or ``t1n.qc.failed``): ``normalise_epi(mean_epi,
epi_affine)`` (affine + SyN with dipy's EM metric for the different contrast), whose transform
starts from EPI space directly. Inputs already on the template grid (fMRIPrep
``space-MNI152NLin2009aSym`` derivatives): :func:`on_template_grid` says whether resampling can
be skipped, and :func:`identity_transform` resamples otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray

from processing.normalise.brain import (
    bias_corrected,
    brain_volume_ml,
    template_brain_mask,
)
from processing.normalise.qc import BRAIN_ML_RANGE, RegistrationQC, registration_qc
from processing.normalise.register import (
    AffineResult,
    RegistrationSettings,
    affine_register,
    coarsen_to,
    syn_register,
)
from processing.normalise.resample import resample_to_template, sample_at_points
from processing.normalise.template import (
    TEMPLATE_RESOLUTION_MM,
    TEMPLATE_SPACE,
    Template,
    load_template,
)
from processing.normalise.transforms import TemplateTransform
from processing.preprocess.masks import epi_brain_mask, t1_brain_mask
from processing.preprocess.smoothing import voxel_sizes_zyx

__all__ = [
    "EPI_SETTINGS",
    "RIGID_SETTINGS",
    "T1_SETTINGS",
    "Normalisation",
    "identity_transform",
    "normalise_epi",
    "normalise_t1",
    "on_template_grid",
    "register_epi_to_t1",
    "registration_template",
]

T1_SETTINGS = RegistrationSettings()
EPI_SETTINGS = RegistrationSettings(syn_metric="pseudo-t1")
RIGID_SETTINGS = RegistrationSettings(affine_iters=(100, 50, 20))


@dataclass(frozen=True)
class Normalisation:
    """One image registered to the template.

    Attributes
    ----------
    transform : TemplateTransform
        Native (the input image's world space) <-> template.
    brain_mask : ndarray of bool, shape (z, y, x)
        Native brain mask (template mask pulled back and refined; see
        :mod:`processing.normalise.brain`).
    initial_mask : ndarray of bool, shape (z, y, x)
        The template-free intensity mask used for registration and QC.
    warped : ndarray, shape template (z, y, x), float32
        The bias-corrected brain image on the template grid (for overlays).
    qc : RegistrationQC
        Dice, NMI, brain volume and the failed flag.
    source : str
        ``"T1w"`` or ``"bold"`` (the image that was registered).
    space : str
        Template space name.
    registration_mm : float
        Voxel size of the template grid the registration ran on (see
        :func:`registration_template`); the transform is on ``template``'s grid regardless.
    """

    transform: TemplateTransform
    brain_mask: NDArray[np.bool_]
    initial_mask: NDArray[np.bool_]
    warped: NDArray[np.float32]
    qc: RegistrationQC
    source: str
    space: str
    registration_mm: float = float(TEMPLATE_RESOLUTION_MM)


def registration_template(template: Template, image_affine: ArrayLike) -> Template:
    """The template grid to register an image on: no finer than the image can resolve.

    An image with voxels at least twice the template's (e.g. a 4 mm T1w against the 2 mm
    template) is registered on the template at twice the voxel size: the finer grid holds no
    information the image has, and costs 8x per iteration. The warp is then sampled onto the
    output grid (:meth:`TemplateTransform.on_grid`). Images finer than that (every real T1w)
    register on ``template`` itself.

    Parameters
    ----------
    template : Template
        Output template.
    image_affine : array_like, shape (4, 4)
        Voxel -> mm affine of the image to register.

    Returns
    -------
    Template
        ``template``, or the same space from :func:`load_template` at twice its voxel size.
    """
    voxel_mm = float(np.sqrt((np.asarray(image_affine)[:3, :3] ** 2).sum(axis=0)).min())
    size = template.resolution_mm
    if template.space != TEMPLATE_SPACE or voxel_mm < 2.0 * size - 1e-3 or size % 1:
        return template
    return load_template(round(2 * size))


def _check(image: ArrayLike, affine: ArrayLike, what: str) -> tuple[NDArray, NDArray]:
    img = np.asarray(image, dtype=np.float32)
    aff = np.asarray(affine, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"{what} must be a 3-D (z, y, x) volume, got shape {img.shape}")
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff)) < 1e-9:
        raise ValueError(f"{what} affine must be a finite, invertible 4 x 4 matrix")
    if not np.all(np.isfinite(img)):
        raise ValueError(f"{what} has NaN or inf voxels")
    if np.count_nonzero(img > 0) < 1000:
        raise ValueError(f"{what} is (nearly) empty: {np.count_nonzero(img > 0)} positive voxels")
    return img, aff


def _pseudo_t1(
    brain: NDArray[np.float32],
    affine: NDArray[np.float64],
    moving_to_template: NDArray[np.float64],
    template: Template,
    bins: int = 64,
) -> NDArray[np.float32]:
    """Map image intensities to template-like ones after the affine (for a same-contrast SyN).

    Within the template brain, the affinely aligned image's intensities are cut into ``bins``
    quantile bins and each bin gets the mean template intensity of its voxels (the conditional
    mean E[template | image], one step of what dipy's EM metric iterates); the native image is
    then passed through that lookup table (zero outside its brain).
    """
    lin = TemplateTransform(moving_to_template, template.affine, template.shape)
    aligned = resample_to_template(brain, affine, lin, kind="effect")
    inside = template.mask & (aligned > 0)
    if inside.sum() < bins * 20:
        return brain
    values = aligned[inside]
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    table = np.bincount(which, weights=template.t1[inside], minlength=len(edges) - 1)
    table /= np.maximum(np.bincount(which, minlength=len(edges) - 1), 1)
    native = np.clip(np.searchsorted(edges, brain, side="right") - 1, 0, len(edges) - 2)
    return np.where(brain > 0, table[native], 0.0).astype(np.float32)


def _normalise(
    image: NDArray[np.float32],
    affine: NDArray[np.float64],
    initial: NDArray[np.bool_],
    template: Template,
    settings: RegistrationSettings,
    source: str,
) -> Normalisation:
    if initial.sum() < 1000:
        raise ValueError(f"{source} brain mask is (nearly) empty ({initial.sum()} voxels)")
    corrected = bias_corrected(image, affine, initial)
    brain = np.where(initial, corrected, 0.0).astype(np.float32)
    reg = registration_template(template, affine)
    lin = affine_register(reg.t1, reg.affine, brain, affine, dof=12, settings=settings)
    moving = brain
    if settings.syn_metric == "pseudo-t1":
        moving = _pseudo_t1(brain, affine, lin.moving_to_fixed, reg)
        settings = replace(settings, syn_metric="cc")
    warp, inverse = syn_register(
        reg.t1, reg.affine, moving, affine, lin.moving_to_fixed, settings=settings
    )
    transform = TemplateTransform(
        lin.moving_to_fixed, reg.affine, reg.shape, warp, inverse, template.space
    )
    if reg is not template:
        transform = transform.on_grid(template.affine, template.shape)
    mask = template_brain_mask(corrected, affine, transform, template)
    native = transform.to_native(transform.grid_points())  # once for the three maps
    warped = sample_at_points(brain, affine, native, kind="effect")
    warped_initial = sample_at_points(initial, affine, native, kind="mask")
    fov = sample_at_points(np.ones(image.shape, np.float32), affine, native, kind="mask")
    qc = registration_qc(
        warped,
        warped_initial,
        template.t1,
        template.mask,
        brain_volume_ml(initial, affine),
        field_of_view=fov,
        affine=transform.affine,
        brain_ml_range=BRAIN_ML_RANGE if source == "T1w" else None,
    )
    return Normalisation(
        transform, mask, initial, warped, qc, source, template.space, reg.resolution_mm
    )


def normalise_t1(
    t1: ArrayLike,
    affine: ArrayLike,
    *,
    template: Template | None = None,
    settings: RegistrationSettings = T1_SETTINGS,
) -> Normalisation:
    """Register a T1w image to the template: affine 12 dof (mutual information) then SyN (CC).

    Steps: template-free brain mask (:func:`processing.preprocess.masks.t1_brain_mask`), bias
    correction, affine (translation -> rigid -> affine, MI) and SyN (local CC) of the
    brain-extracted T1w to the skull-stripped template, the template brain mask pulled back as
    the final brain mask, QC on the template grid.

    Parameters
    ----------
    t1 : array_like, shape (z, y, x)
        T1w intensities (WM > GM > CSF), any grid and orientation.
    affine : array_like, shape (4, 4)
        T1w voxel ``(x, y, z)`` -> RAS+ mm.
    template : Template, optional
        Default: :func:`load_template` (MNI152NLin2009aSym, 2 mm).
    settings : RegistrationSettings
        Optimiser settings.

    Returns
    -------
    Normalisation
        ``transform`` maps T1w mm <-> template mm.

    Raises
    ------
    ValueError
        When the image is empty, non-finite, or no brain can be found (fall back to the EPI).
    """
    img, aff = _check(t1, affine, "T1w")
    tpl = template or load_template()
    return _normalise(img, aff, t1_brain_mask(img, aff), tpl, settings, "T1w")


def normalise_epi(
    mean_epi: ArrayLike,
    affine: ArrayLike,
    *,
    template: Template | None = None,
    settings: RegistrationSettings = EPI_SETTINGS,
) -> Normalisation:
    """Register a mean EPI straight to the T1w template (no T1w): affine (MI) + SyN (EM metric).

    Parameters
    ----------
    mean_epi : array_like, shape (z, y, x)
        Mean motion-corrected EPI.
    affine : array_like, shape (4, 4)
        EPI voxel ``(x, y, z)`` -> RAS+ mm.
    template : Template, optional
        Default: :func:`load_template`.
    settings : RegistrationSettings
        Optimiser settings (``syn_metric="em"`` for the EPI/T1w contrast difference).

    Returns
    -------
    Normalisation
        ``transform`` maps EPI mm <-> template mm; ``source == "bold"``.
    """
    img, aff = _check(mean_epi, affine, "mean EPI")
    tpl = template or load_template()
    return _normalise(img, aff, epi_brain_mask(img, aff), tpl, settings, "bold")


def register_epi_to_t1(
    mean_epi: ArrayLike,
    epi_affine: ArrayLike,
    t1: ArrayLike,
    t1_affine: ArrayLike,
    t1_mask: ArrayLike,
    *,
    settings: RegistrationSettings = RIGID_SETTINGS,
) -> AffineResult:
    """Rigid (6 dof) EPI -> T1w registration with mutual information.

    The T1w brain (``t1 * t1_mask``) is the fixed image, so only brain contrast drives the fit;
    the EPI is used whole. A T1w finer than the EPI is block-averaged to the EPI's voxel size
    first (:func:`~processing.normalise.register.coarsen_to`: a 1 mm T1w against a 2 mm EPI
    costs 8x per iteration on its own grid for nothing the EPI resolves). Starts from the
    scanner (header) alignment, which is right for a same-session pair, unless the brain
    centres differ by more than 20 mm.

    Parameters
    ----------
    mean_epi : array_like, shape (z, y, x)
        Mean motion-corrected EPI.
    epi_affine : array_like, shape (4, 4)
        EPI voxel -> mm.
    t1 : array_like, shape (z, y, x)
        T1w image.
    t1_affine : array_like, shape (4, 4)
        T1w voxel -> mm.
    t1_mask : array_like of bool, shape (z, y, x)
        T1w brain mask (e.g. ``normalise_t1(...).brain_mask``).
    settings : RegistrationSettings
        Optimiser settings.

    Returns
    -------
    AffineResult
        ``moving_to_fixed`` maps EPI mm -> T1w mm (pass it to
        :meth:`TemplateTransform.compose_native`).
    """
    from processing.normalise.register import centre_of_mass_mm

    epi, epi_aff = _check(mean_epi, epi_affine, "mean EPI")
    img, t1_aff = _check(t1, t1_affine, "T1w")
    mask = np.asarray(t1_mask, dtype=bool)
    if mask.shape != img.shape or mask.sum() < 1000:
        raise ValueError("t1_mask must be a non-empty brain mask on the T1w grid")
    fixed = np.where(mask, bias_corrected(img, t1_aff, mask), 0.0)
    fixed, fixed_aff = coarsen_to(fixed, t1_aff, float(voxel_sizes_zyx(epi_aff).min()))
    shift = centre_of_mass_mm(epi, epi_aff) - centre_of_mass_mm(fixed, fixed_aff)
    init = np.eye(4) if np.linalg.norm(shift) <= 20.0 else None
    return affine_register(fixed, fixed_aff, epi, epi_aff, dof=6, init=init, settings=settings)


def on_template_grid(
    affine: ArrayLike,
    shape: tuple[int, ...],
    template: Template | None = None,
    tol_mm: float = 0.01,
) -> bool:
    """Whether a (z, y, x) map already lies on the template grid (no resampling needed).

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        The map's voxel -> mm.
    shape : tuple of int
        Its (z, y, x) shape (extra trailing axes are ignored).
    template : Template, optional
        Default: :func:`load_template`.
    tol_mm : float
        Largest allowed affine difference (mm).

    Returns
    -------
    bool
    """
    tpl = template or load_template()
    same_shape = tuple(shape[:3]) == tuple(tpl.shape)
    return same_shape and bool(np.abs(np.asarray(affine) - tpl.affine).max() <= tol_mm)


def identity_transform(template: Template | None = None) -> TemplateTransform:
    """The transform of an input already in template space (resampling only, no warp)."""
    tpl = template or load_template()
    return TemplateTransform(np.eye(4), tpl.affine, tpl.shape, None, None, tpl.space)
