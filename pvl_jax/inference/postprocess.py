"""Postprocessing of predicted masks: remove small connected components.

The minimum size is chosen on a run's validation split
(`pvl_jax.evaluation.postprocess_choice`) and applied unchanged to its test
split and to new scans.
"""

import numpy as np
from scipy import ndimage


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
  """`mask` without its 26-connected components smaller than `min_voxels`."""
  if min_voxels <= 1 or not mask.any():
    return mask
  labels, count = ndimage.label(mask, np.ones((3,) * mask.ndim))
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  keep = sizes >= min_voxels
  keep[0] = False
  return keep[labels]
