"""Rigid-body conventions: parameters <-> matrices."""

from __future__ import annotations

import numpy as np
import pytest

from processing.geometry import (
    apply_affine,
    rigid_matrix,
    rigid_params,
    rms_displacement,
    rotation_matrix,
    volume_center_mm,
)

CENTER = np.array([1.0, -18.0, 10.0])


def _random_params(rng, n):
    return np.column_stack([rng.normal(0, 3, (n, 3)), rng.normal(0, 0.1, (n, 3))])


def test_identity():
    np.testing.assert_allclose(rigid_matrix(np.zeros(6), CENTER), np.eye(4))
    np.testing.assert_allclose(rigid_params(np.eye(4), CENTER), np.zeros(6), atol=1e-12)


def test_round_trip_vectorised():
    params = _random_params(np.random.default_rng(1), 50).reshape(5, 10, 6)
    mats = rigid_matrix(params, CENTER)
    assert mats.shape == (5, 10, 4, 4)
    np.testing.assert_allclose(rigid_params(mats, CENTER), params, atol=1e-10)


def test_rotation_order_and_centre():
    ang = np.array([0.1, -0.2, 0.3])
    rx, ry, rz = (rotation_matrix(np.eye(3)[i] * ang[i]) for i in range(3))
    np.testing.assert_allclose(rotation_matrix(ang), rz @ ry @ rx)
    # the centre is fixed by a pure rotation and moved by the translation only
    mat = rigid_matrix(np.r_[2.0, 0.0, -1.0, ang], CENTER)
    np.testing.assert_allclose(apply_affine(mat, CENTER), CENTER + np.array([2.0, 0.0, -1.0]))
    # rot_z of +90 degrees takes +x to +y
    quarter = rigid_matrix([0, 0, 0, 0, 0, np.pi / 2])
    np.testing.assert_allclose(apply_affine(quarter, [1.0, 0, 0]), [0, 1.0, 0], atol=1e-12)


def test_composition_matches_sequential_application():
    rng = np.random.default_rng(2)
    a, b = rigid_matrix(_random_params(rng, 2), CENTER)
    points = rng.normal(0, 50, (20, 3))
    np.testing.assert_allclose(
        apply_affine(b @ a, points), apply_affine(b, apply_affine(a, points))
    )
    composed = rigid_params(b @ a, CENTER)
    np.testing.assert_allclose(rigid_matrix(composed, CENTER), b @ a, atol=1e-12)
    inverse = rigid_params(np.linalg.inv(a), CENTER)
    np.testing.assert_allclose(rigid_matrix(inverse, CENTER) @ a, np.eye(4), atol=1e-12)


def test_volume_center_and_apply_affine():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-97.0, -97.0, -74.0]
    np.testing.assert_allclose(volume_center_mm(affine, (98, 98, 75, 188)), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        apply_affine(affine, np.zeros((4, 2)))


def test_rms_displacement():
    eye = np.eye(4)
    shift = rigid_matrix([3.0, 4.0, 0, 0, 0, 0], CENTER)
    assert rms_displacement(eye, shift, CENTER) == pytest.approx(5.0)
    # a rotation about the centre: sqrt(r^2/5 * trace(L'L)), small-angle ~ r*theta*sqrt(2/5)
    rot = rigid_matrix([0, 0, 0, 0.01, 0, 0], CENTER)
    assert rms_displacement(eye, rot, CENTER) == pytest.approx(80 * 0.01 * np.sqrt(0.4), rel=1e-3)
    both = rms_displacement(np.stack([eye, shift]), np.stack([shift, shift]), CENTER)
    np.testing.assert_allclose(both, [5.0, 0.0], atol=1e-12)


def test_non_rigid_matrix_is_rejected():
    with pytest.raises(ValueError, match="not rigid"):
        rigid_params(np.diag([1.1, 1.0, 1.0, 1.0]))
