"""Cross-subject averages of parcel stores: sessions first, then subjects, truncation as
for voxels, against the same means written out in numpy (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from bidstrain.average.parcels import average_parcel_stores
from bidstrain.errors import BidstrainError
from bidstrain.io.store import consolidate, read_meta, write_parcel_store
from test_average import ellipsoid, random_raw, write_bold_store


def parcel_store(path, subject, session, n_time, *, parcels=(1, 2, 3, 4), seed=0, empty=()):
    """A parcel store of random values, and the voxel store of its run beside it (the
    frame grid); returns its path, its arrays and the voxel store's path. The parcels at
    the positions ``empty`` have no voxel in the run's mask (0 everywhere, as the
    normalize job writes them)."""
    rng = np.random.default_rng(seed)
    voxels = write_bold_store(
        path.with_name(f"{path.stem}_bold.zarr"),
        random_raw(rng, n_time),
        ellipsoid(),
        subject=subject,
        session=session,
        tr=0.8,
    )
    n = len(parcels)
    arrays = {
        "data": rng.standard_normal((n_time, n)).astype(np.float32),
        "mean": rng.uniform(50, 100, n).astype(np.float32),
        "std": rng.uniform(1, 5, n).astype(np.float32),
        "n_voxels": rng.integers(1, 50, n),
        "coverage": rng.uniform(0, 1, n),
    }
    for values in arrays.values():
        values[..., list(empty)] = 0
    attrs = dict(
        modality="bold",
        subject=subject,
        session=session,
        entities={"task": "rest", "run": "1"},
        affine=np.eye(4).tolist(),
        source_path="x",
        ddof=1,
        n_zero_variance=0,
        stats_dim="parcel",
        stats_from=[str(path)],
        repetition_time=0.8,
        atlas="toy",
        parcel_names=[f"p{p}" for p in parcels],
    )
    write_parcel_store(
        path,
        parcels=np.asarray(parcels),
        time=np.arange(n_time) * 0.8,
        attrs=attrs,
        **arrays,
    )
    return str(path), {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, voxels


def test_the_parcel_average_is_the_mean_over_subjects_of_their_session_means(tmp_path):
    a1, s1, v1 = parcel_store(tmp_path / "a1.zarr", "01", "1", 12, seed=1)
    a2, s2, v2 = parcel_store(tmp_path / "a2.zarr", "01", "2", 10, seed=2)
    b, s3, v3 = parcel_store(tmp_path / "b.zarr", "02", "", 11, seed=3)
    out = tmp_path / "avg.zarr"
    with pytest.raises(BidstrainError, match="runs differ in length"):
        average_parcel_stores([a1, a2, b], out, voxel_stores=[v1, v2, v3])
    average_parcel_stores([a1, a2, b], out, voxel_stores=[v1, v2, v3], truncate=True)
    group = zarr.open_group(out, mode="r")
    for name in ("data", "mean", "std", "n_voxels", "coverage"):
        cut = (lambda x: x[:10]) if name == "data" else (lambda x: x)
        subject_01 = (cut(s1[name]) + cut(s2[name])) / 2
        want = (subject_01 + cut(s3[name])) / 2
        want = np.rint(want) if name == "n_voxels" else want
        np.testing.assert_allclose(group[name][...], want, rtol=1e-6, atol=1e-6)
    assert group["data"].shape == (10, 4)
    np.testing.assert_array_equal(group["time"][...], np.arange(10) * 0.8)
    meta = read_meta(out)
    assert meta.subject == "average" and meta.subjects == ("01", "02")
    assert dict(meta.truncated) == {"sub-01 ses-1": 12, "sub-02": 11}
    assert meta.stats_dim == "parcel" and meta.repetition_time == 0.8
    assert group.attrs["atlas"] == "toy"


def test_parcel_stores_of_another_atlas_are_refused(tmp_path):
    a, _, va = parcel_store(tmp_path / "a.zarr", "01", "", 8)
    b, _, vb = parcel_store(tmp_path / "b.zarr", "02", "", 8, parcels=(1, 2, 3, 5))
    with pytest.raises(BidstrainError, match="parcels differ"):
        average_parcel_stores([a, b], tmp_path / "avg.zarr", voxel_stores=[va, vb])
    assert not (tmp_path / "avg.zarr").exists()


def test_parcel_repetition_times_are_compared_within_the_voxel_averages_tolerance(tmp_path):
    """The voxel average of the same job accepts TRs within
    average.repetition_time_tolerance: the parcel average accepts the same ones."""
    a, _, va = parcel_store(tmp_path / "a.zarr", "01", "", 8)
    b, _, vb = parcel_store(tmp_path / "b.zarr", "02", "", 8)
    zarr.open_group(b, mode="r+").attrs["repetition_time"] = 0.8004
    consolidate(b)
    out = tmp_path / "avg.zarr"
    average_parcel_stores([a, b], out, voxel_stores=[va, vb], tr_tolerance=1e-3)
    assert out.exists()
    with pytest.raises(BidstrainError, match=r"repetition time 0.8004 s differs from sub-01's "
                       r"0.8 s \(config average.repetition_time_tolerance: 0.0001\)"):  # fmt: skip
        average_parcel_stores([a, b], tmp_path / "strict.zarr", voxel_stores=[va, vb],
                              tr_tolerance=1e-4)  # fmt: skip
    assert not (tmp_path / "strict.zarr").exists()


def test_a_parcel_empty_in_a_run_is_averaged_over_the_runs_that_cover_it(tmp_path, caplog):
    a, s1, v1 = parcel_store(tmp_path / "a.zarr", "01", "", 10, seed=1, empty=(1, 3))
    b, s2, v2 = parcel_store(tmp_path / "b.zarr", "02", "", 10, seed=2, empty=(3,))
    out = tmp_path / "avg.zarr"
    average_parcel_stores([a, b], out, voxel_stores=[v1, v2])
    group = zarr.open_group(out, mode="r")
    for name in ("data", "mean", "std"):
        values = group[name][...]
        np.testing.assert_allclose(values[..., [0, 2]], (s1[name] + s2[name])[..., [0, 2]] / 2,
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
        # parcel p2 only in sub-02's mask: its values alone, not halved by sub-01's zeros
        np.testing.assert_allclose(values[..., 1], s2[name][..., 1], rtol=1e-6, atol=1e-6)
        assert not values[..., 3].any()  # in no mask: 0, never NaN
    np.testing.assert_allclose(group["coverage"][...], (s1["coverage"] + s2["coverage"]) / 2)
    assert zarr.open_group(out, mode="r").attrs["n_empty_parcels"] == 1
    assert "p2 (1 of 2)" in caplog.text
