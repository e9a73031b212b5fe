"""Tests for preprocessing.io.nifti: broken files are rejected clearly."""

import gzip
import hashlib
import io
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing.io import nifti
from preprocessing.io.errors import InputError

AFFINE = np.array([[-1.5, 0.0, 0.0, 90.0],
                   [0.0, 2.0, 0.0, -126.0],
                   [0.0, 0.0, 2.5, -72.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _volume(shape=(4, 4, 4)) -> np.ndarray:
  return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
  """Writes with plain nibabel, independently of the code under test."""
  nib.save(nib.Nifti1Image(data, affine), path)
  return path


def _write_with_header(path: Path, **fields) -> Path:
  """Writes a good 4x4x4 .nii, then overwrites raw header fields."""
  raw = bytearray(nib.Nifti1Image(_volume(), AFFINE).to_bytes())
  header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
  for name, value in fields.items():
    header[name] = value
  raw[:348] = header.binaryblock
  path.write_bytes(bytes(raw))
  return path


def _digest(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_rejected(path: Path, *words: str, **kwargs) -> str:
  """Loading fails with a message naming `path` and `words`; file unchanged."""
  before = _digest(path) if path.exists() else None
  with pytest.raises(InputError) as info:
    nifti.load_volume(path, **kwargs)
  message = str(info.value)
  assert message.startswith(f"{path}: ")
  for word in words:
    assert word.lower() in message.lower(), message
  if before is not None:
    assert _digest(path) == before
  return message


def test_missing_file(tmp_path):
  _assert_rejected(tmp_path / "absent.nii.gz", "not found")


def test_wrong_extension(tmp_path):
  path = tmp_path / "scan.mgz"
  path.write_bytes(b"x" * 400)
  _assert_rejected(path, "expected .nii or .nii.gz")


def test_truncated_gzip(tmp_path):
  # Random voxels do not compress, so the first half still holds the header
  # and the truncation hits the voxel data.
  data = np.random.default_rng(0).standard_normal((16, 16, 16))
  good = _write(tmp_path / "good.nii.gz", data.astype(np.float32))
  compressed = good.read_bytes()
  path = tmp_path / "truncated.nii.gz"
  path.write_bytes(compressed[:len(compressed) // 2])
  _assert_rejected(path, "truncated gzip")


def test_corrupt_gzip_checksum(tmp_path):
  good = _write(tmp_path / "good.nii.gz", _volume())
  corrupt = bytearray(good.read_bytes())
  corrupt[-8] ^= 0xFF  # First byte of the CRC32 trailer.
  path = tmp_path / "corrupt.nii.gz"
  path.write_bytes(bytes(corrupt))
  _assert_rejected(path, "corrupt gzip")


def test_truncated_uncompressed_data(tmp_path):
  good = _write(tmp_path / "good.nii", _volume())
  path = tmp_path / "truncated.nii"
  path.write_bytes(good.read_bytes()[:400])
  _assert_rejected(path, "truncated voxel data")


def test_truncated_header(tmp_path):
  good = _write(tmp_path / "good.nii", _volume())
  path = tmp_path / "short.nii"
  path.write_bytes(good.read_bytes()[:200])
  _assert_rejected(path, "truncated NIfTI header")


def test_random_bytes(tmp_path):
  path = tmp_path / "random.nii"
  path.write_bytes(np.random.default_rng(1).bytes(1000))
  _assert_rejected(path, "not a NIfTI file")


def test_text_file_named_nii_gz(tmp_path):
  path = tmp_path / "notes.nii.gz"
  path.write_text("subject moved during the scan\n")
  _assert_rejected(path, "not gzip-compressed")


def test_gzip_of_junk(tmp_path):
  path = tmp_path / "junk.nii.gz"
  path.write_bytes(gzip.compress(np.random.default_rng(2).bytes(1000)))
  _assert_rejected(path, "not a NIfTI file")


def test_bad_magic(tmp_path):
  path = _write_with_header(tmp_path / "magic.nii", magic=b"xyz")
  _assert_rejected(path, "bad magic")


def test_absurd_dims(tmp_path):
  path = _write_with_header(tmp_path / "huge.nii", dim=[7] + [32767] * 7)
  _assert_rejected(path, "absurd dimensions")


@pytest.mark.parametrize("dim", [[9, 4, 4, 4, 1, 1, 1, 1],
                                 [3, 4, 0, 4, 1, 1, 1, 1],
                                 [3, 4, -4, 4, 1, 1, 1, 1]])
def test_invalid_dims(tmp_path, dim):
  path = _write_with_header(tmp_path / "dims.nii", dim=dim)
  _assert_rejected(path, "corrupt header")


@pytest.mark.parametrize("size", [0.0, -2.0, np.nan, np.inf])
def test_invalid_voxel_size(tmp_path, size):
  path = _write_with_header(tmp_path / "pixdim.nii",
                            pixdim=[1.0, 1.0, size, 1.0, 1.0, 1.0, 1.0, 1.0])
  _assert_rejected(path, "voxel sizes", "positive")


def test_nan_affine(tmp_path):
  path = _write_with_header(tmp_path / "nan_affine.nii",
                            srow_x=[np.nan, 0.0, 0.0, 0.0])
  _assert_rejected(path, "affine", "non-finite")


def test_singular_affine(tmp_path):
  path = _write_with_header(tmp_path / "flat.nii", srow_z=[0.0, 0.0, 0.0, 0.0])
  _assert_rejected(path, "affine", "singular")


@pytest.mark.parametrize("shape, words", [
    ((4, 4, 4, 2), ("expected a 3D image", "4D")),
    ((4, 4, 4, 1, 2), ("5D",)),
    ((4, 4), ("2D",)),
])
def test_wrong_dimensionality(tmp_path, shape, words):
  path = _write(tmp_path / "vol.nii.gz", _volume(shape))
  _assert_rejected(path, *words)


def test_trailing_singleton_is_squeezed(tmp_path):
  path = _write(tmp_path / "vol.nii.gz", _volume((4, 4, 4, 1)))
  data, _ = nifti.load_volume(path)
  np.testing.assert_array_equal(data, _volume())


def test_channels_load_as_last_axis(tmp_path):
  four_d = _volume((4, 4, 4, 2))
  data, affine = nifti.load_channels(
      _write(tmp_path / "two.nii.gz", four_d), 2)
  np.testing.assert_array_equal(data, four_d)
  np.testing.assert_allclose(affine, AFFINE)
  data, _ = nifti.load_channels(_write(tmp_path / "one.nii.gz", _volume()),
                                   1)
  np.testing.assert_array_equal(data, _volume()[..., None])


@pytest.mark.parametrize("shape, channels, words", [
    ((4, 4, 4), 2, ("expected a 4D FLAIR/T1w image of 2 volumes", "3D")),
    ((4, 4, 4, 3), 2, ("of 2 volumes", "shape (4, 4, 4, 3)")),
    ((4, 4, 4, 2), 1, ("expected a 3D FLAIR/T1w image volume", "4D")),
])
def test_wrong_number_of_channels(tmp_path, shape, channels, words):
  path = _write(tmp_path / "vol.nii.gz", _volume(shape))
  with pytest.raises(InputError) as info:
    nifti.load_channels(path, channels, kind="FLAIR/T1w image")
  assert str(info.value).startswith(f"{path}: ")
  for word in words:
    assert word in str(info.value)


def test_rgb_rejected(tmp_path):
  rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
  path = _write(tmp_path / "rgb.nii", rgb)
  _assert_rejected(path, "RGB")


def test_complex_rejected(tmp_path):
  path = _write(tmp_path / "complex.nii", np.ones((4, 4, 4), np.complex64))
  _assert_rejected(path, "complex64", "not a real number")


def test_nan_voxels_counted(tmp_path):
  data = _volume()
  data[0, 0, :3] = np.nan
  data[1, 1, 1] = np.inf
  path = _write(tmp_path / "nan.nii.gz", data)
  _assert_rejected(path, "lesion mask", "3 NaN", "1 infinite",
                   kind="lesion mask")


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_save_load_round_trip(tmp_path, name):
  data = np.random.default_rng(3).standard_normal((5, 6, 7)).astype(np.float32)
  path = tmp_path / name
  nifti.save_nifti(data, AFFINE, path, np.float32)
  loaded, affine = nifti.load_volume(path)
  assert loaded.dtype == np.float32 and affine.dtype == np.float64
  np.testing.assert_array_equal(loaded, data)
  np.testing.assert_array_equal(affine, AFFINE)


def test_loads_nifti2(tmp_path):
  path = tmp_path / "vol.nii"
  nib.save(nib.Nifti2Image(_volume(), AFFINE), path)
  data, affine = nifti.load_volume(path)
  np.testing.assert_array_equal(data, _volume())
  np.testing.assert_array_equal(affine, AFFINE)


def test_save_is_deterministic_and_atomic(tmp_path, monkeypatch):
  data = _volume()
  first, second = tmp_path / "a.nii.gz", tmp_path / "b" / "other.nii.gz"
  nifti.save_nifti(data, AFFINE, first, np.int16)
  # A later clock would change the gzip mtime field if it were not fixed.
  later = time.time() + 1e6
  monkeypatch.setattr(time, "time", lambda: later)
  nifti.save_nifti(data, AFFINE, second, np.int16)
  assert first.read_bytes() == second.read_bytes()
  assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime.
  # No temporary files left beside the outputs.
  assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
      "a.nii.gz", "other.nii.gz"]


def test_save_rejects_lossy_integer_cast(tmp_path):
  with pytest.raises(ValueError, match="exactly as uint8"):
    nifti.save_nifti(np.full((2, 2, 2), 0.5), AFFINE,
                        tmp_path / "mask.nii.gz", np.uint8)
  assert not list(tmp_path.iterdir())


def _save_mask(path: Path, data, affine=AFFINE) -> Path:
  nifti.save_nifti(np.asarray(data), affine, path, np.float32)
  return path


def test_mask_loads_as_bool(tmp_path):
  mask = np.zeros((4, 4, 4))
  mask[1:3, 1:3, 1:3] = 1
  path = _save_mask(tmp_path / "mask.nii.gz", mask)
  loaded = nifti.load_mask(path, reference_shape=(4, 4, 4),
                              reference_affine=AFFINE + 1e-4)
  assert loaded.dtype == bool
  np.testing.assert_array_equal(loaded, mask == 1)


def test_mask_shape_mismatch(tmp_path):
  path = _save_mask(tmp_path / "mask.nii.gz", np.zeros((4, 4, 5)))
  reference = tmp_path / "flair.nii.gz"
  with pytest.raises(InputError) as info:
    nifti.load_mask(path, reference_shape=(4, 4, 4),
                       reference_affine=AFFINE, reference_path=reference)
  message = str(info.value)
  assert message.startswith(f"{path}: shape (4, 4, 5)")
  assert f"(4, 4, 4) of {reference}" in message


def test_mask_affine_mismatch(tmp_path):
  path = _save_mask(tmp_path / "mask.nii.gz", np.zeros((4, 4, 4)))
  reference = tmp_path / "flair.nii.gz"
  shifted = AFFINE.copy()
  shifted[0, 3] += 0.5
  with pytest.raises(InputError) as info:
    nifti.load_mask(path, reference_shape=(4, 4, 4),
                       reference_affine=shifted, reference_path=reference)
  message = str(info.value)
  assert message.startswith(f"{path}: affine differs")
  assert str(reference) in message and "0.5 mm" in message
  assert "90.5" in message  # The reference's translation is shown too.


def test_check_same_geometry_names_both_files(tmp_path):
  flair, t1 = tmp_path / "flair.nii.gz", tmp_path / "t1.nii.gz"
  nifti.check_same_geometry(flair, (4, 4, 4), AFFINE, t1, (4, 4, 4),
                               AFFINE + 5e-4)
  # The tolerance is absolute millimetres, not relative to the translation.
  shifted = AFFINE.copy()
  shifted[0, 3] += 1.5e-3
  with pytest.raises(InputError, match="affine"):
    nifti.check_same_geometry(flair, (4, 4, 4), AFFINE, t1, (4, 4, 4),
                                 shifted)
  with pytest.raises(InputError, match="shape") as info:
    nifti.check_same_geometry(flair, (4, 4, 4), AFFINE, t1, (4, 4, 3),
                                 AFFINE)
  assert str(info.value).startswith(f"{t1}: ") and str(flair) in str(info.value)


def test_mask_not_binary(tmp_path):
  mask = np.zeros((4, 4, 4))
  mask.flat[:8] = [1, 2, 3, 4, 5, 6, 7, 255]
  path = _save_mask(tmp_path / "labels.nii.gz", mask)
  before = _digest(path)
  with pytest.raises(InputError) as info:
    nifti.load_mask(path)
  message = str(info.value)
  assert message.startswith(f"{path}: mask is not binary")
  assert "2, 3, 4, 5, 6 and 2 more" in message
  assert "threshold" in message
  assert _digest(path) == before


def test_mask_threshold_binarises_probabilities(tmp_path):
  probabilities = np.linspace(0.0, 1.0, 64).reshape(4, 4, 4)
  path = _save_mask(tmp_path / "prob.nii.gz", probabilities)
  mask = nifti.load_mask(path, threshold=0.5)
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask, probabilities.astype(np.float32) >= 0.5)
  assert 0 < mask.sum() < mask.size


def test_mask_load_errors_say_mask(tmp_path):
  mask = np.zeros((4, 4, 4), np.float32)
  mask[0, 0, 0] = np.nan
  path = _write(tmp_path / "mask.nii.gz", mask)
  with pytest.raises(InputError, match=r"mask has 1 NaN"):
    nifti.load_mask(path)
