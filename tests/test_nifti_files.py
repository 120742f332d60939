"""Every valid NIfTI file is ingested and normalized; only broken ones are rejected.

Each file kind is made in the test: a gzip stream longer than the header describes,
multi-member gzip (pigz -i, BGZF), a file over 4 GiB decompressed, uncompressed .nii,
NIfTI-2, big-endian, scl_slope/scl_inter, int8/uint16/float64, RGB; and truncated or
corrupt files, which are rejected with the number of missing bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from bidstrain.dataset.bids import BidsFile, BidsIndex, parse_name
from bidstrain.errors import BidstrainError
from bidstrain.ingest.records import ingest_images, inspect_image
from bidstrain.io import nifti_files
from bidstrain.io.nifti_files import check_complete, data_end, gzip_stream_size
from bidstrain.io.store import CONSOLIDATED
from bidstrain.normalize import ImageInfo, nifti_stream, normalize_bold
from bidstrain.normalize.nifti_stream import iter_blocks, read_layout
from isal import igzip
from nibabel.testing import data_path
from normalize_support import image_options
from test_plan import plan_of

DATA = Path(data_path)
FUNCTIONAL = DATA / "functional.nii"  # real BOLD: LAS, int16 with scl_slope/scl_inter, TR 2 s
BOLD = ImageInfo("bold", "01", entities={"sub": "01", "task": "rest"}, repetition_time=2.0)


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    (root / "sub-01" / "func").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    return root


def _bold_path(root: Path, extension: str = ".nii.gz") -> Path:
    return root / "sub-01" / "func" / f"sub-01_task-rest_bold{extension}"


def _inspect(path: Path) -> dict:
    entities, suffix, extension = parse_name(path.name)
    image = BidsFile(path, entities, "func", suffix, extension)
    return inspect_image(image, BidsIndex.build(path.parents[2]))


def _gzip_members(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(gzip.compress(part, compresslevel=1) for part in parts))
    return path


def _raw_bytes(img: nib.Nifti1Image, tmp_path: Path) -> bytes:
    """The complete uncompressed file of ``img``."""
    nib.save(img, tmp_path / "raw.nii")
    return (tmp_path / "raw.nii").read_bytes()


def _bgzf_block(data: bytes) -> bytes:
    """One BGZF block: a gzip member with the BC extra field holding its size."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = compressor.compress(data) + compressor.flush()
    extra = b"BC" + struct.pack("<HH", 2, len(deflated) + 25)
    header = b"\x1f\x8b\x08\x04\0\0\0\0\0\xff" + struct.pack("<H", len(extra)) + extra
    return header + deflated + struct.pack("<II", zlib.crc32(data), len(data))


def _zscored(img: nib.Nifti1Image) -> np.ndarray:
    """nibabel's values in RAS voxel order, z-scored per voxel over time (ddof 1)."""
    values = nib.as_closest_canonical(img).get_fdata(dtype=np.float64)
    series = values.reshape(-1, values.shape[-1]).T
    std = series.std(axis=0, ddof=1)
    return np.divide(series - series.mean(axis=0), std, out=np.zeros_like(series), where=std > 0)


def _store_data(path: Path) -> np.ndarray:
    return xr.open_zarr(path, consolidated=CONSOLIDATED).data.values


# ---- gzip streams -------------------------------------------------------------------


def test_real_images_shipped_with_nibabel_and_nilearn_are_complete():
    """None of them has a longer stream (checked: nibabel 5.4, nilearn 0.13); all pass."""
    import nilearn

    paths = sorted(DATA.glob("*.nii*")) + sorted(Path(nilearn.__file__).parent.glob("**/*.nii*"))
    checked = []
    for path in paths:
        img = nib.load(path)
        if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            check_complete(path, img)
            checked.append(path.name)
    assert {"example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"} <= set(checked)


def test_real_functional_run_ingests_with_its_orientation(tmp_path):
    root = _dataset(tmp_path)
    shutil.copy(FUNCTIONAL, _bold_path(root, ".nii"))
    (record,) = ingest_images(root, "01", [str(_bold_path(root, ".nii"))])["images"]
    assert record["shape"] == [17, 21, 3, 20] and record["repetition_time"] == 2.0
    assert record["orientation"] == "LAS"


def test_stream_longer_than_the_header_describes_is_accepted(tmp_path):
    """Bytes after the data block (as real files ship): trailer != header size, stream ok."""
    root = _dataset(tmp_path)
    img = nib.load(FUNCTIONAL)
    path = _gzip_members(_bold_path(root), _raw_bytes(img, tmp_path) + b"\0" * 4096)
    (isize,) = struct.unpack("<I", path.read_bytes()[-4:])
    assert isize == data_end(img) + 4096
    record = _inspect(path)
    assert record["n_volumes"] == 20 and record["orientation"] == "LAS"
    np.testing.assert_array_equal(nib.load(path).get_fdata(), img.get_fdata())
    normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none"))
    np.testing.assert_allclose(_store_data(tmp_path / "r.zarr"), _zscored(img), atol=1e-5)


@pytest.mark.parametrize("kind", ["pigz -i", "bgzf"])
def test_multi_member_gzip_is_accepted_and_streamed(tmp_path, kind):
    root = _dataset(tmp_path)
    img = nib.load(FUNCTIONAL)
    raw = _raw_bytes(img, tmp_path)
    path = _bold_path(root)
    if kind == "pigz -i":
        _gzip_members(path, raw[:10_000], raw[10_000:30_000], raw[30_000:])
    else:  # BGZF: 64 KiB blocks and an empty end-of-file block
        blocks = [raw[i : i + 2**16 - 256] for i in range(0, len(raw), 2**16 - 256)]
        path.write_bytes(b"".join(_bgzf_block(block) for block in [*blocks, b""]))
    assert struct.unpack("<I", path.read_bytes()[-4:])[0] != data_end(img)
    assert _inspect(path)["shape"] == [17, 21, 3, 20]
    layout = read_layout(path)
    rows = np.concatenate([block.copy() for _, block in iter_blocks(layout, 3)])
    stored = nib.Nifti1Image(img.dataobj.get_unscaled(), img.affine)
    expected = np.asarray(nib.as_closest_canonical(stored).dataobj)
    volumes = np.stack([layout.to_grid(row) for row in rows], axis=-1)
    np.testing.assert_array_equal(volumes, expected)


class _CountedReads(io.RawIOBase):
    """A binary file that counts the reads asked of it."""

    def __init__(self, file):
        self.file, self.reads = file, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.reads += 1
        return self.file.readinto(buffer)

    def close(self) -> None:
        self.file.close()
        super().close()


def test_a_gzip_stream_is_read_from_its_file_in_large_pieces(tmp_path, monkeypatch):
    # each read of the compressed file takes the GIL in the decompressing thread: with
    # igzip.open's 512 KB pieces, decompression crawled whenever the main thread ran Python
    shape = (64, 64, 64, 40)  # 21 MB of int16 noise: about as large compressed
    values = np.random.default_rng(0).integers(-2000, 2000, shape, dtype=np.int16)
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    opened: list[_CountedReads] = []
    real_open = Path.open

    def counted_open(self, *args, **kwargs):
        opened.append(_CountedReads(real_open(self, *args, **kwargs)))
        return opened[-1]

    layout = read_layout(path)
    monkeypatch.setattr(Path, "open", counted_open)
    rows = np.concatenate([block.copy() for _, block in iter_blocks(layout, 7)])
    monkeypatch.undo()
    np.testing.assert_array_equal(rows, values.reshape(-1, shape[3], order="F").T)
    (file,) = opened
    pieces = -(-path.stat().st_size // nifti_stream.GZIP_INPUT_BYTES)
    assert path.stat().st_size > 2 * nifti_stream.GZIP_INPUT_BYTES
    assert file.reads <= pieces + 2


def _write_large(path: Path, shape: tuple[int, ...], short_by: int = 0) -> int:
    """A uint16 image of zeros, written streaming; returns the bytes its header describes."""
    header = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint16), np.eye(4)).header
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint16)
    header["vox_offset"] = 352
    needed = 352 + int(np.prod(shape)) * 2
    chunk = bytes(64 * 2**20)
    with igzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        left = needed - 352 - short_by
        while left:
            left -= handle.write(chunk[: min(left, len(chunk))])
    return needed


def test_image_over_4_gib_uses_the_trailer_modulo_2_32(tmp_path, monkeypatch):
    root = _dataset(tmp_path)
    anat = root / "sub-01" / "anat"
    anat.mkdir()
    path = anat / "sub-01_T1w.nii.gz"
    needed = _write_large(path, (2048, 1024, 1025))
    assert needed > 2**32 and path.stat().st_size < 10 * 2**20
    with monkeypatch.context() as patch:  # the trailer agrees: nothing is decompressed
        patch.setattr(nifti_files, "gzip_stream_size", None)
        record = inspect_image(
            BidsFile(path, {"sub": "01"}, "anat", "T1w", ".nii.gz"), BidsIndex.build(root)
        )
    assert record["shape"] == [2048, 1024, 1025]
    assert gzip_stream_size(path) == needed
    _write_large(path, (2048, 1024, 1025), short_by=1)
    with pytest.raises(BidstrainError, match=r"holds 4299161951 bytes.*\(1 bytes of voxel"):
        check_complete(path, nib.load(path))


# ---- broken files -------------------------------------------------------------------


def test_image_one_byte_short_of_its_data_block_is_rejected(tmp_path):
    img = nib.load(FUNCTIONAL)
    raw = _raw_bytes(img, tmp_path)[:-1]
    root = _dataset(tmp_path)
    gz = _gzip_members(_bold_path(root), raw)
    with pytest.raises(BidstrainError, match=r"\(1 bytes of voxel data missing") as error:
        _inspect(gz)
    assert str(gz) in str(error.value)
    nii = _bold_path(root, ".nii")
    nii.write_bytes(raw)
    gz.unlink()
    with pytest.raises(BidstrainError, match=r"truncated NIfTI.*\(1 bytes of voxel data missing"):
        _inspect(nii)


def test_cut_and_corrupt_gzip_streams_are_rejected_saying_which(tmp_path):
    root = _dataset(tmp_path)
    path = _gzip_members(_bold_path(root), _raw_bytes(nib.load(FUNCTIONAL), tmp_path))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BidstrainError, match=r"cut short after \d+ decompressed bytes; \d+ bytes"):
        _inspect(path)
    path.write_bytes(whole[:-1])  # only the trailer is cut: the CRC cannot be checked
    with pytest.raises(BidstrainError, match="cut short"):
        _inspect(path)
    path.write_bytes(whole + b"not gzip")
    with pytest.raises(BidstrainError, match="corrupt .nii.gz: bytes that are not gzip data"):
        _inspect(path)
    corrupt = bytearray(whole)
    corrupt[-8] ^= 0xFF  # the CRC; with a second member the last trailer disagrees
    path.write_bytes(bytes(corrupt) + gzip.compress(b"\0" * 10))
    with pytest.raises(BidstrainError, match="(?s)sub-01: 1 invalid image.*fails its check"):
        ingest_images(root, "01", [str(path)])
    # when the trailer agrees, ingestion reads the header only; normalizing checks the CRC
    path.write_bytes(bytes(corrupt))
    assert _inspect(path)["n_volumes"] == 20
    with pytest.raises(BidstrainError, match="corrupt or truncated .nii.gz: .*CRC check failed"):
        normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none"))
    assert not (tmp_path / "r.zarr").exists()


# ---- voxel types, NIfTI-2, byte order, scaling ---------------------------------------


def _variant(kind: str, tmp_path: Path) -> nib.Nifti1Image:
    """functional.nii's values in another on-disk form (unsaved)."""
    source = nib.load(FUNCTIONAL)
    values = source.get_fdata()
    if kind == "int8":
        data = np.clip(np.rint((values - values.mean()) / 4), -128, 127).astype(np.int8)
    elif kind == "uint16":
        data = np.rint(values).astype(np.uint16)
    elif kind == "float64 big-endian":
        data = values.astype(">f8")
    elif kind == "nifti2":
        img = nib.Nifti2Image(values.astype(np.float32), source.affine)
        img.header.set_zooms(source.header.get_zooms())
        img.header.set_xyzt_units("mm", "sec")
        return img
    else:
        data = source.dataobj.get_unscaled()
    img = nib.Nifti1Image(data, source.affine, source.header)
    img.set_data_dtype(data.dtype)
    return img


@pytest.mark.parametrize("extension", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", ["int8", "uint16", "float64 big-endian", "nifti2", "scaled"])
def test_voxel_types_ingest_and_normalize_like_nibabel_reads_them(tmp_path, kind, extension):
    root = _dataset(tmp_path)
    path = _bold_path(root, extension)
    img = _variant(kind, tmp_path)
    nib.save(img, path)
    if kind == "scaled":  # stored int16 with the header's slope and intercept
        raw = bytearray(_raw_bytes(nib.load(path), tmp_path))
        raw[112:120] = struct.pack("<ff", 0.5, -1000.0)  # scl_slope, scl_inter
        (gzip.open if extension == ".nii.gz" else open)(path, "wb").write(bytes(raw))
    loaded = nib.load(path)
    layout = read_layout(path)
    assert layout.dtype == loaded.get_data_dtype()
    if kind == "scaled":
        assert (layout.slope, layout.inter) == (0.5, -1000.0)
    if kind == "nifti2":
        assert isinstance(loaded, nib.Nifti2Image)
    record = _inspect(path)
    assert record["dtype"] == str(loaded.get_data_dtype()) and record["n_volumes"] == 20
    normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none", block_volumes=3))
    np.testing.assert_allclose(_store_data(tmp_path / "r.zarr"), _zscored(loaded), atol=2e-5)


def test_rgb_image_is_a_clear_error_naming_file_and_subject(tmp_path):
    root = _dataset(tmp_path)
    path = _bold_path(root)
    rgb = np.zeros((4, 4, 4, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(
        BidstrainError, match=r"(?s)sub-01: 1 invalid image.*voxel type RGB"
    ) as error:
        ingest_images(root, "01", [str(path)])
    assert str(path) in str(error.value)
    with pytest.raises(BidstrainError, match=rf"sub-01: {path}: voxel type RGB"):
        read_layout(path, "01")


def test_the_planned_echo_and_part_are_the_images_ingested(tmp_path):
    """Multi-echo BOLD needs config ``echo``; the job validates the one image the plan
    keeps (the chosen echo, or the chosen part), not its other echoes or parts."""
    root = _dataset(tmp_path)
    func = root / "sub-01" / "func"
    for name in ["echo-1", "echo-2", "echo-3", "echo-1_part-phase"]:
        shutil.copy(FUNCTIONAL, func / f"sub-01_task-rest_{name}_bold.nii")
    with pytest.raises(BidstrainError, match="multi-echo.*echoes found: 1, 2, 3"):
        plan_of(root)
    for overrides, entity, value in (
        ({"echo": 2}, "echo", "2"),
        ({"part": "phase"}, "part", "phase"),
    ):
        (image,) = plan_of(root, **overrides).images["bold"]
        (record,) = ingest_images(root, "01", [str(image.path)])["images"]
        assert record["entities"][entity] == value
