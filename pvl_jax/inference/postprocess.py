"""Postprocessing of predicted masks: remove small or surface components.

Two rules, each chosen on a run's validation split
(`pvl_jax.evaluation.postprocess_choice`) and applied unchanged to its test
split and to new scans: a component smaller than a minimum volume is removed
(`remove_small_components`), and so is a component lying wholly within a
shell at the brain's outer surface (`remove_surface_components`).
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from preprocessing import lesion_labels


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
  """`mask` without its 26-connected components smaller than `min_voxels`."""
  if min_voxels <= 1 or not mask.any():
    return mask
  labels, count = lesion_labels.components(mask)
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  keep = sizes >= min_voxels
  keep[0] = False
  return keep[labels]


def brain_depth(brain: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
  """Each brain voxel's distance (mm) to the nearest voxel outside the brain.

  The volume is padded with background first: a record is cropped to its
  brain, so the brain touches every face of the array, and the outside
  beyond a face counts as outside.
  """
  padded = np.pad(np.asarray(brain, bool), 1)
  depth = ndimage.distance_transform_edt(padded, sampling=tuple(spacing))
  return depth[(slice(1, -1),) * depth.ndim].astype(np.float32)


def remove_surface_components(mask: np.ndarray, depth: np.ndarray,
                              min_depth_mm: float) -> np.ndarray:
  """`mask` without its components that never reach `min_depth_mm` deep.

  Args:
    mask: the predicted lesion mask (inside the brain).
    depth: `brain_depth` of the brain mask on the same grid.
    min_depth_mm: a component is kept only if some voxel of it lies at
      least this deep in the brain; 0: every component is kept.
  """
  if min_depth_mm <= 0 or not mask.any():
    return mask
  labels, count = lesion_labels.components(mask)
  deepest = ndimage.maximum(depth, labels, index=np.arange(1, count + 1))
  keep = np.concatenate([[False], np.asarray(deepest) >= min_depth_mm])
  return keep[labels]
