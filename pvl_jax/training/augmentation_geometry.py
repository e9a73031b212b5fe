"""The patch geometry of nnU-Net's augmentation, for the host and the device.

numpy only: the input pipeline's worker processes import this to know how
large a patch to cut, and they never import JAX.

nnU-Net v2 (2.8.1, `nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_
inital_patch_size` and `data_augmentation/compute_initial_patch_size.py`)
cuts a patch larger than the training patch (its "initial patch size") so
that a rotated or scaled patch resampled from it keeps its borders filled,
and picks the rotation range from the patch shape:

* 3D: rotations up to 30 degrees about each axis; a patch more than
  `ANISO_THRESHOLD` times longer along its longest axis than along its
  shortest is augmented slice by slice ("dummy 2D": rotations up to 180
  degrees in the plane of the other two axes, scaling in that plane only,
  and the slice axis never enlarged or simulated at low resolution);
* 2D: rotations up to 180 degrees, 15 when the patch is more than 1.5
  times longer than wide.

nnU-Net's slice axis is its first axis, the coarsest after its transpose;
pvl_jax keeps the data's axis order, so the slice axis is the patch's
shortest axis (for an anisotropic plan, the coarse axis).
"""

from collections.abc import Sequence
import math

import ml_collections
import numpy as np

# nnunetv2.configuration.ANISO_THRESHOLD.
ANISO_THRESHOLD = 3.0
# get_patch_size enlarges for scaling down to 0.85 whatever the scaling range
# (nnU-Net keeps v1's constant; its own comment calls this not ideal).
INITIAL_PATCH_MIN_SCALE = 0.85
# get_patch_size caps each rotation at 90 degrees.
_MAX_ENLARGING_ROTATION = math.pi / 2


def slice_axis(patch_size: Sequence[int]) -> int | None:
  """The axis a 3D patch is augmented across slice by slice, else None."""
  if len(patch_size) != 3 or max(patch_size) / min(patch_size) <= (
      ANISO_THRESHOLD):
    return None
  return int(np.argmin(patch_size))


def default_rotation_deg(patch_size: Sequence[int]) -> float:
  """nnU-Net's rotation range (+- degrees) for a patch shape."""
  if len(patch_size) == 2:
    return 15.0 if max(patch_size) / min(patch_size) > 1.5 else 180.0
  return 30.0 if slice_axis(patch_size) is None else 180.0


def rotation_deg(patch_size: Sequence[int],
                 nnunet: ml_collections.ConfigDict) -> float:
  """`augment.nnunet.rotation_max_deg`, or nnU-Net's rule when unset."""
  value = nnunet.rotation_max_deg
  return default_rotation_deg(patch_size) if value is None else float(value)


def _axis_rotations(angle: float) -> list[np.ndarray]:
  """batchgenerators' rotation matrices about x, y and z."""
  c, s = math.cos(angle), math.sin(angle)
  return [np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
          np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
          np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])]


def initial_patch_size(patch_size: Sequence[int], rotation_rad: float,
                       min_scale: float = INITIAL_PATCH_MIN_SCALE
                       ) -> np.ndarray:
  """nnU-Net's `get_patch_size`: the patch's extent after each rotation.

  Each axis gets the largest extent of the patch's corner vector rotated
  about one axis at a time (not their composition), divided by the
  smallest scale.

  Args:
    patch_size: the training patch (2 or 3 axes).
    rotation_rad: the largest rotation; capped at 90 degrees.
    min_scale: the smallest scaling factor the enlargement allows for.

  Returns:
    The enlarged size per axis (integers, truncated as nnU-Net does).
  """
  angle = min(abs(rotation_rad), _MAX_ENLARGING_ROTATION)
  coords = np.asarray(patch_size, np.float64)
  if len(coords) == 3:
    rotations = _axis_rotations(angle)
  else:
    c, s = math.cos(angle), math.sin(angle)
    rotations = [np.array([[c, -s], [s, c]])]
  final = coords.copy()
  for rotation in rotations:  # row vector times matrix, as batchgenerators
    final = np.maximum(final, np.abs(coords @ rotation))
  return (final / min_scale).astype(int)


def spatial_enabled(nnunet: ml_collections.ConfigDict) -> bool:
  """Whether rotation or scaling may be drawn (the patch is then enlarged)."""
  return nnunet.rotation_prob > 0 or nnunet.scaling_prob > 0


def input_patch_size(data_config: ml_collections.ConfigDict
                     ) -> tuple[int, ...]:
  """The patch the host cuts; the train step resamples it to patch_size.

  With the nnU-Net recipe and rotation or scaling switched on, nnU-Net's
  initial patch size, grown by a voxel where needed so that it exceeds the
  patch by an even number of voxels on every axis: the patch is then its
  exact centre, and an unrotated, unscaled sample is an exact crop. Else
  `data.patch_size` itself.

  Args:
    data_config: `config.data` (patch_size, augment).
  """
  patch = tuple(int(p) for p in data_config.patch_size)
  augment = data_config.augment
  if augment.recipe != "nnunet" or not spatial_enabled(augment.nnunet):
    return patch
  nnunet = augment.nnunet
  angle = (math.radians(rotation_deg(patch, nnunet))
           if nnunet.rotation_prob > 0 else 0.0)
  enlarged = np.maximum(initial_patch_size(patch, angle), patch)
  enlarged += (enlarged - patch) % 2
  axis = slice_axis(patch)
  if axis is not None:
    enlarged[axis] = patch[axis]
  return tuple(int(s) for s in enlarged)
