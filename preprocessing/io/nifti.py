"""Validated NIfTI loading and deterministic, atomic NIfTI saving.

Research scans arrive truncated, mislabelled, with corrupt headers or with
NaN voxels. nibabel either raises low-level errors for these (zlib, EOF,
numpy) or, worse, silently "fixes" the header (for example it replaces zero
or negative voxel sizes by positive ones) or never notices (it stops
decompressing before the gzip checksum). The loaders here therefore
decompress and parse the header themselves, check everything before the
data is used, and turn every problem into an `InputError` whose message
starts with the file path.
"""

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from preprocessing.io.atomic import atomic_write_bytes
from preprocessing.io.errors import InputError

# Header sizes (the `sizeof_hdr` field) of the two NIfTI versions.
_IMAGE_CLASSES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
# More voxels than this means a corrupt header, not a brain scan (a 1024^3
# volume is already far beyond any MRI), and would exhaust memory.
MAX_VOXELS = 2**31
# Voxel data types that are plain real numbers (bool, int, uint, float).
_REAL_KINDS = "biuf"
# Affines whose 3x3 part is this ill-conditioned map voxels onto a plane.
_MAX_AFFINE_CONDITION = 1e8
# Masks and images are in the same space if their affines agree to this
# many millimetres (float32 header storage loses about 1e-5 mm).
AFFINE_ATOL_MM = 1e-3
# nibabel's own choice: fast, and NIfTI volumes compress poorly beyond it.
_GZIP_LEVEL = 1


def load_volume(path: str | os.PathLike, *, kind: str = "image"
                ) -> tuple[np.ndarray, np.ndarray]:
  """Loads a 3D NIfTI volume after checking that it is sane.

  Args:
    path: a .nii or .nii.gz file.
    kind: what the volume is ("image", "lesion mask", ...), used in messages.

  Returns:
    (data, affine): float32 voxels in the file's own voxel order (a trailing
    singleton dimension is squeezed away) and the 4x4 float64 voxel-to-world
    affine as nibabel's `img.affine` gives it (sform, else qform).

  Raises:
    InputError: the file is missing, not a readable NIfTI, not a 3D numeric
      volume, has invalid voxel sizes or affine, or contains NaN/Inf voxels.
  """
  data, affine = _load(Path(path), kind, channels=1)
  return data[..., 0], affine


def load_channels(path: str | os.PathLike, channels: int, *,
                  kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
  """Loads a scan of `channels` co-registered volumes (one per modality).

  One channel is a 3D volume (as `load_volume`), several are the volumes of
  a 4D file along its fourth axis.

  Args:
    path: a .nii or .nii.gz file.
    channels: the number of volumes expected.
    kind: what the scan is, used in messages.

  Returns:
    (data, affine): float32 voxels (X, Y, Z, channels) and the affine, as
    `load_volume` returns them.

  Raises:
    InputError: as `load_volume`, or the file holds another number of
      volumes.
  """
  return _load(Path(path), kind, channels)


def _load(path: Path, kind: str, channels: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """Checks and loads a file of `channels` volumes as (X, Y, Z, channels)."""
  raw = _read_nifti_bytes(path)
  image_class, header = _parse_header(path, raw)
  shape = _check_header(path, header, kind, channels)
  _check_data_length(path, header, len(raw))
  try:
    img = image_class.from_bytes(raw)
    affine = np.array(img.affine, dtype=np.float64)
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(
        shape[:3] + (channels,))
  except (ImageFileError, HeaderDataError, EOFError, zlib.error, OSError,
          ValueError) as err:
    raise InputError(f"{path}: unreadable NIfTI {kind} ({err})") from err
  _check_affine(path, affine)
  _check_finite(path, data, kind)
  return data, affine


def load_mask(path: str | os.PathLike, *,
              reference_shape: tuple[int, ...] | None = None,
              reference_affine: np.ndarray | None = None,
              reference_path: str | os.PathLike | None = None,
              threshold: float | None = None) -> np.ndarray:
  """Loads a binary mask, optionally checking it matches a reference image.

  Args:
    path: a .nii or .nii.gz mask.
    reference_shape: if given, the mask must have exactly this shape.
    reference_affine: if given, the mask's affine must match it to within
      AFFINE_ATOL_MM.
    reference_path: the reference image, named in mismatch messages.
    threshold: None means the mask must already contain only 0 and 1;
      otherwise voxels >= threshold are foreground (for masks stored as
      probabilities or label maps).

  Returns:
    A bool array in the file's voxel order.

  Raises:
    InputError: the file is unreadable (see `load_volume`), does not match
      the reference, or is not binary when no threshold is given.
  """
  data, affine = load_volume(path, kind="mask")
  if reference_shape is not None:
    _check_shape(reference_path, reference_shape, path, data.shape)
  if reference_affine is not None:
    _check_affine_match(reference_path, reference_affine, path, affine)
  return mask_values(path, data, threshold)


def mask_values(path: str | os.PathLike, data: np.ndarray,
                threshold: float | None = None) -> np.ndarray:
  """The foreground of a mask's voxels `data` (as `load_mask` reads it).

  Raises:
    InputError: naming `path`: not binary when no threshold is given.
  """
  if threshold is not None:
    return data >= threshold
  _check_binary(path, data)
  return data == 1


def check_same_geometry(reference_path: str | os.PathLike | None,
                        reference_shape: tuple[int, ...],
                        reference_affine: np.ndarray,
                        path: str | os.PathLike, shape: tuple[int, ...],
                        affine: np.ndarray) -> None:
  """Checks that two volumes share a voxel grid (shape and affine).

  Args:
    reference_path: the volume compared against (None: "the reference").
    reference_shape: its shape.
    reference_affine: its affine.
    path: the volume being checked, named first in messages.
    shape: its shape.
    affine: its affine.

  Raises:
    InputError: naming both files and both differing values.
  """
  _check_shape(reference_path, reference_shape, path, shape)
  _check_affine_match(reference_path, reference_affine, path, affine)


def save_nifti(data: np.ndarray, affine: np.ndarray,
               path: str | os.PathLike, dtype: npt.DTypeLike) -> None:
  """Writes a NIfTI-1 file atomically and byte-deterministically.

  Identical inputs give identical bytes: the gzip header carries neither a
  timestamp (mtime is 0) nor a file name, so outputs can be compared by hash
  and rebuilt reproducibly.

  Args:
    data: the voxels.
    affine: 4x4 voxel-to-world affine (written as sform, mm units).
    path: destination ending in .nii or .nii.gz.
    dtype: on-disk voxel type; integer types must hold `data` exactly.

  Raises:
    ValueError: bad file name, or data that would change when cast.
  """
  path = Path(path)
  array = np.asarray(data)
  stored = array.astype(dtype)
  # A silent float->int cast would truncate intensities or wrap labels.
  if stored.dtype.kind in "iu" and not np.array_equal(stored, array):
    raise ValueError(f"{path}: data cannot be stored exactly as {stored.dtype}")
  img = nib.Nifti1Image(stored, np.asarray(affine, dtype=np.float64),
                        dtype=stored.dtype)
  img.header.set_xyzt_units("mm")
  payload = img.to_bytes()
  if path.name.endswith(".nii.gz"):
    payload = gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
  elif not path.name.endswith(".nii"):
    raise ValueError(f"{path}: file name must end in .nii or .nii.gz")
  atomic_write_bytes(path, payload)


def _read_nifti_bytes(path: Path) -> bytes:
  """Returns the uncompressed file contents, checking name and gzip stream."""
  if not path.exists():
    raise InputError(f"{path}: file not found")
  if not path.is_file():
    raise InputError(f"{path}: not a regular file")
  if not path.name.endswith((".nii", ".nii.gz")):
    raise InputError(f"{path}: not a NIfTI file name (expected .nii or "
                     ".nii.gz)")
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise InputError(f"{path}: cannot be read ({err.strerror})") from err
  if not path.name.endswith(".gz"):
    return raw
  if not raw.startswith(b"\x1f\x8b"):
    raise InputError(f"{path}: not gzip-compressed although named .nii.gz")
  # Decompressing the whole stream here (rather than letting nibabel stop
  # after the voxels) verifies the gzip checksum, so corruption is caught.
  try:
    return gzip.decompress(raw)
  except EOFError as err:
    raise InputError(f"{path}: truncated gzip stream (the file is incomplete;"
                     " was the download or copy interrupted?)") from err
  except (OSError, zlib.error) as err:
    raise InputError(f"{path}: corrupt gzip data ({err})") from err


def _parse_header(path: Path, raw: bytes
                  ) -> tuple[type[nib.Nifti1Image], nib.Nifti1Header]:
  """Identifies NIfTI-1/2 from the header size field and parses the header.

  The header is parsed without nibabel's automatic fixes, so the checks see
  what is really in the file.
  """
  if len(raw) < 4:
    raise InputError(f"{path}: not a NIfTI file (only {len(raw)} bytes)")
  for endianness in ("<", ">"):
    (sizeof_hdr,) = struct.unpack(endianness + "i", raw[:4])
    if sizeof_hdr in _IMAGE_CLASSES:
      break
  else:
    raise InputError(f"{path}: not a NIfTI file (header size field is not "
                     "348 or 540)")
  if len(raw) < sizeof_hdr:
    raise InputError(f"{path}: truncated NIfTI header ({len(raw)} of "
                     f"{sizeof_hdr} bytes)")
  image_class = _IMAGE_CLASSES[sizeof_hdr]
  header_class = image_class.header_class
  try:
    header = header_class.from_fileobj(io.BytesIO(raw), endianness=endianness,
                                       check=False)
  except (HeaderDataError, ValueError, EOFError) as err:
    # E.g. header extensions whose sizes run past the end of the file.
    raise InputError(f"{path}: corrupt NIfTI header ({err})") from err
  magic = header["magic"].item()
  if magic == header_class.pair_magic:
    raise InputError(f"{path}: header of a .hdr/.img pair, not a single-file"
                     " NIfTI")
  if magic != header_class.single_magic:
    raise InputError(f"{path}: not a NIfTI file (bad magic string {magic!r})")
  return image_class, header


def _check_header(path: Path, header: nib.Nifti1Header, kind: str,
                  channels: int) -> tuple[int, ...]:
  """Checks dimensions, data type and voxel sizes; returns the shape.

  The shape is 3D for one channel, else 4D with `channels` volumes.
  """
  dim = [int(d) for d in header["dim"]]
  ndim = dim[0]
  if not 1 <= ndim <= 7:
    raise InputError(f"{path}: corrupt header: number of dimensions (dim[0])"
                     f" is {ndim}, must be 1 to 7")
  shape = tuple(dim[1:ndim + 1])
  if min(shape) <= 0:
    raise InputError(f"{path}: corrupt header: non-positive dimension sizes "
                     f"{shape}")
  if math.prod(shape) > MAX_VOXELS:
    raise InputError(f"{path}: corrupt header: absurd dimensions {shape} "
                     f"(more than {MAX_VOXELS} voxels)")
  # Several channels are the volumes along a 4th axis.
  wanted_ndim = 3 if channels == 1 else 4
  squeezed = _squeeze_trailing(shape, wanted_ndim)
  if len(squeezed) != wanted_ndim or squeezed[3:4] not in ((), (channels,)):
    wanted = (f"a 3D {kind} volume" if channels == 1 else
              f"a 4D {kind} of {channels} volumes (one per channel)")
    raise InputError(f"{path}: expected {wanted}, got {len(squeezed)}D data "
                     f"of shape {shape}")
  try:
    dtype = header.get_data_dtype()
  except KeyError:
    raise InputError(f"{path}: unknown voxel data type code "
                     f"{int(header['datatype'])}") from None
  if dtype.kind not in _REAL_KINDS:
    raise InputError(f"{path}: voxel data type {dtype} is not a real number "
                     "type (RGB and complex images are not supported)")
  voxel_sizes = np.asarray(header["pixdim"][1:4], dtype=np.float64)
  if not np.all(np.isfinite(voxel_sizes)) or np.any(voxel_sizes <= 0):
    raise InputError(f"{path}: invalid voxel sizes (pixdim) "
                     f"{voxel_sizes.tolist()}: must be finite and positive")
  return squeezed


def _squeeze_trailing(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
  """Drops trailing size-1 dimensions beyond `ndim` ((x,y,z,1) -> 3D)."""
  while len(shape) > ndim and shape[-1] == 1:
    shape = shape[:-1]
  return shape


def _check_data_length(path: Path, header: nib.Nifti1Header,
                       num_bytes: int) -> None:
  """Checks the file holds all the voxels the header promises."""
  # vox_offset is a float in NIfTI-1: NaN or Inf would crash int().
  vox_offset = float(header["vox_offset"])
  if not (math.isfinite(vox_offset) and vox_offset >= 0):
    raise InputError(f"{path}: corrupt header: voxel data offset (vox_offset)"
                     f" is {vox_offset}")
  offset = int(vox_offset)
  needed = math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize
  if num_bytes < offset + needed:
    raise InputError(f"{path}: truncated voxel data ({num_bytes - offset} of "
                     f"{needed} bytes present)")


def _check_affine(path: Path, affine: np.ndarray) -> None:
  """Rejects non-finite or (near-)singular voxel-to-world affines."""
  if not np.all(np.isfinite(affine)):
    raise InputError(f"{path}: affine (sform/qform) has non-finite values:\n"
                     f"{affine}")
  if np.linalg.cond(affine[:3, :3]) > _MAX_AFFINE_CONDITION:
    raise InputError(f"{path}: affine (sform/qform) is singular:\n{affine}")


def _check_finite(path: Path, data: np.ndarray, kind: str) -> None:
  """Rejects NaN/Inf voxels, reporting how many there are."""
  num_nan = int(np.count_nonzero(np.isnan(data)))
  num_inf = int(np.count_nonzero(np.isinf(data)))
  if num_nan or num_inf:
    raise InputError(f"{path}: {kind} has {num_nan} NaN and {num_inf} "
                     f"infinite voxels (of {data.size})")


def _check_shape(reference_path: str | os.PathLike | None,
                 reference_shape: tuple[int, ...], path: str | os.PathLike,
                 shape: tuple[int, ...]) -> None:
  if tuple(shape) != tuple(reference_shape):
    raise InputError(f"{path}: shape {tuple(shape)} differs from shape "
                     f"{tuple(reference_shape)} of "
                     f"{reference_path or 'the reference'}")


def _check_affine_match(reference_path: str | os.PathLike | None,
                        reference_affine: np.ndarray, path: str | os.PathLike,
                        affine: np.ndarray) -> None:
  # rtol=0 so the tolerance is in millimetres regardless of the translation.
  if not np.allclose(affine, reference_affine, rtol=0, atol=AFFINE_ATOL_MM):
    difference = np.max(np.abs(np.asarray(affine) - reference_affine))
    raise InputError(
        f"{path}: affine differs from that of "
        f"{reference_path or 'the reference'} by up to {difference:.4g} mm "
        f"(not in the same space):\n{np.asarray(affine)}\nvs\n"
        f"{np.asarray(reference_affine)}")


def _check_binary(path: str | os.PathLike, data: np.ndarray) -> None:
  """Rejects masks with values other than 0 and 1, listing some of them."""
  values = np.unique(data)
  unexpected = values[(values != 0) & (values != 1)]
  if unexpected.size:
    shown = ", ".join(f"{v:g}" for v in unexpected[:5])
    more = f" and {unexpected.size - 5} more" if unexpected.size > 5 else ""
    raise InputError(f"{path}: mask is not binary: unexpected values {shown}"
                     f"{more} (only 0 and 1 allowed); set a binarisation "
                     "threshold (mask >= threshold) if it stores "
                     "probabilities or labels")
