"""Cross-subject averages of runs with left-out frames: frames matched by onset, each
averaged over the subjects valid there, against the same means written out in numpy
(float64), with xarray's alignment by time (the peer a user would write) beside it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from bidstrain.average.cohort import BYTES_PER_VALUE, average_stores
from bidstrain.average.parcels import average_parcel_stores
from bidstrain.checks import Check
from bidstrain.checks.normalization import check_normalization
from bidstrain.checks.scan import scan_store
from bidstrain.errors import BidstrainError
from bidstrain.io.store import (
    FeatureMeta,
    FeatureStore,
    open_store,
    read_frames,
    read_meta,
    read_segments,
    segments_of_valid,
    to_grid,
    write_parcel_store,
)
from bidstrain.stimuli.align import FrameGrid, align_run
from bidstrain.stimuli.index import Event
from test_average import ellipsoid, random_raw, write_bold_store

N_FRAMES = 14
TR = 2.0


def left_out(*frames: int) -> np.ndarray:
    """A frame validity with ``frames`` left out."""
    valid = np.ones(N_FRAMES, dtype=bool)
    valid[list(frames)] = False
    return valid


#: (subject, session, mask shift, left-out frames): sessions and masks differ, and frame 13
#: is valid in no subject.
MEMBERS = (
    ("01", "", 0, left_out(0, 1, 6, 13)),
    ("02", "1", 1, left_out(2, 3, 13)),
    ("02", "2", 0, left_out(3, 4, 9, 13)),
    ("03", "", 1, left_out(6, 7, 8, 13)),
)


def zscored(raw: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """A member's z-scored series on the whole grid, float64, NaN at its left-out frames
    and outside its mask, shape (frames, x, y, z)."""
    series = np.moveaxis(raw, -1, 0).astype(np.float64)
    kept = series[valid]
    mean, std = kept.mean(axis=0), kept.std(axis=0, ddof=1)
    grid = np.where(mask & (std > 0), (series - mean) / np.where(std > 0, std, 1), np.nan)
    grid[~valid] = np.nan
    return grid


def reference_average(series: dict[str, list[np.ndarray]]) -> np.ndarray:
    """At each frame and voxel: the mean over subjects of the mean over their sessions,
    each over the members valid there (0 where no subject is), float64."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames no member holds
        subjects = [np.nanmean(np.stack(grids), axis=0) for grids in series.values()]
        mean = np.nanmean(np.stack(subjects), axis=0)
    return np.nan_to_num(mean, nan=0.0)


@pytest.fixture
def members(tmp_path):
    rng = np.random.default_rng(11)
    stores, series = [], {}
    for n, (subject, session, shift, valid) in enumerate(MEMBERS):
        raw, mask = random_raw(rng, N_FRAMES), ellipsoid(shift=shift)
        path = write_bold_store(
            tmp_path / f"m{n}.zarr", raw, mask, subject=subject, session=session, valid=valid
        )
        stores.append(path)
        series.setdefault(subject, []).append(zscored(raw, mask, valid))
    return stores, reference_average(series)


@pytest.mark.parametrize("frames_per_block", [1, 5, N_FRAMES])
def test_frames_are_matched_by_onset_and_averaged_where_valid(tmp_path, members, frames_per_block):
    stores, reference = members
    n_voxel = int(np.logical_or(ellipsoid(), ellipsoid(shift=1)).sum())
    out = average_stores(
        stores,
        tmp_path / "avg.zarr",
        mask="union",
        block_bytes=BYTES_PER_VALUE * n_voxel * frames_per_block,
    )
    average = open_store(out)
    frame_valid = np.arange(N_FRAMES) < 13  # every frame but the last has a valid subject
    np.testing.assert_array_equal(average.frame_valid.values, frame_valid)
    np.testing.assert_array_equal(average.frame_time.values, np.arange(N_FRAMES) * TR)
    np.testing.assert_array_equal(average.time.values, np.arange(13) * TR)
    # frame 3: sub-02 has left it out in both sessions; frame 6: sub-01 and sub-03
    expected_subjects = [2, 2, 3, 2, 3, 3, 1, 2, 2, 3, 3, 3, 3, 0]
    np.testing.assert_array_equal(average.frame_subjects.values, expected_subjects)
    assert average.attrs["n_invalid_frames"] == 1 and average.attrs["min_subjects"] == 1
    grids = to_grid(average, average.data.values, np.nan)
    want = reference[frame_valid][:, average.mask.values]
    error = np.abs(grids[:, average.mask.values] - want).max()
    assert error < 1e-6, error
    # the rows of different subjects at one row index are different frames: averaging
    # them row by row, as before, is far off
    rows = [open_store(p).data.values for p in stores]
    assert all(r.shape[0] < 13 for r in rows)
    assert read_segments(out) == (13,) == segments_of_valid(average.frame_valid.values)


def test_xarray_alignment_by_time_agrees_for_single_session_subjects(tmp_path, members):
    """The peer: xarray aligns the subjects' ``data`` on their ``time`` coordinate (outer
    join, NaN where a subject left a frame out) and takes the NaN-skipping mean."""
    stores, _ = members
    singles = [stores[0], stores[3]]  # sub-01 and sub-03, one session each, masks differ
    average = open_store(average_stores(singles, tmp_path / "avg.zarr"))
    common = average.mask.values
    data = [
        to_grid(ds, ds.data.values, np.nan)[:, common] for ds in (open_store(p) for p in singles)
    ]
    arrays = [
        xr.DataArray(values, dims=("time", "voxel"), coords={"time": open_store(p).time.values})
        for values, p in zip(data, singles, strict=True)
    ]
    with warnings.catch_warnings():  # frames neither subject holds
        warnings.simplefilter("ignore", RuntimeWarning)
        peer = xr.concat(arrays, "subject", join="outer").mean("subject", skipna=True)
    peer = peer.sel(time=average.time.values)
    # frame 6 is left out by both: absent from the average and NaN in the peer
    assert 6 * TR not in average.time.values
    distance = float(np.abs(peer.values - average.data.values).max())
    print(f"xarray's alignment by time: max |difference| {distance:.2e}")
    assert distance < 1e-6


def test_min_subjects_leaves_out_frames_with_fewer_valid_subjects(tmp_path, members):
    stores, reference = members
    average = open_store(average_stores(stores, tmp_path / "avg.zarr", min_subjects=3))
    counts = average.frame_subjects.values
    np.testing.assert_array_equal(average.frame_valid.values, counts >= 3)
    assert average.attrs["n_invalid_frames"] == int((counts < 3).sum())
    assert read_segments(tmp_path / "avg.zarr") == segments_of_valid(counts >= 3)
    want = reference[counts >= 3][:, average.mask.values]
    np.testing.assert_allclose(
        to_grid(average, average.data.values)[:, average.mask.values], want, atol=1e-6
    )
    with pytest.raises(BidstrainError, match=r"no frame is valid in 4 of the 3 subjects"):
        average_stores(stores, tmp_path / "none.zarr", min_subjects=4)


def test_time_grids_that_differ_are_refused_naming_both_subjects(tmp_path, members):
    stores, _ = members
    rng = np.random.default_rng(12)
    shifted = write_bold_store(
        tmp_path / "late.zarr",
        random_raw(rng, N_FRAMES),
        ellipsoid(),
        subject="04",
        valid=left_out(5),
        start=1.0,
    )
    with pytest.raises(
        BidstrainError,
        match=r"sub-04.*time grid is not sub-01's.*frame 0 starts at 1 s against 0 s",
    ):
        average_stores([*stores, shifted], tmp_path / "avg.zarr")
    longer = write_bold_store(
        tmp_path / "long.zarr", random_raw(rng, N_FRAMES + 3), ellipsoid(), subject="05"
    )
    with pytest.raises(BidstrainError, match=rf"runs differ in length.*sub-05: {N_FRAMES + 3}"):
        average_stores([*stores, longer], tmp_path / "avg.zarr")
    cut = open_store(average_stores([*stores, longer], tmp_path / "avg.zarr", truncate=True))
    assert cut.attrs["truncated"] == {"sub-05": N_FRAMES + 3}
    assert cut.sizes["frame"] == N_FRAMES


def parcel_twin(path, voxel_store, seed, parcels=(1, 2, 3)) -> tuple[str, np.ndarray]:
    """A parcel store on the valid frames of ``voxel_store`` (random values); its path and
    its series on the whole grid (NaN at left-out frames)."""
    meta = read_meta(voxel_store)
    group = zarr.open_group(voxel_store, mode="r")
    valid, frame_time = group["frame_valid"][...], group["frame_time"][...]
    data = np.random.default_rng(seed).standard_normal((int(valid.sum()), len(parcels)))
    write_parcel_store(
        path,
        data=data,
        mean=np.full(len(parcels), 10.0),
        std=np.full(len(parcels), 2.0),
        parcels=np.asarray(parcels),
        n_voxels=np.full(len(parcels), 5),
        coverage=np.ones(len(parcels)),
        time=frame_time[valid],
        attrs=dict(
            modality="bold",
            subject=meta.subject,
            session=meta.session,
            entities=dict(meta.entities),
            affine=np.eye(4).tolist(),
            source_path="x",
            ddof=1,
            n_zero_variance=0,
            stats_dim="parcel",
            stats_from=[str(path)],
            repetition_time=TR,
            atlas="toy",
            parcel_names=[f"p{p}" for p in parcels],
        ),
    )
    grid = np.full((valid.size, len(parcels)), np.nan)
    grid[valid] = data.astype(np.float32)
    return str(path), grid


def test_parcel_averages_match_frames_by_onset_and_record_them(tmp_path, members):
    stores, _ = members
    parcel_stores, series = [], {}
    for n, (store, (subject, *_)) in enumerate(zip(stores, MEMBERS, strict=True)):
        path, grid = parcel_twin(tmp_path / f"p{n}.zarr", store, seed=n)
        parcel_stores.append(path)
        series.setdefault(subject, []).append(grid)
    out = tmp_path / "avg_parcels.zarr"
    average_parcel_stores(parcel_stores, out, voxel_stores=stores)
    group = zarr.open_group(out, mode="r")
    valid = np.arange(N_FRAMES) < 13
    np.testing.assert_array_equal(group["frame_valid"][...], valid)
    np.testing.assert_array_equal(
        group["frame_subjects"][...], [2, 2, 3, 2, 3, 3, 1, 2, 2, 3, 3, 3, 3, 0]
    )
    np.testing.assert_array_equal(group["time"][...], np.arange(13) * TR)
    want = reference_average(series)[valid]
    np.testing.assert_allclose(group["data"][...], want, atol=1e-6)
    assert read_meta(out).n_invalid_frames == 1
    assert read_segments(out) == (13,)
    # a parcel store paired with another run's voxel store is refused
    with pytest.raises(BidstrainError, match=r"frames are not the 10 valid frames.*m0\.zarr"):
        average_parcel_stores(parcel_stores[1:2], tmp_path / "x.zarr", voxel_stores=stores[:1])


def test_the_normalization_check_weighs_frames_by_their_subjects(tmp_path, members):
    """An average of z-scored runs with different left-out frames has mean 0 only when
    each frame weighs its number of subjects: the check passes it, and still fails an
    average of runs left at scanner scale."""
    stores, _ = members
    singles = [stores[0], stores[3]]  # one session each, on the intersection mask

    def check(paths) -> tuple[Check, float]:
        average = str(average_stores(paths, tmp_path / f"avg{len(list(tmp_path.iterdir()))}.zarr"))
        scan = scan_store(average, sample_voxels=20)
        plain = float(np.abs(open_store(average).data.mean("time")).max())
        result = check_normalization(
            [scan], {}, {}, training={average}, manifest={}, ddof=1, tolerance=1e-4
        )
        return result, plain

    result, plain = check(singles)
    assert result.status == "pass", result.message
    assert plain > 1e-2  # the unweighted mean is off 0: frames hold 1 or 2 subjects
    rng = np.random.default_rng(13)
    scanner = [
        write_bold_store(
            tmp_path / f"raw{n}.zarr",
            random_raw(rng, N_FRAMES),
            ellipsoid(),
            subject=f"0{n}",
            valid=left_out(n, 5 + n),
            normalize=False,
        )
        for n in range(2)
    ]
    result, _ = check(scanner)
    assert result.status == "fail" and "not z-scored" in result.message


def test_stimuli_aligned_to_an_average_follow_its_frames(tmp_path, members):
    """The alignment job places a stimulus on the average's whole frame grid and keeps
    its valid frames, so row ``i`` of the aligned features is the average's ``time[i]``:
    a ramp stimulus (bin ``k`` holds ``k``) gives each row its frame's number."""
    stores, _ = members
    average = average_stores(stores, tmp_path / "avg.zarr", min_subjects=3)
    time, frame_time, meta = read_frames(average)
    grid = FrameGrid.of_store(time, frame_time, meta.repetition_time)
    valid = zarr.open_group(average, mode="r")["frame_valid"][...]
    np.testing.assert_array_equal(grid.kept, valid)
    assert not valid.all()
    film = Path("film.mp4")
    ramp = np.arange(N_FRAMES, dtype=np.float64)[:, None]
    feature_store = FeatureStore(
        meta=FeatureMeta(film, TR, ("video",), {"video": "grey"}, {"video": (1,)}),
        time=np.arange(N_FRAMES) * TR,
        features={"video": ramp},
        raw_mean={"video": ramp.mean(0)},
        raw_std={"video": ramp.std(0)},
    )
    features, covered = align_run(
        [Event(film, 0.0, N_FRAMES * TR)],
        {film: feature_store},
        "video",
        grid,
        "delays",
        (0, 1),
        source_tr=TR,
    )
    frames = np.flatnonzero(valid)
    assert features.shape == (time.size, 2)
    np.testing.assert_allclose(features[:, 0], frames)
    np.testing.assert_allclose(features[:, 1], np.maximum(frames - 1, 0))
    np.testing.assert_allclose(covered, 1.0)


def test_the_averaging_figure_compares_subjects_on_the_average_s_frames(tmp_path, members):
    from bidstrain.report.average import average_figure, course_on, time_course

    stores, _ = members
    group = open_store(average_stores(stores, tmp_path / "avg.zarr"))
    times = group.time.values
    for path, (*_, valid) in zip(stores, MEMBERS, strict=True):
        subject = open_store(path)
        course = course_on(subject, times)
        held = valid[: times.size]
        np.testing.assert_array_equal(np.isfinite(course), held)
        np.testing.assert_allclose(course[held], time_course(subject))
    assert average_figure(group, [open_store(p) for p in stores], "task-rest run-1")
