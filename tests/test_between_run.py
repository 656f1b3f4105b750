"""Between-run registration before fixed effects: recovered rigid transform, peak placement."""

from __future__ import annotations

import numpy as np
import pytest

from processing.firstlevel.between_run import align_run, resample_to_reference
from processing.firstlevel.fixed_effects import fixed_effects
from processing.geometry import apply_affine, rigid_matrix
from processing.simulate.anatomy import centered_affine, grid_points, sample_maps, template_maps

VOXEL_MM = 3.0
SHAPE_XYZ = (50, 60, 50)
PEAK_MM = np.array([-40.0, 20.0, 40.0])  # far from the origin: the rotation moves it too
TRUTH = np.array([-2.0, -2.0, 1.0, *np.radians([3.0, -2.0, 2.0])])  # 6.9 mm at the peak


def _zyx(volume: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


@pytest.fixture(scope="module")
def session():
    """Two runs of the template's EPI contrast; run 2's head moved by a known rigid transform.

    ``moving_to_reference`` maps run-2 world mm to run-1 world mm, so run 2 sees at ``p`` what
    run 1 sees at ``M p``. Each run's effect map holds the same planted blob (FWHM 9 mm) at the
    same anatomical point (``PEAK_MM`` in run 1), variance 1 in the brain.
    """
    tpl = template_maps()
    affine = centered_affine(VOXEL_MM, SHAPE_XYZ, (0.0, -18.0, 18.0))
    points = grid_points(affine, SHAPE_XYZ)
    truth = rigid_matrix(TRUTH)  # about the world origin
    runs = []
    for matrix in (np.eye(4), truth):
        where = apply_affine(matrix, points)
        epi, brain = sample_maps([tpl.epi, tpl.brain], tpl.affine, where)
        sigma = 9.0 / 2.3548
        blob = np.exp(-((where - PEAK_MM) ** 2).sum(-1) / (2 * sigma**2))
        mask = brain > 0.5
        runs.append(
            {
                "mean": _zyx(1000.0 * epi),
                "mask": _zyx(mask),
                "effect": _zyx(np.where(mask, 5.0 * blob, 0.0)),
                "variance": _zyx(mask.astype(np.float64)),
            }
        )
    return affine, truth, runs


@pytest.fixture(scope="module")
def registered(session):
    """Run 2 registered to run 1 (one dipy registration shared by the tests)."""
    affine, _, (run1, run2) = session
    return align_run(run1["mean"], affine, run1["mask"], run2["mean"], affine)


def _combine(runs, masks) -> np.ndarray:
    mask = np.logical_and.reduce(masks)
    fe = fixed_effects(
        [r["effect"][mask] for r in runs], [r["variance"][mask] for r in runs], [180, 180]
    )
    out = np.zeros(mask.shape)
    out[mask] = fe.effect
    return out


def _peak_mm(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    zyx = np.unravel_index(np.argmax(volume), volume.shape)
    return apply_affine(affine, np.array(zyx[::-1], dtype=np.float64))


def test_displaced_run_is_registered_and_the_peak_stays_put(session, registered):
    affine, truth, (run1, run2) = session
    alignment = registered
    assert alignment.registered and alignment.offset_mm > 2.0
    # The recovered transform (moving -> reference) equals the truth within 0.5 mm / 0.5 deg.
    centre = alignment.centre_mm
    truth_at_centre = apply_affine(truth, centre) - centre
    np.testing.assert_allclose(alignment.translation_mm, truth_at_centre, atol=0.5)
    np.testing.assert_allclose(alignment.rotation_deg, np.degrees(TRUTH[3:]), atol=0.5)
    shape = run1["mean"].shape
    moved = {
        kind: resample_to_reference(run2[kind], affine, alignment, affine, shape, kind=kind)
        for kind in ("effect", "variance", "mask")
    }
    assert (moved["variance"] >= 0).all()
    # With the run's noise correlation the variance is that of the resampled effect: never more
    # than the interpolated variance, equal where the noise is perfectly correlated.
    propagated = resample_to_reference(
        run2["variance"], affine, alignment, affine, shape, kind="variance", noise_lag1=[0.4] * 3
    )
    inside = moved["mask"]
    assert (propagated[inside] <= moved["variance"][inside] * (1 + 1e-5)).all()
    assert propagated[inside].mean() < 0.9 * moved["variance"][inside].mean()
    registered = _combine([run1, moved], [run1["mask"], moved["mask"]])
    naive = _combine([run1, run2], [run1["mask"], run2["mask"]])
    # Registered: the peak is at the planted point (one voxel) with its full height.
    assert np.linalg.norm(_peak_mm(registered, affine) - PEAK_MM) <= VOXEL_MM
    height = run1["effect"].max()  # the blob as sampled on run 1's grid
    assert registered.max() > 0.9 * height
    # Unregistered: the two runs' blobs barely overlap, the peak is smeared and displaced.
    assert naive.max() < 0.75 * height
    assert np.linalg.norm(_peak_mm(naive, affine) - PEAK_MM) > VOXEL_MM


def test_aligned_runs_skip_registration(session):
    affine, _, (run1, _) = session
    rng = np.random.default_rng(0)
    noisy = run1["mean"] + rng.normal(0.0, 5.0, run1["mean"].shape)  # 0.5 % of the signal
    alignment = align_run(run1["mean"], affine, run1["mask"], noisy, affine)
    assert not alignment.registered and alignment.offset_mm < 0.1
    np.testing.assert_array_equal(alignment.moving_to_reference, np.eye(4))
    record = alignment.to_dict()
    assert record["registered"] is False and record["translation_mm"] == [0.0, 0.0, 0.0]


def test_fixed_effects_stage_registers_the_displaced_run(session, registered, monkeypatch):
    """The engine's fixed-effects task (I/O replaced by a dict) registers run 2's mean image,
    resamples its maps, records the transform and puts the session peak at the planted point
    (the registration itself is the shared fixture's, checked on its inputs)."""
    import infra.stages.statmaps as statmaps
    from infra.manifest import TaskRecord
    from infra.tasks import TaskSpec
    from processing.firstlevel.model import Contrast, RunModel

    affine, _, runs = session
    arrays: dict[str, np.ndarray] = {}
    monkeypatch.setattr(statmaps, "Store", lambda url: None)
    monkeypatch.setattr(statmaps, "read_array", lambda store, key: arrays[key])
    monkeypatch.setattr(statmaps, "array_attrs", lambda store, key: {"affine": affine.tolist()})
    monkeypatch.setattr(statmaps, "read_nifti", lambda store, key: (arrays[key], affine))
    monkeypatch.setattr(statmaps, "run_attrs", lambda store, key: {"entities": {"sub": "01"}})
    monkeypatch.setattr(statmaps, "write_nifti", lambda store, key, *a, **k: key)

    def write_array(store, key, data, dims, attrs=None):
        arrays[key] = np.asarray(data)
        return key

    monkeypatch.setattr(statmaps, "write_array", write_array)

    def align_run(reference, ref_affine, ref_mask, moving, moving_affine):
        np.testing.assert_array_equal(reference, runs[0]["mean"])
        np.testing.assert_array_equal(ref_mask, runs[0]["mask"])
        np.testing.assert_array_equal(moving, runs[1]["mean"])
        return registered

    monkeypatch.setattr(statmaps, "align_run", align_run)
    payload_runs = {}
    for i, run in enumerate(runs, start=1):
        name = f"run-{i}"
        arrays.update({f"{name}/{k}": run[k] for k in ("mean", "mask", "effect", "variance")})
        arrays[f"{name}/t"] = arrays[f"{name}/z"] = run["effect"]
        maps = {f"c:{s}": f"{name}/{s}" for s in ("effect", "variance", "t", "z")}
        maps["sigmasquared"] = f"{name}/variance"
        payload_runs[name] = {
            "maps": maps, "mask": f"{name}/mask", "mean": f"{name}/mean", "dof": 180.0,
            "undefined": {},
        }  # fmt: skip
    model = RunModel(("a",), (), contrasts=(Contrast("c", ("a",), ((1.0,),)),))
    payload = {"runs": payload_runs, "excluded": {}, "model": model, "dof_cap": 1000.0}
    spec = TaskSpec("fixed_effects", "sub-01", "", TaskRecord("fixed_effects", "sub-01"), None)
    spec.payload.update({**payload, "raw": "raw", "out": "fe"})
    record = spec.record
    outputs = statmaps.run_fixed_effects(spec, record)
    aligned = outputs["alignment"]["run-2"]
    assert aligned["registered"] and abs(aligned["rotation_deg"][0] - 3.0) < 0.5
    effect = arrays[outputs["maps"]["c:effect"]]
    assert np.linalg.norm(_peak_mm(effect, affine) - PEAK_MM) <= VOXEL_MM
    assert effect.max() > 0.9 * runs[0]["effect"].max()
