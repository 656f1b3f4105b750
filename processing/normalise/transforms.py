"""Native <-> template transforms: one object, point mapping both ways, ITK/ANTs file formats.

Convention (the same as ANTs/ITK after ``antsRegistration`` with fixed = template, moving =
native image; all coordinates RAS+ world mm)::

    native   = inv(A) @ (y + w(y))          y: template point,  w: ``warp`` on the template grid
    template = z + w_inv(z),  z = A @ native                   w_inv: ``inverse_warp``, same grid

``A`` (:attr:`TemplateTransform.affine`) is the linear part, native mm -> template mm; ``w`` and
``w_inv`` are displacement fields (mm) sampled on the template grid (trilinear between grid
points, nearest grid value beyond its edge). Without a nonlinear part both fields are ``None``.
A rigid EPI -> T1w step composes on the native side (:meth:`TemplateTransform.compose_native`),
so EPI -> T1w -> template is one transform applied once.

Files (:func:`transform_to_files` / :func:`transform_from_files`), ITK/ANTs compatible:

* ``affine.txt``: ITK ``AffineTransform_double_3_3`` text ("Insight Transform File V1.0"),
  mapping template LPS points to native LPS points (= ``inv(A)`` in LPS), the direction ANTs
  writes ``0GenericAffine.mat`` in;
* ``warp.nii.gz``: ``w`` as an ITK displacement field (NIfTI, shape (x, y, z, 1, 3), float32,
  intent vector, components in LPS mm: ``(-w_x, -w_y, w_z)``), like ANTs' ``1Warp.nii.gz``;
* ``inversewarp.nii.gz``: ``w_inv``, like ANTs' ``1InverseWarp.nii.gz``;
* ``transform.json``: space, template grid, conventions.

So ``antsApplyTransforms -i native.nii.gz -r template.nii.gz -t warp.nii.gz -t affine.txt``
resamples a native image onto the template, and ``-t [affine.txt,1] -t inversewarp.nii.gz``
maps native points to template points, as with ANTs' own outputs.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from processing.geometry import apply_affine

__all__ = [
    "TemplateTransform",
    "affine_from_itk_text",
    "affine_to_itk_text",
    "field_from_itk_nifti",
    "field_to_itk_nifti",
    "transform_from_files",
    "transform_to_files",
]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CHUNK = 1 << 18


def _sample_field(
    field: NDArray[np.float32], grid_affine: NDArray[np.float64], points: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Trilinear samples of a (z, y, x, 3) field at world points (..., 3); edge-extended."""
    flat = points.reshape(-1, 3)
    inv = np.linalg.inv(grid_affine)
    out = np.empty_like(flat)
    for start in range(0, len(flat), _CHUNK):
        vox = apply_affine(inv, flat[start : start + _CHUNK])[:, ::-1].T  # (z, y, x) indices
        for k in range(3):
            out[start : start + _CHUNK, k] = ndimage.map_coordinates(
                field[..., k], vox, order=1, mode="nearest"
            )
    return out.reshape(points.shape)


@dataclass(frozen=True)
class TemplateTransform:
    """A native-space <-> template-space mapping (see the module docstring).

    Attributes
    ----------
    affine : ndarray, shape (4, 4)
        ``A``: native world mm -> template world mm (linear part).
    grid_affine : ndarray, shape (4, 4)
        Template grid voxel ``(x, y, z)`` -> mm.
    grid_shape : tuple of int
        Template grid shape ``(z, y, x)``.
    warp : ndarray, shape (z, y, x, 3), float32, or None
        ``w`` (RAS mm, components x, y, z) on the template grid.
    inverse_warp : ndarray, shape (z, y, x, 3), float32, or None
        ``w_inv`` (RAS mm) on the template grid.
    space : str
        Template space name (e.g. ``"MNI152NLin2009aSym"``).
    """

    affine: NDArray[np.float64]
    grid_affine: NDArray[np.float64]
    grid_shape: tuple[int, int, int]
    warp: NDArray[np.float32] | None = None
    inverse_warp: NDArray[np.float32] | None = None
    space: str = "MNI152NLin2009aSym"

    def __post_init__(self) -> None:
        for name in ("affine", "grid_affine"):
            if np.shape(getattr(self, name)) != (4, 4):
                raise ValueError(f"{name} must be 4 x 4, got {np.shape(getattr(self, name))}")
        if (self.warp is None) != (self.inverse_warp is None):
            raise ValueError("warp and inverse_warp must both be given or both be None")
        expected = (*self.grid_shape, 3)
        for name in ("warp", "inverse_warp"):
            field = getattr(self, name)
            if field is not None and field.shape != expected:
                raise ValueError(f"{name} must have shape {expected}, got {field.shape}")

    @property
    def is_linear(self) -> bool:
        """True when there is no displacement field."""
        return self.warp is None

    def grid_points(self) -> NDArray[np.float64]:
        """World mm of every template grid voxel, shape (z, y, x, 3)."""
        idx = np.indices(self.grid_shape, dtype=np.float64)[::-1]  # x, y, z index arrays
        return apply_affine(self.grid_affine, np.moveaxis(idx, 0, -1))

    def to_native(self, points: ArrayLike) -> NDArray[np.float64]:
        """Template mm -> native mm.

        Parameters
        ----------
        points : array_like, shape (..., 3)
            Template (e.g. MNI) world coordinates in mm.

        Returns
        -------
        ndarray, shape (..., 3)
            Native world coordinates in mm: ``inv(A) @ (y + w(y))``.
        """
        pts = np.asarray(points, dtype=np.float64)
        if self.warp is not None:
            pts = pts + _sample_field(self.warp, self.grid_affine, pts)
        return apply_affine(np.linalg.inv(self.affine), pts)

    def to_template(self, points: ArrayLike) -> NDArray[np.float64]:
        """Native mm -> template mm.

        Parameters
        ----------
        points : array_like, shape (..., 3)
            Native world coordinates in mm.

        Returns
        -------
        ndarray, shape (..., 3)
            Template world coordinates in mm: ``z + w_inv(z)``, ``z = A @ x``.
        """
        z = apply_affine(self.affine, np.asarray(points, dtype=np.float64))
        if self.inverse_warp is None:
            return z
        return z + _sample_field(self.inverse_warp, self.grid_affine, z)

    def compose_native(self, source_to_native: ArrayLike) -> TemplateTransform:
        """Prepend an affine on the native side: the transform of a source space.

        Parameters
        ----------
        source_to_native : array_like, shape (4, 4)
            Maps source world mm (e.g. the mean EPI's) to this transform's native mm (e.g. the
            T1w's), as returned by :func:`processing.normalise.register_epi_to_t1`.

        Returns
        -------
        TemplateTransform
            Source mm <-> template mm, with affine ``A @ source_to_native``.
        """
        pre = np.asarray(source_to_native, dtype=np.float64)
        if pre.shape != (4, 4):
            raise ValueError(f"source_to_native must be 4 x 4, got {pre.shape}")
        return replace(self, affine=self.affine @ pre)

    def on_grid(
        self, grid_affine: ArrayLike, grid_shape: tuple[int, int, int]
    ) -> TemplateTransform:
        """The same mapping with its fields sampled on another template grid.

        A warp estimated on a coarse grid (registration at the data's resolution) is carried to
        the output grid by sampling ``w`` and ``w_inv`` there (trilinear, edge-extended, as
        :meth:`to_native` samples them anyway), so points of the new grid map exactly as
        before.

        Parameters
        ----------
        grid_affine : array_like, shape (4, 4)
            New grid voxel ``(x, y, z)`` -> template mm.
        grid_shape : tuple of int
            New grid shape ``(z, y, x)``.

        Returns
        -------
        TemplateTransform
        """
        aff = np.asarray(grid_affine, dtype=np.float64)
        shape = tuple(int(n) for n in grid_shape)
        if self.warp is None:
            return replace(self, grid_affine=aff, grid_shape=shape)
        moved = replace(self, grid_affine=aff, grid_shape=shape, warp=None, inverse_warp=None)
        points = moved.grid_points()
        fields = [
            _sample_field(f, self.grid_affine, points).astype(np.float32)
            for f in (self.warp, self.inverse_warp)
        ]
        return replace(moved, warp=fields[0], inverse_warp=fields[1])


# --------------------------------------------------------------------------------------------
# ITK / ANTs formats
# --------------------------------------------------------------------------------------------


def affine_to_itk_text(matrix: ArrayLike) -> str:
    """An RAS mm -> mm affine as ITK transform text (``AffineTransform_double_3_3``, LPS).

    Parameters
    ----------
    matrix : array_like, shape (4, 4)
        Maps points of ITK's *fixed* space to its *moving* space, RAS mm.

    Returns
    -------
    str
        Text readable by ITK/ANTs/SimpleITK (``.txt`` transform file).
    """
    lps = _LPS @ np.asarray(matrix, dtype=np.float64) @ _LPS
    params = [*lps[:3, :3].ravel(), *lps[:3, 3]]
    return (
        "#Insight Transform File V1.0\n#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
        "FixedParameters: 0 0 0\n"
    )


def affine_from_itk_text(text: str) -> NDArray[np.float64]:
    """Read :func:`affine_to_itk_text` output (or any ITK 3-D affine text) as an RAS matrix.

    Parameters
    ----------
    text : str
        ITK transform text with ``Parameters`` (12 values) and ``FixedParameters`` (centre).

    Returns
    -------
    ndarray, shape (4, 4)
        The RAS mm -> mm matrix (fixed -> moving points).
    """
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip()] = value.split()
    if "Parameters" not in fields or len(fields["Parameters"]) != 12:
        raise ValueError("not an ITK 3-D affine transform text (needs 12 Parameters)")
    p = np.array(fields["Parameters"], dtype=np.float64)
    center = np.array(fields.get("FixedParameters", ["0", "0", "0"]), dtype=np.float64)
    mat = np.eye(4)
    mat[:3, :3] = p[:9].reshape(3, 3)
    mat[:3, 3] = p[9:] + center - mat[:3, :3] @ center
    return _LPS @ mat @ _LPS


def field_to_itk_nifti(field: ArrayLike, grid_affine: ArrayLike) -> nib.Nifti1Image:
    """A (z, y, x, 3) RAS displacement field as an ITK displacement-field NIfTI.

    Parameters
    ----------
    field : array_like, shape (z, y, x, 3)
        Displacements in RAS mm (components x, y, z).
    grid_affine : array_like, shape (4, 4)
        The field's voxel ``(x, y, z)`` -> mm affine.

    Returns
    -------
    nibabel.Nifti1Image
        Shape (x, y, z, 1, 3), float32, intent ``vector``, components in LPS mm.
    """
    data = np.asarray(field, dtype=np.float32)
    xyz = np.transpose(data, (2, 1, 0, 3)) * np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    img = nib.Nifti1Image(xyz[:, :, :, None, :], np.asarray(grid_affine, dtype=np.float64))
    img.header.set_intent("vector")
    img.header.set_xyzt_units("mm")
    img.header.set_sform(img.affine, code=4)  # MNI152
    img.header.set_qform(img.affine, code=4)
    return img


def field_from_itk_nifti(img: nib.Nifti1Image) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Read an ITK displacement-field NIfTI back to a (z, y, x, 3) RAS field and its affine.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Shape (x, y, z, 1, 3) or (x, y, z, 3), components in LPS mm.

    Returns
    -------
    field : ndarray, shape (z, y, x, 3), float32
    grid_affine : ndarray, shape (4, 4)
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 5:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[-1] != 3:
        raise ValueError(f"displacement field must be (x, y, z, [1,] 3), got {img.shape}")
    ras = data * np.array([-1.0, -1.0, 1.0], dtype=np.float32)
    return np.ascontiguousarray(np.transpose(ras, (2, 1, 0, 3))), np.asarray(img.affine)


def _nifti_bytes(img: nib.Nifti1Image) -> bytes:
    raw = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def _nifti_from_bytes(blob: bytes) -> nib.Nifti1Image:
    raw = io.BytesIO(gzip.decompress(blob))
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    return nib.Nifti1Image.from_file_map(file_map)


def transform_to_files(transform: TemplateTransform) -> dict[str, bytes]:
    """Serialise a transform as ITK/ANTs-compatible files (see the module docstring).

    Parameters
    ----------
    transform : TemplateTransform

    Returns
    -------
    dict of str to bytes
        ``{"affine.txt", "transform.json"[, "warp.nii.gz", "inversewarp.nii.gz"]}``; the engine
        decides where they go (BIDS names such as
        ``sub-X_from-T1w_to-MNI152NLin2009aSym_mode-image_desc-warp_xfm.nii.gz``).
    """
    files = {
        "affine.txt": affine_to_itk_text(np.linalg.inv(transform.affine)).encode(),
        "transform.json": json.dumps(
            {
                "Space": transform.space,
                "GridAffine": np.asarray(transform.grid_affine).tolist(),
                "GridShapeXYZ": list(transform.grid_shape[::-1]),
                "Nonlinear": not transform.is_linear,
                "Convention": (
                    "ITK/ANTs: native = affine.txt(y + warp(y)) for template point y (LPS); "
                    "template = z + inversewarp(z), z = inverse(affine.txt)(native). "
                    "antsApplyTransforms -t warp.nii.gz -t affine.txt resamples native images "
                    "onto the template."
                ),
            },
            indent=2,
        ).encode(),
    }
    if transform.warp is not None and transform.inverse_warp is not None:
        files["warp.nii.gz"] = _nifti_bytes(
            field_to_itk_nifti(transform.warp, transform.grid_affine)
        )
        files["inversewarp.nii.gz"] = _nifti_bytes(
            field_to_itk_nifti(transform.inverse_warp, transform.grid_affine)
        )
    return files


def transform_from_files(files: dict[str, bytes]) -> TemplateTransform:
    """Inverse of :func:`transform_to_files`.

    Parameters
    ----------
    files : dict of str to bytes
        At least ``affine.txt`` and ``transform.json``; both warps or neither.

    Returns
    -------
    TemplateTransform
    """
    meta = json.loads(files["transform.json"])
    pull = affine_from_itk_text(files["affine.txt"].decode())
    warp = inverse = None
    if "warp.nii.gz" in files:
        warp, _ = field_from_itk_nifti(_nifti_from_bytes(files["warp.nii.gz"]))
        inverse, _ = field_from_itk_nifti(_nifti_from_bytes(files["inversewarp.nii.gz"]))
    return TemplateTransform(
        affine=np.linalg.inv(pull),
        grid_affine=np.asarray(meta["GridAffine"], dtype=np.float64),
        grid_shape=tuple(int(n) for n in meta["GridShapeXYZ"][::-1]),  # type: ignore[arg-type]
        warp=warp,
        inverse_warp=inverse,
        space=meta["Space"],
    )
