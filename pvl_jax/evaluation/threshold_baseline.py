"""The intensity-threshold baseline every learned segmenter must beat.

One global threshold on the (z-scored) first channel inside the brain mask,
chosen to maximise the Dice pooled over the training subjects, then applied
unchanged to held-out subjects. Pooled counts at every candidate threshold come
from two cumulative histograms (lesion and non-lesion brain voxels), so tuning
costs one pass over the training data.
"""

from collections.abc import Iterable, Mapping

import numpy as np

# Candidate thresholds in z-score units of the normalised image.
CANDIDATES = np.linspace(0.0, 8.0, 161)


def tune_threshold(records: Iterable[Mapping[str, np.ndarray]]
                   ) -> tuple[float, float]:
  """Picks the threshold with the best pooled Dice over `records`.

  Args:
    records: dataset records with image (*spatial, C), lesion_mask and
      brain_mask.

  Returns:
    (threshold, pooled training Dice at that threshold).
  """
  edges = np.append(CANDIDATES, np.inf)
  lesion_counts = np.zeros(len(CANDIDATES))
  other_counts = np.zeros(len(CANDIDATES))
  for record in records:
    image, lesion, brain = _unpack(record)
    lesion_counts += np.histogram(image[lesion], edges)[0]
    other_counts += np.histogram(image[brain & ~lesion], edges)[0]
  # Voxels above candidate i = sum of histogram bins i.. (reverse cumsum);
  # lesion voxels below the lowest candidate can never be found.
  tp = lesion_counts[::-1].cumsum()[::-1]
  fp = other_counts[::-1].cumsum()[::-1]
  total_lesion = lesion_counts.sum()
  dice = 2 * tp / np.maximum(tp + fp + total_lesion, 1)
  best = int(np.argmax(dice))
  return float(CANDIDATES[best]), float(dice[best])


def predict(record: Mapping[str, np.ndarray], threshold: float) -> np.ndarray:
  """Boolean lesion mask: first channel > threshold inside the brain."""
  image, _, brain = _unpack(record)
  return (image > threshold) & brain


def _unpack(record: Mapping[str, np.ndarray]):
  image = np.asarray(record["image"])[..., 0]
  return (image, np.asarray(record["lesion_mask"]) > 0,
          np.asarray(record["brain_mask"]) > 0)
