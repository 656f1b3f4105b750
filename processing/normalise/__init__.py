"""Spatial normalisation (issue 5): native T1w/EPI <-> MNI152NLin2009aSym, pure numpy kernels.

Modules: :mod:`~processing.normalise.template` (the template and its space name),
:mod:`~processing.normalise.register` (dipy affine/SyN wrappers),
:mod:`~processing.normalise.normalise` (per-subject kernels),
:mod:`~processing.normalise.brain` (brain extraction), :mod:`~processing.normalise.transforms`
(the transform object, point mapping, ITK/ANTs files), :mod:`~processing.normalise.resample`
(applying transforms to maps) and :mod:`~processing.normalise.qc` (similarity, failure flags,
overlay PNGs). Arrays are (z, y, x) with NIfTI voxel (x, y, z) -> RAS+ mm affines.
"""

from processing.normalise.brain import bias_corrected, brain_volume_ml, template_brain_mask
from processing.normalise.normalise import (
    EPI_SETTINGS,
    RIGID_SETTINGS,
    T1_SETTINGS,
    Normalisation,
    identity_transform,
    normalise_epi,
    normalise_t1,
    on_template_grid,
    register_epi_to_t1,
    registration_template,
)
from processing.normalise.qc import (
    FlipCheck,
    RegistrationQC,
    dice,
    edge_levels,
    lr_flip_check,
    normalised_mutual_information,
    registration_qc,
    save_registration_overlay_png,
)
from processing.normalise.register import (
    AffineResult,
    RegistrationSettings,
    affine_register,
    syn_register,
)
from processing.normalise.resample import (
    resample_to_native,
    resample_to_template,
    sample_at_points,
)
from processing.normalise.template import (
    TEMPLATE_RESOLUTION_MM,
    TEMPLATE_SPACE,
    Template,
    load_template,
)
from processing.normalise.transforms import (
    TemplateTransform,
    affine_from_itk_text,
    affine_to_itk_text,
    field_from_itk_nifti,
    field_to_itk_nifti,
    transform_from_files,
    transform_to_files,
)

__all__ = [
    "EPI_SETTINGS",
    "RIGID_SETTINGS",
    "T1_SETTINGS",
    "TEMPLATE_RESOLUTION_MM",
    "TEMPLATE_SPACE",
    "AffineResult",
    "FlipCheck",
    "Normalisation",
    "RegistrationQC",
    "RegistrationSettings",
    "Template",
    "TemplateTransform",
    "affine_from_itk_text",
    "affine_register",
    "affine_to_itk_text",
    "bias_corrected",
    "brain_volume_ml",
    "dice",
    "edge_levels",
    "field_from_itk_nifti",
    "field_to_itk_nifti",
    "identity_transform",
    "load_template",
    "lr_flip_check",
    "normalise_epi",
    "normalise_t1",
    "normalised_mutual_information",
    "on_template_grid",
    "register_epi_to_t1",
    "registration_qc",
    "registration_template",
    "resample_to_native",
    "resample_to_template",
    "sample_at_points",
    "save_registration_overlay_png",
    "syn_register",
    "template_brain_mask",
    "transform_from_files",
    "transform_to_files",
]
