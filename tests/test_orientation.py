"""One orientation: every store is in RAS+ voxel order, whatever the file's voxel order.

A grid can be stored in 48 voxel orders (6 axis orders times 8 flips). Each copy of an
image in another order (data permuted and flipped, the affine adjusted so that it is the
same head in world space, ``.bvec`` rewritten in FSL's convention for the new axes) gives
the stores of the original, for T1w, BOLD and DWI: data, mask, mean/std, ``bvec``, to the
last bit. The images are small synthetic ones chosen to reach the order-sensitive steps
(float64 data with inexact sums on a grid of 16,385 voxels, scaled integers, computed
masks) and nibabel's real ``anatomical.nii`` and ``functional.nii``; each is normalized
with the functions a job calls.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from bidstrain.errors import BidstrainError
from bidstrain.io.orientation import OBLIQUE_DEGREES, closest_axes, reorientation
from bidstrain.io.store import open_store
from bidstrain.normalize import (
    ImageInfo,
    Options,
    normalize_bold,
    normalize_volumes,
    normalize_with_stats,
)
from bidstrain.normalize.masking import epi_mask, head_mask
from bidstrain.normalize.moments import VoxelMoments
from bidstrain.normalize.nifti_stream import iter_blocks, read_layout
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    ornt2axcodes,
    ornt_transform,
)
from nibabel.testing import data_path
from normalize_support import image_options

#: The 48 voxel orders, as axis codes ("RAS", "LAS", ..., "IPL").
CODES = [
    "".join(ornt2axcodes(np.array([[axis, flip] for axis, flip in zip(order, flips, strict=True)])))
    for order in itertools.permutations(range(3))
    for flips in itertools.product((1, -1), repeat=3)
]
#: One voxel order per axis order, each with other flips: the orders of the tests that read
#: real images (the synthetic images are swept over all 48).
SOME_CODES = ["LPI", "RSP", "PLS", "ASL", "IRP", "SAL"]


def test_the_48_codes_are_distinct_and_name_every_voxel_order():
    assert len(set(CODES)) == 48 and "RAS" in CODES and "LAS" in CODES
    assert set(SOME_CODES) <= set(CODES)
    assert {tuple(axcodes2ornt(tuple(c))[:, 0]) for c in SOME_CODES} == set(
        itertools.permutations(range(3))
    )


# ---- copies of an image in another voxel order ---------------------------------------


def _axes(affine: np.ndarray) -> np.ndarray:
    """Unit world direction of each voxel axis (columns)."""
    linear = np.asarray(affine)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def _fsl(affine: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Voxel-axis directions written as FSL's ``.bvec`` (x negated for a positive
    determinant, as MRtrix3 reads them), or back: the convention is its own inverse."""
    vectors = np.array(vectors, dtype=np.float64)
    if np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        vectors[0] = -vectors[0]
    return vectors


def _bvec_for(source_affine: np.ndarray, bvec: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The ``.bvec`` of a copy with ``affine``: the same world directions, in its axes."""
    world = _axes(source_affine) @ _fsl(source_affine, bvec)
    return _fsl(affine, np.linalg.solve(_axes(affine), world))


def _store_as(source: Path, codes: str, target: Path) -> np.ndarray:
    """Write the image ``source`` in voxel order ``codes`` (the same head) to ``target``.

    The stored values and the header's scaling are kept as they are. Returns the copy's
    affine.
    """
    img = nib.load(source)
    transform = ornt_transform(closest_axes(img.affine), axcodes2ornt(tuple(codes)))
    data = apply_orientation(np.asarray(img.dataobj.get_unscaled()), transform)
    affine = img.affine @ inv_ornt_aff(transform, img.shape[:3])
    header = img.header.copy()
    header.set_data_shape(data.shape)
    header.set_zooms((*np.linalg.norm(affine[:3, :3], axis=0), *header.get_zooms()[3:]))
    out = nib.Nifti1Image(data, affine, header)
    out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, target)
    assert reorientation(out.affine, data.shape).source_orientation == codes
    return out.affine


# ---- the subject ---------------------------------------------------------------------


def _save(data: np.ndarray, affine: np.ndarray, path: Path, scaling=(None, None)) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(*scaling)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def _affine(zooms, origin, rotation: np.ndarray | None = None) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


def _blob(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return distance <= 1


def _synthetic_t1w(path: Path) -> Path:
    """int16 stored with a slope and intercept, an off-centre head in noise."""
    rng = np.random.default_rng(1)
    shape = (13, 11, 9)
    head = _blob(shape, (5.5, 6, 4), (5, 4, 3.5))
    data = np.where(head, 900 + 60 * rng.standard_normal(shape), 0) + rng.integers(0, 15, shape)
    affine = _affine((1.1, 0.9, 1.3), (-7.3, 12.1, -3.3))
    return _save(np.rint(data).astype(np.int16), affine, path, scaling=(0.5, 10.0))


def _synthetic_bold(path: Path, rotation: np.ndarray | None = None) -> Path:
    """float64 (as nilearn saves images) over a 16,385-voxel grid, one voxel more than two
    tiles of the moments: sums of squares round, so any change of summation order shows."""
    rng = np.random.default_rng(2)
    shape = (5, 29, 113)
    brain = _blob(shape, (2, 14, 60), (2.5, 12, 45))
    mean = np.where(brain, 8000 * (1 + 0.3 * rng.random(shape)), 1 + rng.random(shape))
    data = mean[..., None] * (1 + 0.05 * rng.standard_normal((*shape, 5)))
    affine = _affine((3.3, 2.7, 0.9), (-8.1, -40.2, -50.7), rotation)
    return _save(data, affine, path)


def _synthetic_dwi(path: Path, rotation: np.ndarray | None = None) -> tuple[Path, dict]:
    """int16, two b=0 volumes and five directions."""
    rng = np.random.default_rng(3)
    shape = (10, 9, 8)
    brain = _blob(shape, (4.5, 4, 3.5), (4, 3.5, 3))
    bval = np.array([0, 0, 1000, 1000, 1000, 1000, 1000], dtype=np.float64)
    s0 = np.where(brain, 3000 * (1 + 0.2 * rng.random(shape)), 0)
    data = s0[..., None] * np.exp(-bval * 0.0009) + rng.integers(0, 20, (*shape, bval.size))
    bvec = rng.standard_normal((3, bval.size))
    bvec /= np.linalg.norm(bvec, axis=0)
    bvec[:, :2] = 0
    affine = _affine((2.2, 1.9, 2.5), (-11.3, -9.7, -6.1), rotation)
    gradients = {"bval": bval.tolist(), "bvec": bvec.tolist()}
    return _save(np.rint(data).astype(np.int16), affine, path), gradients


REAL = Path(data_path)
#: Each image of the subject: its modality and mask option.
SUBJECT = {
    "T1w": ("T1w", "head"),
    "bold": ("bold", "none"),  # every voxel, corners too (the epi mask: DWI and below)
    "dwi": ("dwi", "epi"),
    "anatomical": ("T1w", "head"),  # real T1, big-endian int16, stored LAS
    "functional": ("bold", "none"),  # real BOLD with scl_slope; 3 slices: epi erodes them all
}


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> dict[str, tuple[Path, ImageInfo, Options]]:
    """Each image of the subject: its file, its description and its options."""
    base = tmp_path_factory.mktemp("subject")
    paths = {
        "T1w": _synthetic_t1w(base / "T1w.nii"),
        "bold": _synthetic_bold(base / "bold.nii"),
        "anatomical": REAL / "anatomical.nii",
        "functional": REAL / "functional.nii",
    }
    paths["dwi"], gradients = _synthetic_dwi(base / "dwi.nii")
    images = {}
    for name, (modality, mask) in SUBJECT.items():
        info = ImageInfo(
            modality=modality,
            subject="01",
            repetition_time=2.0 if modality == "bold" else None,
            **(gradients if modality == "dwi" else {}),
        )
        images[name] = (paths[name], info, image_options(mask=mask))
    return images


def _normalize(image: Path, info: ImageInfo, options: Options, store: Path) -> xr.Dataset:
    """What a normalize job does for one image."""
    normalize = normalize_bold if info.modality == "bold" else normalize_volumes
    normalize(image, store, info, options)
    return open_store(store, use_dask=False).load()


@pytest.fixture(scope="module")
def originals(subject, tmp_path_factory) -> dict[str, xr.Dataset]:
    """The stores of the images as they are."""
    base = tmp_path_factory.mktemp("originals")
    return {
        name: _normalize(path, info, options, base / f"{name}.zarr")
        for name, (path, info, options) in subject.items()
    }


def _copy(subject, name: str, codes: str, folder: Path) -> tuple[Path, ImageInfo]:
    """The image ``name`` stored in voxel order ``codes``, with its ``.bvec`` rewritten."""
    path, info, _ = subject[name]
    copy = folder / f"{name}_{codes}.nii"
    affine = _store_as(path, codes, copy)
    if info.bvec is not None:
        bvec = _bvec_for(nib.load(path).affine, np.asarray(info.bvec), affine)
        info = ImageInfo(**{**vars(info), "bvec": bvec.tolist()})
    return copy, info


def _assert_same_store(actual: xr.Dataset, expected: xr.Dataset, codes: str) -> None:
    for variable in ("data", "mask", "mean", "std", "time"):
        np.testing.assert_array_equal(actual[variable].values, expected[variable].values)
    np.testing.assert_allclose(actual.attrs["affine"], expected.attrs["affine"], atol=1e-5)
    assert actual.attrs["source_orientation"] == codes
    if "bvec" in expected.coords:
        np.testing.assert_array_equal(actual.bval.values, expected.bval.values)
        np.testing.assert_allclose(actual.bvec.values, expected.bvec.values, atol=1e-12)


@pytest.mark.parametrize("codes", CODES)
@pytest.mark.parametrize("name", ["T1w", "bold", "dwi"])
def test_every_voxel_order_gives_the_stores_of_the_original(
    subject, originals, tmp_path, name, codes
):
    copy, info = _copy(subject, name, codes, tmp_path)
    store = _normalize(copy, info, subject[name][2], tmp_path / "copy.zarr")
    _assert_same_store(store, originals[name], codes)


@pytest.mark.parametrize("codes", SOME_CODES)
@pytest.mark.parametrize("name", ["anatomical", "functional"])
def test_real_images_give_the_same_stores_in_other_voxel_orders(
    subject, originals, tmp_path, name, codes
):
    copy, info = _copy(subject, name, codes, tmp_path)
    store = _normalize(copy, info, subject[name][2], tmp_path / "copy.zarr")
    _assert_same_store(store, originals[name], codes)


def test_the_originals_reach_what_the_copies_are_compared_on(subject, originals):
    """Real masks (not the whole grid), real directions, and the inexact float sums."""
    for name in ("T1w", "dwi", "anatomical"):
        assert 0.05 < originals[name].mask.values.mean() < 0.95, name
    assert np.abs(originals["dwi"].bvec.values).max() > 0.5
    layout = read_layout(subject["bold"][0])
    assert layout.dtype == np.float64 and layout.n_grid == 2 * 2**13 + 1
    assert read_layout(subject["T1w"][0]).slope == 0.5
    assert read_layout(subject["functional"][0]).slope != 1
    assert originals["anatomical"].attrs["source_orientation"] == "LAS"


@pytest.mark.parametrize("codes", CODES)
def test_per_voxel_moments_do_not_depend_on_the_voxel_order(subject, tmp_path, codes):
    """To the last bit, also for the voxel that the file's order puts last (numpy sums a
    one-voxel tile in another order), before the float32 store could hide a difference."""
    path = subject["bold"][0]
    variances = []
    for image in (path, _copy(subject, "bold", codes, tmp_path)[0]):
        layout = read_layout(image)
        moments = VoxelMoments(layout.n_grid, dtype=layout.dtype)
        for _, block in iter_blocks(layout, 4):
            moments.update(block)
        variances.append(layout.to_grid(moments.variance(1)))
    np.testing.assert_array_equal(variances[1], variances[0])


def test_the_same_dwi_stored_las_and_ras_has_one_bvec_file(subject, originals, tmp_path):
    """FSL (and dcm2niix, and BIDS) write the same ``.bvec`` for a scan stored LAS or RAS:
    x is negated for the positive determinant of RAS, and so is the voxel axis. A copy
    whose ``.bvec`` had x negated with the axis would be another scan, mirrored."""
    copy, info = _copy(subject, "dwi", "LAS", tmp_path)
    np.testing.assert_allclose(info.bvec, subject["dwi"][1].bvec, atol=1e-12)
    mirrored = np.array(info.bvec) * [[-1], [1], [1]]
    info = ImageInfo(**{**vars(info), "bvec": mirrored.tolist()})
    store = _normalize(copy, info, subject["dwi"][2], tmp_path / "mirrored.zarr")
    expected = originals["dwi"].bvec.values
    assert not np.allclose(store.bvec.values, expected, atol=1e-6)
    np.testing.assert_allclose(store.bvec.values, expected * [-1, 1, 1], atol=1e-12)


@pytest.mark.parametrize("codes", ["LAS", "PIR"])
def test_mask_file_and_heldout_statistics_apply_on_the_reoriented_grid(
    subject, originals, tmp_path, codes
):
    """A mask file in yet another voxel order, and statistics of the original's store."""
    path, info, options = subject["bold"]
    mask_source = tmp_path / "mask_source.nii"
    _save(originals["bold"].mask.values.astype(np.uint8), nib.load(path).affine, mask_source)
    mask_file = tmp_path / "mask.nii"
    _store_as(mask_source, "SLP", mask_file)
    copy, copy_info = _copy(subject, "bold", codes, tmp_path)
    with_file = image_options(mask=str(mask_file))
    masked = _normalize(copy, copy_info, with_file, tmp_path / "masked.zarr")
    _assert_same_store(masked, originals["bold"], codes)
    stats = tmp_path / "stats.zarr"
    normalize_bold(path, stats, info, options)
    heldout = {}
    for label, image in (("original", path), ("copy", copy)):
        out = tmp_path / f"heldout_{label}.zarr"
        normalize_with_stats(image, [stats], out, info, options)
        heldout[label] = open_store(out, use_dask=False).load()
    np.testing.assert_array_equal(heldout["copy"].data.values, heldout["original"].data.values)
    np.testing.assert_array_equal(heldout["copy"].mask.values, originals["bold"].mask.values)


# ---- masks: computed on the RAS+ grid, because they depend on the voxel order ---------


def _two_equal_blobs(shape=(16, 10, 10)) -> np.ndarray:
    """A mean volume with two blobs of the same size, mirror images along x."""
    left = _blob(shape, (3.5, 4.5, 4.5), (2.6, 2.6, 2.6))
    noise = np.random.default_rng(5).random(shape)
    return np.where(left | left[::-1], 1000.0, 10.0) * (1 + 0.05 * (noise + noise[::-1]))


@pytest.mark.parametrize("compute", [epi_mask, head_mask])
def test_a_mask_computed_in_another_voxel_order_would_differ(compute):
    """Between connected components of equal size, nilearn's ``compute_epi_mask`` (and
    :func:`epi_mask`) and :func:`head_mask` keep the lowest label, the first in C order:
    the component kept depends on the voxel order the volume is given in. Normalization
    computes masks on the RAS+ grid, so the file's order does not matter (the stores of
    the next test are equal)."""
    ras = _two_equal_blobs()
    mask = compute(ras)
    assert 0 < mask.sum() < (ras > 500).sum()  # one blob of the two
    in_las_order = compute(ras[::-1])[::-1]
    assert in_las_order.sum() == mask.sum() and not (in_las_order == mask).all()


@pytest.mark.parametrize("codes", ["LAS", "LPI", "SLA"])
def test_stores_of_a_run_with_two_equal_components_are_equal(tmp_path, codes):
    volume = _two_equal_blobs()
    noise = np.random.default_rng(4).standard_normal((*volume.shape, 4))
    data = (volume[..., None] * (1 + 0.01 * noise)).astype(np.float32)
    run = _save(data, np.eye(4), tmp_path / "run.nii")
    info = ImageInfo(modality="bold", subject="01", repetition_time=2.0)
    options = image_options(mask="epi")
    original = _normalize(run, info, options, tmp_path / "original.zarr")
    assert 0 < original.mask.values.sum() < (volume > 500).sum()
    copy = tmp_path / "copy.nii"
    _store_as(run, codes, copy)
    _assert_same_store(_normalize(copy, info, options, tmp_path / "copy.zarr"), original, codes)


# ---- oblique affines -----------------------------------------------------------------


def _rotation(axes: str, degrees: float) -> np.ndarray:
    """A rotation about ``x``, ``y`` or ``z``, or about ``z`` then ``x`` (``"zx"``)."""
    out = np.eye(3)
    cos, sin = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    for name in axes:
        i, j = [k for k in range(3) if k != "xyz".index(name)]
        turn = np.eye(3)
        turn[[i, i, j, j], [i, j, i, j]] = cos, -sin, sin, cos
        out = turn @ out
    return out


ROTATIONS = {
    "20 about z": ("z", 20.0),
    "35 about z then x": ("zx", 35.0),
    "45 about z then x (ambiguous)": ("zx", 45.0),
    "45 about y (ambiguous)": ("y", 45.0),
}


@pytest.mark.parametrize("rotation", list(ROTATIONS))
def test_every_voxel_order_of_an_oblique_grid_gives_one_ras_grid(rotation):
    """The closest axes are chosen from world directions alone, even at 45 degrees, where
    nibabel's choice can depend on the order the axes are stored in."""
    affine = _affine((2.0, 2.5, 3.0), (-10.0, 20.0, 5.0), _rotation(*ROTATIONS[rotation]))
    shape = (5, 6, 7)
    data = np.arange(np.prod(shape)).reshape(shape)
    ras = reorientation(affine, shape)
    expected = ras.volume(data)
    for codes in CODES:
        transform = ornt_transform(ras.ornt, axcodes2ornt(tuple(codes)))
        copy = reorientation(
            affine @ inv_ornt_aff(transform, shape), apply_orientation(data, transform).shape
        )
        assert copy.source_orientation == codes
        np.testing.assert_allclose(copy.affine, ras.affine, atol=1e-9)
        np.testing.assert_array_equal(copy.volume(apply_orientation(data, transform)), expected)
        assert copy.obliquity == pytest.approx(ras.obliquity, abs=1e-9)
    if ROTATIONS[rotation][1] < 45:  # nibabel agrees where the closest axes are clear
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.int16), affine))
        np.testing.assert_allclose(ras.affine, canonical.affine)


def test_an_oblique_image_is_stored_unresampled_with_a_warning(tmp_path, caplog):
    """Documented behaviour (docs/normalization.md): RAS+ order of the closest axes, the
    affine kept oblique, the voxel values the file's, and a warning naming the file."""
    path = _synthetic_bold(tmp_path / "oblique.nii", _rotation("z", 35.0))
    info = ImageInfo(modality="bold", subject="07", repetition_time=2.0)
    with caplog.at_level(logging.WARNING, logger="bidstrain.normalize"):
        store = _normalize(path, info, image_options(mask="none"), tmp_path / "oblique.zarr")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "sub-07" in warning and str(path) in warning and "oblique by 35.00 degrees" in warning
    img = nib.load(path)
    orientation = reorientation(img.affine, img.shape[:3])
    assert orientation.obliquity == pytest.approx(35.0)
    np.testing.assert_allclose(store.attrs["affine"], orientation.affine)
    assert abs(np.asarray(store.attrs["affine"])[0, 1]) > 0.5  # still oblique
    first = orientation.volume(np.asarray(img.dataobj[..., 0], dtype=np.float64))
    z = (first.ravel() - store["mean"].values) / store["std"].values
    np.testing.assert_allclose(store.data.values[0], z, atol=1e-4)


def test_an_aligned_image_gives_no_oblique_warning(subject, tmp_path, caplog):
    path, info, options = subject["dwi"]
    with caplog.at_level(logging.WARNING, logger="bidstrain.normalize"):
        _normalize(path, info, options, tmp_path / "aligned.zarr")
    assert not [r for r in caplog.records if "oblique" in r.getMessage()]
    assert reorientation(nib.load(path).affine, (1, 1, 1)).obliquity < OBLIQUE_DEGREES


@pytest.mark.parametrize("codes", SOME_CODES)
def test_an_oblique_dwi_gives_the_same_store_in_other_voxel_orders(tmp_path, codes):
    path, gradients = _synthetic_dwi(tmp_path / "dwi.nii", _rotation("zx", 30.0))
    info = ImageInfo(modality="dwi", subject="01", **gradients)
    options = image_options(mask="epi")
    original = _normalize(path, info, options, tmp_path / "original.zarr")
    copy = tmp_path / "copy.nii"
    affine = _store_as(path, codes, copy)
    bvec = _bvec_for(nib.load(path).affine, np.asarray(info.bvec), affine)
    copy_info = ImageInfo(**{**vars(info), "bvec": bvec.tolist()})
    _assert_same_store(
        _normalize(copy, copy_info, options, tmp_path / "copy.zarr"), original, codes
    )


def test_a_degenerate_affine_is_an_error_naming_the_file():
    affine = np.diag([2.0, 2.0, 0.0, 1.0])
    with pytest.raises(BidstrainError, match="sub-01: img.nii: the affine has a zero"):
        reorientation(affine, (3, 3, 3), path="img.nii", subject="01")
    collinear = np.eye(4)
    collinear[:3, 1] = [1, 0, 0]
    with pytest.raises(BidstrainError, match="degenerate voxel axis"):
        reorientation(collinear, (3, 3, 3))


# ---- the reorientation itself --------------------------------------------------------


def _image(codes: str, shape=(5, 6, 7, 3)) -> nib.Nifti1Image:
    """Random data on a grid whose voxel axes point along ``codes``."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    source_shape = np.array(shape[:3])[np.argsort(transform[:, 0])]
    affine = np.diag([2.0, 2.5, 3.0, 1.0]) @ inv_ornt_aff(transform, shape)
    data = np.random.default_rng(0).integers(0, 1000, (*source_shape, shape[3]), dtype=np.int16)
    return nib.Nifti1Image(data, affine)


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PSR", "ILP", "AIR"])
def test_reading_in_file_order_gives_nibabels_closest_canonical(tmp_path, codes):
    img = _image(codes)
    path = tmp_path / "img.nii.gz"
    nib.save(img, path)
    canonical = nib.as_closest_canonical(img)
    layout = read_layout(path)
    assert layout.source_orientation == codes
    assert layout.shape == canonical.shape[:3]
    np.testing.assert_array_equal(layout.affine, canonical.affine)
    expected = np.asarray(canonical.dataobj)
    mask = np.random.default_rng(1).random(layout.shape) < 0.4
    index = layout.stored_index(mask)
    for start, block in iter_blocks(layout, 2):
        for offset, row in enumerate(block):
            np.testing.assert_array_equal(layout.to_grid(row), expected[..., start + offset])
            np.testing.assert_array_equal(row[index], expected[..., start + offset][mask])


@pytest.mark.parametrize("codes", ["LAS", "PSR", "ILP"])
def test_vectors_follow_the_axes_in_world_space(codes):
    img = _image(codes)
    orientation = reorientation(img.affine, img.shape)
    vectors = np.random.default_rng(2).standard_normal((3, 4))  # in the file's voxel axes
    world = _axes(img.affine) @ vectors
    stored = orientation.bvecs(_fsl(img.affine, vectors))
    np.testing.assert_allclose(stored, _axes(orientation.affine).T @ world)


@pytest.mark.parametrize("codes", SOME_CODES)
@pytest.mark.parametrize("name", ["T1w", "bold"])
def test_the_checks_read_the_raw_image_in_the_stores_voxel_order(subject, tmp_path, name, codes):
    """The normalization check compares a store with its raw image voxel by voxel: an
    image stored in another voxel order must be read in the store's RAS+ order (it
    failed correct stores with 'data * std + mean differs from the raw image')."""
    from bidstrain.checks.scan import raw_head, scan_store

    copy, info = _copy(subject, name, codes, tmp_path)
    store = tmp_path / "copy.zarr"
    _normalize(copy, info, subject[name][2], store)
    scan = scan_store(store, sample_voxels=200)
    stored = scan.raw(scan.head, slice(0, scan.head.shape[0]))  # data * std + mean
    np.testing.assert_allclose(raw_head(scan), stored, rtol=1e-5, atol=1e-3)
