"""The EPI mask: bidstrain's ``epi_mask`` is nilearn's ``compute_epi_mask``, voxel for voxel,
computed without importing nilearn.

Volumes: the real ``functional.nii`` (its mean) and ``anatomical.nii`` (big-endian int16),
the demo's BOLD and DWI means, smooth random volumes, volumes with NaN and Inf, several
blobs (the largest component is kept), constant volumes and grids too small for a mask;
each in its stored voxel order and after the RAS+ reorientation every store gets
(:mod:`bidstrain.io.orientation`), with the defaults and with other cutoffs and openings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstrain.demo.generate import DemoSpec, make_demo
from bidstrain.io.orientation import reorientation
from bidstrain.io.store import open_store
from bidstrain.normalize.masking import dilate, epi_mask
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from nibabel.testing import data_path
from nilearn.exceptions import MaskWarning
from nilearn.masking import compute_epi_mask
from scipy import ndimage

FUNCTIONAL = Path(data_path) / "functional.nii"  # real BOLD, int16, LAS
ANATOMICAL = Path(data_path) / "anatomical.nii"  # real T1, big-endian int16, LAS
SPEC = DemoSpec(n_subjects=1, bold_shape=(20, 24, 18), n_volumes=16, sessions_subject=False)
#: PLS voxel order (axes permuted and flipped), anisotropic voxels: the synthetic volumes'.
PLS = np.array([[0, -2.0, 0, 10], [-3.0, 0, 0, 20], [0, 0, 2.5, -5], [0, 0, 0, 1]])


def nilearn_mask(volume: np.ndarray, affine: np.ndarray, **parameters) -> np.ndarray:
    """nilearn's mask of a 3D volume (its empty-mask warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaskWarning)
        image = compute_epi_mask(nib.Nifti1Image(volume, affine), **parameters)
    return np.asarray(image.dataobj).astype(bool)


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume and affine in RAS+ voxel order, as every store holds them."""
    orientation = reorientation(affine, volume.shape)
    return orientation.volume(volume), orientation.affine


def as_psr(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A RAS volume stored in PSR voxel order (axes permuted and flipped)."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(("P", "S", "R")))
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) @ inv_ornt_aff(transform, volume.shape)
    return np.ascontiguousarray(apply_orientation(volume, transform)), affine


def smooth_volume(seed: int, shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """A smooth random field with a bright ellipsoid: a mask that varies with the seed."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), scale)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radii = rng.uniform(0.5, 0.9, 3)
    inside = sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True)) <= 1
    return 1000.0 * inside * (1 + rng.uniform(0.5, 3) * field / field.std()) + 50 * field


def blobs() -> np.ndarray:
    """Three separate bright blocks of different sizes: only the largest stays."""
    volume = np.random.default_rng(7).uniform(0, 10, (30, 30, 30))
    volume[2:14, 2:14, 2:14] += 500  # the largest
    volume[18:26, 18:26, 18:26] += 700
    volume[2:9, 20:27, 2:9] += 900
    return volume


def with_nonfinite(volume: np.ndarray) -> np.ndarray:
    """NaN and Inf voxels inside and outside the bright part (nilearn: NaN -> 0 after
    smoothing, Inf -> 0 before)."""
    volume = volume.copy()
    volume[10, 12, 9] = np.nan
    volume[11, 12, 9] = np.inf
    volume[0, 0, 0] = -np.inf
    volume[1, 5, 3] = np.nan
    volume[9:11, 10:13, 8:10] = np.nan
    return volume


def scattered_nan() -> np.ndarray:
    """A smooth random volume with 1 % of its voxels NaN. nilearn sets them to 0 after
    smoothing; had they been set to 0 before smoothing only, 210 voxels of the mask would
    differ."""
    volume = smooth_volume(0, (32, 36, 30), 2.0)
    volume[np.random.default_rng(1).random(volume.shape) < 0.01] = np.nan
    return volume


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("epi_mask"), SPEC)


def _image(root: Path, suffix: str) -> nib.Nifti1Image:
    return nib.load(sorted(root.rglob(f"*_{suffix}.nii.gz"))[0])


@pytest.fixture(scope="module")
def volumes(demo) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Name -> (volume, affine, whether nilearn's mask is non-empty)."""
    functional = nib.load(FUNCTIONAL)
    anatomical = nib.load(ANATOMICAL)
    bold = _image(demo, "bold")
    dwi = _image(demo, "dwi")
    bvals = np.loadtxt(sorted(demo.rglob("*_dwi.bval"))[0])
    dwi_data = dwi.get_fdata()
    bold_mean = bold.get_fdata().mean(axis=-1)
    cases = {
        "functional mean": (functional.get_fdata().mean(axis=-1), functional.affine, False),
        "anatomical, big-endian int16": (np.asarray(anatomical.dataobj), anatomical.affine, True),
        "demo BOLD mean": (bold_mean, bold.affine, True),
        "demo BOLD mean, PSR order": (*as_psr(bold_mean), True),
        "demo BOLD mean, float32": (bold_mean.astype(np.float32), bold.affine, True),
        "demo DWI b=0 mean": (dwi_data[..., bvals == 0].mean(axis=-1), dwi.affine, True),
        "demo DWI mean": (dwi_data.mean(axis=-1), dwi.affine, True),
        "demo DWI b=0 mean, PSR order": (*as_psr(dwi_data[..., bvals == 0].mean(-1)), True),
        "demo BOLD mean with NaN and Inf": (with_nonfinite(bold_mean), bold.affine, True),
        "scattered NaN": (scattered_nan(), PLS, True),
        "three blobs": (blobs(), PLS, True),
        "int16 volume": (np.rint(blobs()).astype(np.int16), PLS, True),
        "constant": (np.full((10, 11, 12), 5.0), PLS, True),
        "zeros": (np.zeros((12, 10, 9)), PLS, True),
        "3x3x3": (np.arange(27, dtype=np.float64).reshape(3, 3, 3), PLS, False),
    }
    for seed, (shape, scale) in enumerate([((32, 36, 30), 2.0), ((25, 40, 17), 3.5)] * 3):
        cases[f"smooth random {seed}"] = (smooth_volume(seed, shape, scale), PLS, True)
    return cases


CASES = [
    "functional mean",
    "anatomical, big-endian int16",
    "demo BOLD mean",
    "demo BOLD mean, PSR order",
    "demo BOLD mean, float32",
    "demo DWI b=0 mean",
    "demo DWI mean",
    "demo DWI b=0 mean, PSR order",
    "demo BOLD mean with NaN and Inf",
    "scattered NaN",
    "three blobs",
    "int16 volume",
    "constant",
    "zeros",
    "3x3x3",
    *(f"smooth random {seed}" for seed in range(6)),
]


@pytest.mark.parametrize("orientation", ["stored", "RAS"])
@pytest.mark.parametrize("case", CASES)
def test_epi_mask_equals_nilearn_voxel_for_voxel(volumes, case, orientation):
    volume, affine, non_empty = volumes[case]
    if orientation == "RAS":
        volume, affine = to_ras(volume, affine)
    expected = nilearn_mask(volume, affine)
    assert expected.any() == non_empty  # the case tests what it says
    mask = epi_mask(volume)
    assert mask.dtype == bool and mask.shape == volume.shape
    np.testing.assert_array_equal(mask, expected)


def test_three_blobs_keep_the_largest(volumes):
    volume, affine, _ = volumes["three blobs"]
    mask = epi_mask(volume)
    assert mask[1:15, 1:15, 1:15].sum() == mask.sum()  # the block, a voxel wider at most
    assert mask[2:14, 2:14, 2:14].mean() > 0.9  # the opening rounds its corners off
    assert ndimage.label(mask)[1] == 1


@pytest.mark.parametrize(
    "parameters",
    [
        {"opening": 0},
        {"opening": 1},
        {"opening": 3},
        {"lower_cutoff": 0.1, "upper_cutoff": 0.95},
        {"lower_cutoff": 0.4, "upper_cutoff": 0.6},
    ],
)
@pytest.mark.parametrize(
    "case", ["functional mean", "demo BOLD mean with NaN and Inf", "smooth random 1"]
)
def test_epi_mask_parameters_equal_nilearn(volumes, case, parameters):
    volume, affine, _ = volumes[case]
    np.testing.assert_array_equal(
        epi_mask(volume, **parameters), nilearn_mask(volume, affine, **parameters)
    )


def test_no_mask_where_nilearn_warns_or_fails():
    small = np.arange(27, dtype=np.float64).reshape(3, 3, 3)
    with pytest.warns(MaskWarning, match="Computed an empty mask"):
        compute_epi_mask(nib.Nifti1Image(small, np.eye(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours is silent: the normalizer reports the file
        assert not epi_mask(small).any()
    one = np.ones((1, 1, 1))
    with pytest.raises(ValueError, match="empty sequence"):
        compute_epi_mask(nib.Nifti1Image(one, np.eye(4)))
    assert not epi_mask(one).any()


def test_the_input_volume_is_not_modified(volumes):
    volume, _, _ = volumes["demo BOLD mean with NaN and Inf"]
    before = volume.copy()
    epi_mask(volume)
    np.testing.assert_array_equal(volume, before)


_JOB = """
import json, sys
from bidstrain.normalize.__main__ import main
main(sys.argv[1:])
print(json.dumps(sorted(name for name in sys.modules
                        if name.split(".")[0] in ("nilearn", "sklearn"))))
"""


def test_a_mask_epi_job_imports_neither_nilearn_nor_sklearn(demo, tmp_path):
    image = str(next((demo / "sub-01" / "func").glob("*_run-1_bold.nii.gz")))
    store = tmp_path / "bold.zarr"
    spec = [{"modality": "bold", "image": image, "store": str(store), "mask": "epi"}]
    spec[0]["stats_from"] = []
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    settings = {"bids_dir": str(demo), "ingest": {}, "normalize": {}, "time": {}, "atlas": None}
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    command = [sys.executable, "-c", _JOB, "--spec", str(tmp_path / "spec.json")]
    command += ["--settings", str(tmp_path / "settings.json")]
    command += ["--subject", "01", "--ingest", str(tmp_path / "i.json")]
    command += ["--out-table", str(tmp_path / "sub-01_scans.tsv")]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    # and the store's mask is nilearn's mask of the 4D run (in RAS+ order)
    run = nib.as_closest_canonical(nib.load(image))
    expected = np.asarray(compute_epi_mask(run).dataobj).astype(bool)
    assert expected.any()
    np.testing.assert_array_equal(open_store(store).mask.values, expected)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_dilate_is_scipy_binary_dilation(iterations):
    """The numpy dilation pass 1 uses equals scipy's, at the grid's edges too."""
    rng = np.random.default_rng(iterations)
    for shape in [(7, 9, 5), (1, 6, 4), (12, 3, 10)]:
        mask = rng.random(shape) < 0.05
        mask[0, 0, 0] = mask[-1, -1, -1] = True  # on the corners
        np.testing.assert_array_equal(
            dilate(mask, iterations), ndimage.binary_dilation(mask, iterations=iterations)
        )
