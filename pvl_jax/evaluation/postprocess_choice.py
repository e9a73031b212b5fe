"""Choosing the postprocessing's minimum lesion size on validation.

Postprocessing removes predicted lesion components smaller than a minimum
volume. The volume is chosen on the validation split and then applied
unchanged to the test split and to new scans, never tuned on them.

The rule (docs/design.md, "Postprocessing"):
  * the criterion counts lesions: the candidate with the best mean lesion-wise
    F1 over the validation subjects wins, mean Dice breaks ties, and a
    remaining tie goes to the smaller volume (less postprocessing). Dice
    barely notices a small lesion, so choosing by Dice deletes the lesions
    PVL is made of whenever the network also marks a few specks;
  * sizes are volumes (mm^3), so a rule means the same on a 1 mm and a 2 mm
    template grid;
  * the candidates stop below 0.05 ml (`CANDIDATES_MM3`): a component of that
    size is a lesion a reader would report, never noise to be removed on the
    evidence of a few validation subjects. `inference.postprocess_candidates_mm3`
    sets other candidates.
"""

from collections.abc import Sequence
import math

import numpy as np

from pvl_jax.evaluation import lesions
from pvl_jax.evaluation import segmentation
from pvl_jax.inference.postprocess import remove_small_components

# Candidate minimum lesion volumes in mm^3 (0 = no postprocessing): at 2 mm
# (8 mm^3 a voxel) up to 1, 2, 3, 4 and 6 voxels; at 1 mm up to 48 voxels.
CANDIDATES_MM3 = (0.0, 8.0, 16.0, 24.0, 32.0, 48.0)


def min_voxels(min_mm3: float, voxel_mm3: float) -> int:
  """The fewest voxels a kept component has: volume >= `min_mm3`."""
  # A component of n voxels is n * voxel_mm3; the tolerance keeps an exact
  # multiple (16 mm^3 at 8 mm^3 a voxel: 2 voxels) from rounding up.
  return max(math.ceil(min_mm3 / voxel_mm3 - 1e-9), 0)


def choose_min_size(predictions: Sequence[np.ndarray],
                    references: Sequence[np.ndarray], voxel_mm3: float,
                    candidates_mm3: Sequence[float] = CANDIDATES_MM3) -> float:
  """The candidate volume (mm^3) with the best validation lesion F1.

  Args:
    predictions: predicted binary masks of the validation subjects.
    references: their reference masks.
    voxel_mm3: the volume of one voxel of these masks.
    candidates_mm3: minimum volumes to try.

  Returns:
    The chosen minimum volume in mm^3 (ties: higher mean Dice, then the
    smaller volume).
  """
  best, best_score = 0.0, None
  tried = set()
  for size_mm3 in sorted(float(c) for c in candidates_mm3):
    voxels = min_voxels(size_mm3, voxel_mm3)
    if voxels in tried:  # the same masks as a smaller candidate
      continue
    tried.add(voxels)
    kept = [remove_small_components(p, voxels) for p in predictions]
    score = (float(np.nanmean([lesions.lesion_detection(k, r)["f1"]
                               for k, r in zip(kept, references)])),
             float(np.mean([segmentation.dice(k, r)
                            for k, r in zip(kept, references)])))
    if best_score is None or _better(score, best_score):
      best, best_score = size_mm3, score
  return best


def _better(score: tuple[float, float], best: tuple[float, float]) -> bool:
  """Lexicographically larger (F1, then Dice), beyond rounding noise."""
  for new, old in zip(score, best):
    if new > old + 1e-12:
      return True
    if new < old - 1e-12:
      return False
  return False
