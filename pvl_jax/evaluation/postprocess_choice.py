"""Choosing the postprocessing on validation.

Postprocessing removes predicted lesion components smaller than a minimum
volume and components that lie wholly in a shell at the brain's outer
surface (`pvl_jax.inference.postprocess`). Both are chosen together on the
validation split and then applied unchanged to the test split and to new
scans, never tuned on them.

The rule (docs/design.md, "Postprocessing"):
  * the criterion counts lesions: the candidate pair with the best mean
    lesion-wise F1 over the validation subjects wins, mean Dice breaks ties,
    and a remaining tie goes to less postprocessing (the thinner shell, then
    the smaller volume). Dice barely notices a small lesion, so choosing by
    Dice deletes the lesions PVL is made of whenever the network also marks
    a few specks;
  * sizes are volumes (mm^3) and depths millimetres, so a rule means the
    same on a 1 mm and a 2 mm template grid;
  * what may be removed is capped by the candidates: volumes stop below
    0.05 ml (`inference.postprocess_candidates_mm3`), a lesion a reader would
    report, and the shell at 6 mm (`inference.postprocess_depth_candidates_mm`):
    cortex and the white matter right under it, never the periventricular
    white matter where PVL lies, so no lesion reaching deeper is removed on
    the evidence of a few validation subjects.
"""

from collections.abc import Sequence
import dataclasses
import math

import numpy as np
from scipy import ndimage

from preprocessing import lesion_labels
from pvl_jax.evaluation import lesions
from pvl_jax.inference import postprocess

# Candidate minimum lesion volumes in mm^3 (0 = none): at 2 mm (8 mm^3 a
# voxel) up to 1, 2, 3, 4 and 6 voxels; at 1 mm up to 48 voxels.
CANDIDATES_MM3 = (0.0, 8.0, 16.0, 24.0, 32.0, 48.0)
# Candidate surface shells in mm (0 = none).
DEPTH_CANDIDATES_MM = (0.0, 2.0, 4.0, 6.0)


@dataclasses.dataclass(frozen=True)
class Choice:
  """The chosen postprocessing.

  Attributes:
    min_mm3: components smaller than this volume are removed.
    min_depth_mm: components not reaching this deep into the brain are
      removed.
  """
  min_mm3: float
  min_depth_mm: float


def min_voxels(min_mm3: float, voxel_mm3: float) -> int:
  """The fewest voxels a kept component has: volume >= `min_mm3`."""
  # A component of n voxels is n * voxel_mm3; the tolerance keeps an exact
  # multiple (16 mm^3 at 8 mm^3 a voxel: 2 voxels) from rounding up.
  return max(math.ceil(min_mm3 / voxel_mm3 - 1e-9), 0)


def apply(mask: np.ndarray, depth: np.ndarray, choice: Choice,
          voxel_mm3: float) -> np.ndarray:
  """`mask` after the chosen postprocessing (`depth`: `brain_depth`)."""
  kept = postprocess.remove_small_components(
      mask, min_voxels(choice.min_mm3, voxel_mm3))
  return postprocess.remove_surface_components(kept, depth,
                                               choice.min_depth_mm)


def choose(predictions: Sequence[np.ndarray],
           references: Sequence[np.ndarray], depths: Sequence[np.ndarray],
           voxel_mm3: float,
           candidates_mm3: Sequence[float] = CANDIDATES_MM3,
           depth_candidates_mm: Sequence[float] = DEPTH_CANDIDATES_MM
           ) -> Choice:
  """The candidate pair with the best validation lesion F1.

  Both rules remove whole components, so every candidate's masks are a
  selection of the same components: each subject's components are labelled
  once (`_Components`) and each candidate scored from their counts, with
  the figures `lesions.lesion_detection` and `segmentation.dice` give on the
  postprocessed masks.

  Args:
    predictions: predicted binary masks of the validation subjects.
    references: their reference masks.
    depths: `postprocess.brain_depth` of their brain masks.
    voxel_mm3: the volume of one voxel of these masks.
    candidates_mm3: minimum volumes to try.
    depth_candidates_mm: surface shells to try.

  Returns:
    The chosen pair (ties: higher mean Dice, then the thinner shell, then
    the smaller volume).
  """
  subjects = [_Components(p, r, d)
              for p, r, d in zip(predictions, references, depths)]
  best, best_score = Choice(0.0, 0.0), None
  for depth_mm in sorted(float(d) for d in depth_candidates_mm):
    tried = set()
    for size_mm3 in sorted(float(c) for c in candidates_mm3):
      voxels = min_voxels(size_mm3, voxel_mm3)
      if voxels in tried:  # the same masks as a smaller candidate
        continue
      tried.add(voxels)
      scores = [s.score(voxels, depth_mm) for s in subjects]
      score = (float(np.nanmean([f1 for f1, _ in scores])),
               float(np.mean([dice for _, dice in scores])))
      if best_score is None or _better(score, best_score):
        best, best_score = Choice(size_mm3, depth_mm), score
  return best


class _Components:
  """One subject's predicted components, for scoring their selections."""

  def __init__(self, prediction: np.ndarray, reference: np.ndarray,
               depth: np.ndarray):
    reference = np.asarray(reference, bool)
    labels, count = lesion_labels.components(prediction)
    index = np.arange(1, count + 1)
    self.sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    self.deepest = np.asarray(ndimage.maximum(depth, labels, index)
                              if count else np.zeros(0))
    # Voxels of each component inside the reference, and which reference
    # lesions each overlaps (pairs of labels sharing a voxel).
    self.inside = np.bincount(labels[reference], minlength=count + 1)[1:]
    ref_labels, self.n_ref = lesion_labels.components(reference)
    both = (ref_labels > 0) & (labels > 0)
    self.pairs = np.unique(np.stack([ref_labels[both], labels[both]]),
                           axis=1)
    self.ref_voxels = int(reference.sum())

  def score(self, min_voxels_kept: int, min_depth_mm: float
            ) -> tuple[float, float]:
    """(lesion F1, Dice) of the mask after the candidate's postprocessing."""
    keep = self.sizes >= max(min_voxels_kept, 1)
    if min_depth_mm > 0:
      keep &= self.deepest >= min_depth_mm
    detected = np.unique(self.pairs[0][keep[self.pairs[1] - 1]]).size
    f1 = lesions.detection_scores(self.n_ref, int(keep.sum()), detected,
                                  int((keep & (self.inside > 0)).sum()))["f1"]
    total = int(self.sizes[keep].sum()) + self.ref_voxels
    dice = 2 * int(self.inside[keep].sum()) / total if total else 1.0
    return f1, dice


def _better(score: tuple[float, float], best: tuple[float, float]) -> bool:
  """Lexicographically larger (F1, then Dice), beyond rounding noise."""
  for new, old in zip(score, best):
    if new > old + 1e-12:
      return True
    if new < old - 1e-12:
      return False
  return False
