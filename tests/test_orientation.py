"""One orientation: every store is in RAS+ voxel order, whatever the file's voxel order.

A demo subject rewritten in LAS and in PSR voxel order (data permuted and flipped, the
affine to match, ``.bvec`` in the new voxel axes) gives the stores of the RAS original,
for T1w, BOLD and DWI, through ingestion and the normalize functions a job calls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from bidstrain.demo import DemoSpec, make_demo
from bidstrain.ingest import ingest_subject
from bidstrain.normalize import (
    ImageInfo,
    Options,
    normalize_bold,
    normalize_volumes,
    normalize_with_stats,
)
from bidstrain.normalize.nifti_stream import iter_blocks, read_layout
from bidstrain.orientation import reorientation
from bidstrain.store import CONSOLIDATED
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

SPEC = DemoSpec(
    n_subjects=1,
    bold_shape=(12, 14, 10),
    n_volumes=12,
    t1w_shape=(16, 18, 14),
    sessions_subject=False,
)
ORIENTATIONS = ("LAS", "PSR")
MASKS = {"bold": "epi", "T1w": "head", "dwi": "epi"}  # the config's defaults


def _axes(affine: np.ndarray) -> np.ndarray:
    """Unit world direction of each voxel axis (columns)."""
    linear = np.asarray(affine)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def _fsl(affine: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Voxel-axis directions written as FSL's ``.bvec`` (x negated for a positive
    determinant), or back: the convention is its own inverse."""
    vectors = np.array(vectors, dtype=np.float64)
    if np.linalg.det(np.asarray(affine)[:3, :3]) > 0:
        vectors[0] = -vectors[0]
    return vectors


def _rewrite(source: Path, target: Path, codes: str) -> Path:
    """Copy a RAS dataset with every image stored in voxel order ``codes``."""
    shutil.copytree(source, target)
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    for path in sorted(target.rglob("*.nii.gz")):
        img = nib.load(path)
        data = apply_orientation(np.asarray(img.dataobj), transform)
        affine = img.affine @ inv_ornt_aff(transform, img.shape)
        header = img.header.copy()
        header.set_data_shape(data.shape)
        header.set_zooms((*np.linalg.norm(affine[:3, :3], axis=0), *header.get_zooms()[3:]))
        out = nib.Nifti1Image(data, affine, header)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        nib.save(out, path)
        assert "".join(nib.aff2axcodes(out.affine)) == codes
        bvec = path.with_name(path.name.replace(".nii.gz", ".bvec"))
        if bvec.exists():  # FSL's convention: project the world directions, re-flip x
            world = _axes(img.affine) @ _fsl(img.affine, np.loadtxt(bvec))
            np.savetxt(bvec, _fsl(affine, _axes(affine).T @ world), fmt="%.6f")
    return target


def _normalize(root: Path, out: Path) -> dict[str, xr.Dataset]:
    """Ingest the subject and normalize every image with the default masks."""
    record = ingest_subject(root, "01", ["T1w", "bold", "dwi"])
    ingest = out / "sub-01.json"
    out.mkdir(parents=True)
    ingest.write_text(json.dumps(record))
    stores = {}
    for image in record["images"]:
        name = Path(image["path"]).name.replace(".nii.gz", "")
        store = out / f"{name}.zarr"
        _normalize_image(image["path"], ingest, store, MASKS[image["modality"]])
        stores[name] = xr.open_zarr(store, consolidated=CONSOLIDATED).load()
    return stores


def _normalize_image(image, ingest: Path, store: Path, mask: str = "epi") -> None:
    """What a normalize job does for one image: its ingest record, then its store."""
    info = ImageInfo.from_ingest(ingest, image)
    normalize = normalize_bold if info.modality == "bold" else normalize_volumes
    normalize(image, store, info, Options(mask=mask, block_volumes=3))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("orientation")
    ras = make_demo(base / "RAS", SPEC)
    return {"RAS": ras, **{codes: _rewrite(ras, base / codes, codes) for codes in ORIENTATIONS}}


@pytest.fixture(scope="module")
def stores(demo, tmp_path_factory) -> dict[str, dict[str, xr.Dataset]]:
    base = tmp_path_factory.mktemp("stores")
    return {codes: _normalize(root, base / codes) for codes, root in demo.items()}


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_stores_of_a_reoriented_subject_equal_the_ras_original(stores, codes):
    expected, actual = stores["RAS"], stores[codes]
    assert (
        sorted(actual)
        == sorted(expected)
        == [
            "sub-01_T1w",
            "sub-01_dwi",
            "sub-01_task-rest_run-1_bold",
            "sub-01_task-rest_run-2_bold",
        ]
    )
    for name, ds in expected.items():
        other = actual[name]
        for variable in ("data", "mask", "mean", "std", "time"):
            np.testing.assert_array_equal(other[variable].values, ds[variable].values, name)
        assert other.attrs["affine"] == ds.attrs["affine"]
        assert ds.attrs["source_orientation"] == "RAS"
        assert other.attrs["source_orientation"] == codes
        assert 0.05 < ds.mask.values.mean() < 0.95, name  # a real mask, not the whole grid
    dwi, other = expected["sub-01_dwi"], actual["sub-01_dwi"]
    np.testing.assert_array_equal(other.bval.values, dwi.bval.values)
    np.testing.assert_allclose(other.bvec.values, dwi.bvec.values, atol=1e-12)
    assert np.abs(dwi.bvec.values).max() > 0.5  # real directions, not only b=0 zeros


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_ingest_records_the_source_orientation(demo, codes):
    records = ingest_subject(demo[codes], "01", ["T1w", "bold", "dwi"])["images"]
    assert {r["orientation"] for r in records} == {codes}


def test_mask_file_and_heldout_statistics_apply_on_the_reoriented_grid(demo, stores, tmp_path):
    """A mask file in the image's voxel order, and statistics of RAS stores, both apply."""
    name = "sub-01_task-rest_run-2_bold"
    results = []
    for codes in ("RAS", "LAS"):
        image = demo[codes] / "sub-01" / "func" / f"{name}.nii.gz"
        source = nib.load(image)
        canonical_mask = stores["RAS"][name].mask.values
        mask = apply_orientation(
            canonical_mask.astype(np.uint8),
            ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes))),
        )
        mask_path = tmp_path / f"{codes}_mask.nii.gz"
        nib.save(nib.Nifti1Image(mask, source.affine), mask_path)
        record = ingest_subject(demo[codes], "01", ["bold"])
        ingest = tmp_path / f"{codes}.json"
        ingest.write_text(json.dumps(record))
        out = tmp_path / f"{codes}_masked.zarr"
        _normalize_image(image, ingest, out, str(mask_path))
        masked = xr.open_zarr(out, consolidated=CONSOLIDATED).load()
        np.testing.assert_array_equal(masked.mask.values, canonical_mask)
        stats = tmp_path / f"{codes}_stats.zarr"
        _normalize_image(image.with_name(image.name.replace("run-2", "run-1")), ingest, stats)
        info = ImageInfo.from_ingest(ingest, image)
        heldout = tmp_path / f"{codes}_heldout.zarr"
        normalize_with_stats(image, [stats], heldout, info)
        results.append((masked, xr.open_zarr(heldout, consolidated=CONSOLIDATED).load()))
    (ras_masked, ras_heldout), (las_masked, las_heldout) = results
    np.testing.assert_array_equal(las_masked.data.values, ras_masked.data.values)
    np.testing.assert_array_equal(las_heldout.data.values, ras_heldout.data.values)
    assert las_heldout.attrs["source_orientation"] == "LAS"


# ---- the reorientation itself --------------------------------------------------------


def _image(codes: str, shape=(5, 6, 7, 3), oblique_degrees: float = 0.0) -> nib.Nifti1Image:
    """Random data on a grid whose voxel axes point along ``codes`` (optionally rotated)."""
    ras = np.diag([2.0, 2.5, 3.0, 1.0])
    angle = np.deg2rad(oblique_degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    source_shape = np.array(shape[:3])[np.argsort(transform[:, 0])]
    affine = rotation @ ras @ inv_ornt_aff(transform, shape)
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


def test_the_same_scan_stored_las_and_ras_has_one_bvec_file_and_one_stored_direction():
    """FSL (and dcm2niix, and BIDS) write the same ``.bvec`` for a scan stored LAS or RAS:
    x is negated for the positive determinant of RAS, and so is the voxel axis."""
    ras, las = _image("RAS"), _image("LAS")
    bvec_file = np.random.default_rng(3).standard_normal((3, 4))
    np.testing.assert_allclose(
        reorientation(ras.affine, ras.shape).bvecs(bvec_file),
        reorientation(las.affine, las.shape).bvecs(bvec_file),
    )


def test_oblique_affine_is_kept_not_resampled():
    img = _image("LAS", oblique_degrees=20.0)
    orientation = reorientation(img.affine, img.shape)
    assert orientation.source_orientation == "LAS"
    np.testing.assert_allclose(orientation.affine, nib.as_closest_canonical(img).affine)
    assert abs(orientation.affine[0, 1]) > 0.5  # still rotated: nothing was resampled
    data = np.asarray(img.dataobj)[..., 0]
    np.testing.assert_array_equal(orientation.volume(data), data[::-1])
