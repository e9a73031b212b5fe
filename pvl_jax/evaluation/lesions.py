"""Lesion-wise segmentation scores: detection, and recall by lesion size.

Lesions are 26-connected components (8-connected in 2D), as in the WMH
challenge's evaluation script (Kuijf et al., IEEE TMI 2019,
https://wmh.isi.uu.nl), which scores lesion-wise recall, precision and F1.
Lesion recall by lesion size is added so that a weakness on small lesions
shows up instead of disappearing inside a Dice score. Inputs are as `masks`
checks them; empty masks follow `segmentation`'s rule.

The per-bin counts travel in `segmentation`'s flat metric dicts under the
keys `size_counts` names; `segmentation.aggregate` sums them over subjects
and pools their recall (`pooled_size_recall`), and `size_bins` reads them
back from its summary.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from preprocessing import lesion_labels
from pvl_jax.evaluation import masks

# Lesion size bin edges in ml. A voxel is 0.001 ml at 1 mm and 0.008 ml at
# 2 mm, so the first bin holds lesions of up to ~6 voxels at 2 mm (~50 at
# 1 mm): the small, disconnected lesions the reference poster names as its
# weakness.
DEFAULT_SIZE_BINS_ML = (0.0, 0.05, 0.5, 2.0, math.inf)

# Keys of the per-bin lesion counts (`size_counts`):
# f"size_{bin_label}_n_ref" and f"size_{bin_label}_n_detected".
_SIZE_PREFIX = "size_"
_N_REF_SUFFIX = "_n_ref"
_N_DETECTED_SUFFIX = "_n_detected"


def _as_bin_edges(bins_ml: Sequence[float]) -> np.ndarray:
  """Checks that `bins_ml` are at least two increasing, non-negative edges."""
  edges = np.asarray(bins_ml, dtype=float)
  if edges.ndim != 1 or edges.size < 2:
    raise ValueError(f"bins_ml needs at least two edges, got {bins_ml}")
  if np.isnan(edges).any() or edges[0] < 0 or np.any(np.diff(edges) <= 0):
    raise ValueError(
        f"bins_ml must be non-negative and strictly increasing, got {bins_ml}")
  return edges


def _ratio(numerator: float, denominator: float) -> float:
  """numerator / denominator, NaN when the denominator is 0."""
  return float(numerator / denominator) if denominator else math.nan


def _overlaps(labels: np.ndarray, n: int, other: np.ndarray) -> np.ndarray:
  """Per component 1..n of `labels`: whether it overlaps `other`."""
  hit = np.zeros(n + 1, dtype=bool)
  hit[labels[other]] = True
  return hit[1:]


def lesion_detection(pred: ArrayLike, ref: ArrayLike) -> dict[str, float]:
  """Lesion-wise detection on 26-connected components (WMH definitions).

  A reference lesion is detected when it overlaps any predicted voxel; a
  predicted lesion is correct when it overlaps any reference voxel.
  recall = n_ref_detected / n_ref, precision = n_pred_correct / n_pred,
  f1 = 2PR / (P + R); empty masks: `segmentation`'s module docstring.

  Returns:
    Dict with recall, precision, f1, n_ref, n_pred, n_ref_detected,
    n_pred_correct.
  """
  pred, ref = masks.as_binary_pair(pred, ref)
  ref_labels, n_ref = lesion_labels.components(ref)
  pred_labels, n_pred = lesion_labels.components(pred)
  return detection_scores(n_ref, n_pred,
                          int(_overlaps(ref_labels, n_ref, pred).sum()),
                          int(_overlaps(pred_labels, n_pred, ref).sum()))


def detection_scores(n_ref: int, n_pred: int, n_ref_detected: int,
                     n_pred_correct: int) -> dict[str, float]:
  """`lesion_detection`'s dict from its four lesion counts."""
  if n_ref == 0 and n_pred == 0:
    recall = precision = f1 = 1.0
  else:
    recall = _ratio(n_ref_detected, n_ref)
    precision = _ratio(n_pred_correct, n_pred)
    if recall == 0 or precision == 0:
      f1 = 0.0
    else:
      f1 = 2 * precision * recall / (precision + recall)
  return {
      "recall": recall,
      "precision": precision,
      "f1": f1,
      "n_ref": n_ref,
      "n_pred": n_pred,
      "n_ref_detected": n_ref_detected,
      "n_pred_correct": n_pred_correct,
  }


def _bin_labels(edges: np.ndarray) -> list[str]:
  """Names size bins like '0-0.05ml', '2-infml'."""
  return [f"{lo:g}-{hi:g}ml" for lo, hi in zip(edges[:-1], edges[1:])]


def lesion_recall_by_size(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike,
    bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
) -> dict[str, tuple[int, int]]:
  """Counts reference lesions, and detected ones, per lesion-volume bin.

  Lesions are 26-connected components of `ref`, detected as in
  `lesion_detection`. Bins are [lo, hi) in ml (numpy.histogram: the last one
  also holds hi); lesions outside the edges are not counted.

  Args:
    pred: Predicted binary mask.
    ref: Reference binary mask, same shape.
    spacing: Voxel size in mm along each axis.
    bins_ml: Increasing bin edges in ml.

  Returns:
    Dict bin label (e.g. '0-0.05ml') -> (n_ref, n_detected).
  """
  pred, ref = masks.as_binary_pair(pred, ref)
  spacing = masks.as_spacing(spacing, ref.ndim)
  edges = _as_bin_edges(bins_ml)
  ref_labels, n_ref = lesion_labels.components(ref)
  voxel_ml = float(np.prod(spacing)) / 1000.0
  voxels = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)[1:]
  volumes_ml = voxels * voxel_ml
  detected = _overlaps(ref_labels, n_ref, pred)
  n_per_bin, _ = np.histogram(volumes_ml, bins=edges)
  detected_per_bin, _ = np.histogram(volumes_ml[detected], bins=edges)
  return {
      label: (int(n), int(d))
      for label, n, d in zip(_bin_labels(edges), n_per_bin, detected_per_bin)
  }


def size_counts(by_size: Mapping[str, tuple[int, int]]) -> dict[str, int]:
  """`lesion_recall_by_size`'s counts as `size_<bin>_n_ref|_n_detected`."""
  counts = {}
  for label, (n_ref, n_detected) in by_size.items():
    counts[f"{_SIZE_PREFIX}{label}{_N_REF_SUFFIX}"] = n_ref
    counts[f"{_SIZE_PREFIX}{label}{_N_DETECTED_SUFFIX}"] = n_detected
  return counts


def is_size_count(key: str) -> bool:
  """Whether `key` is one of `size_counts`'s keys."""
  return key.startswith(_SIZE_PREFIX) and key.endswith(
      (_N_REF_SUFFIX, _N_DETECTED_SUFFIX))


def pooled_size_recall(counts: Mapping[str, int]) -> dict[str, float]:
  """Per size bin: detected / reference lesions, pooled over subjects.

  Args:
    counts: `size_counts` entries summed over subjects.

  Returns:
    Dict `size_<bin>_recall` -> recall; NaN for a bin without reference
    lesions.
  """
  recalls = {}
  for key, n_ref in counts.items():
    if key.endswith(_N_REF_SUFFIX):
      stem = key.removesuffix(_N_REF_SUFFIX)
      n_detected = counts[stem + _N_DETECTED_SUFFIX]
      recalls[f"{stem}_recall"] = _ratio(n_detected, n_ref)
  return recalls


def size_bins(summary: Mapping[str, float]) -> list[tuple[str, int, int]]:
  """(bin label, reference lesions, detected) of a `segmentation.aggregate`
  summary.

  In the order of the bins (smallest lesions first).
  """
  labels = [key[len(_SIZE_PREFIX):-len(_N_REF_SUFFIX)] for key in summary
            if is_size_count(key) and key.endswith(_N_REF_SUFFIX)]
  labels.sort(key=lambda label: float(label.split("-")[0]))
  return [(label, int(summary[f"{_SIZE_PREFIX}{label}{_N_REF_SUFFIX}"]),
           int(summary[f"{_SIZE_PREFIX}{label}{_N_DETECTED_SUFFIX}"]))
          for label in labels]
