"""processing.spline: cubic B-spline resampling equals scipy.ndimage's order-3 affine_transform
(same coefficients, same boundary handling) on random volumes and rigid moves, including samples
far outside the field of view; bad input is refused with the value named."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from processing.spline import SplineInputError, cubic_coefficients, resample_cubic


def _volume(rng, shape=(23, 31, 27)):
    vol = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 100 + 300
    vol[: shape[0] // 4] = 0.0  # a sharp step inside the field of view
    return vol.astype(np.float32)


def _move(rng, shape, shift_vox):
    rot = Rotation.from_euler("xyz", rng.uniform(-0.15, 0.15, 3)).as_matrix()
    centre = (np.array(shape) - 1) / 2
    return rot, centre - rot @ centre + rng.uniform(-shift_vox, shift_vox, 3)


@pytest.mark.parametrize("mode", ["nearest", "grid-constant"])
@pytest.mark.parametrize("shift_vox", [0.7, 4.0, 16.0])
def test_equals_scipy_affine_transform(mode, shift_vox):
    rng = np.random.default_rng(int(shift_vox * 10))
    for _ in range(3):
        vol = _volume(rng)
        matrix, offset = _move(rng, vol.shape, shift_vox)
        expected = ndimage.affine_transform(vol, matrix, offset, order=3, mode=mode)
        got = resample_cubic(
            cubic_coefficients(vol, mode), matrix, offset, np.empty(vol.shape, np.float32)
        )
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)  # float32 of ~400


def test_output_box_of_a_larger_volume_and_other_output_shape():
    rng = np.random.default_rng(5)
    vol = _volume(rng)
    matrix, offset = _move(rng, vol.shape, 2.0)
    spline = cubic_coefficients(vol, "grid-constant")
    full = resample_cubic(spline, matrix, offset, np.zeros(vol.shape, np.float32))
    boxed = np.zeros(vol.shape, np.float32)
    box = (slice(3, 17), slice(5, 29), slice(2, 11))
    start = np.array([s.start for s in box], dtype=float)
    resample_cubic(spline, matrix, matrix @ start + offset, boxed[box])
    np.testing.assert_array_equal(boxed[box], full[box])
    assert not boxed[:3].any()
    shape = (9, 40, 13)
    expected = ndimage.affine_transform(
        vol, matrix, offset, output_shape=shape, order=3, mode="grid-constant"
    )
    got = resample_cubic(spline, matrix, offset, np.empty(shape, np.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


def test_identity_reproduces_the_volume():
    vol = _volume(np.random.default_rng(1))
    got = resample_cubic(cubic_coefficients(vol), np.eye(3), np.zeros(3), np.empty_like(vol))
    np.testing.assert_allclose(got, vol, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: cubic_coefficients(v[0]), r"3-D \(z, y, x\).*\(5, 6\)"),
        (lambda v: cubic_coefficients(v, "reflect"), "mode must be one of.*'reflect'"),
        (
            lambda v: resample_cubic(cubic_coefficients(v), np.eye(4), np.zeros(3), v),
            r"3 x 3 .*\(4, 4\)",
        ),
        (
            lambda v: resample_cubic(cubic_coefficients(v), np.eye(3), [np.nan, 0, 0], v),
            "finite",
        ),
        (
            lambda v: resample_cubic(
                cubic_coefficients(v), np.eye(3), np.zeros(3), v.astype(float)
            ),
            "float32 array, got float64",
        ),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(SplineInputError, match=message):
        call(np.ones((4, 5, 6), np.float32))
