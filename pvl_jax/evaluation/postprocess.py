"""Postprocessing: remove connected components below a minimum size.

The minimum size is chosen on the validation split (the candidate with the
best mean Dice; ties go to the smaller size, i.e. less postprocessing) and
then applied unchanged to the test split, never tuned on it.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pvl_jax.evaluation import segmentation

# Candidate minimum component sizes in voxels (0 = no postprocessing).
CANDIDATES = (0, 2, 4, 8, 16, 32)


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
  """`mask` without its 26-connected components smaller than `min_voxels`."""
  if min_voxels <= 1 or not mask.any():
    return mask
  labels, count = ndimage.label(mask, np.ones((3,) * mask.ndim))
  sizes = np.bincount(labels.ravel(), minlength=count + 1)
  keep = sizes >= min_voxels
  keep[0] = False
  return keep[labels]


def choose_min_size(predictions: Sequence[np.ndarray],
                    references: Sequence[np.ndarray],
                    candidates: Sequence[int] = CANDIDATES) -> int:
  """The candidate size with the best mean Dice over validation subjects."""
  best_size, best_dice = 0, -1.0
  for size in sorted(candidates):
    dice = np.mean([segmentation.dice(remove_small_components(p, size), r)
                    for p, r in zip(predictions, references)])
    if dice > best_dice + 1e-12:
      best_size, best_dice = size, dice
  return best_size
