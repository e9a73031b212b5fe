"""Choosing the postprocessing's minimum component size on validation.

The minimum size is chosen on the validation split (the candidate with the
best mean Dice; ties go to the smaller size, i.e. less postprocessing) and
then applied unchanged to the test split, never tuned on it.
"""

from collections.abc import Sequence

import numpy as np

from pvl_jax.evaluation import segmentation
from pvl_jax.inference.postprocess import remove_small_components

# Candidate minimum component sizes in voxels (0 = no postprocessing).
CANDIDATES = (0, 2, 4, 8, 16, 32)


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
