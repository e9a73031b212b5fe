"""Per-subject lesion segmentation metrics, as the WMH challenge defines them.

The metrics are those of the WMH challenge's evaluation script (Kuijf et al.,
IEEE TMI 2019, https://wmh.isi.uu.nl): Dice, volumetric overlap error (VOE),
95th-percentile Hausdorff distance (mm) and absolute volume difference (%),
here, and the lesion-wise ones of `lesions` (recall, precision and F1, and
recall by lesion size). `evaluate_subject` scores one subject on all of
them, and `aggregate` summarises subjects.

Inputs are binary numpy arrays (bool, or numbers that are all 0 or 1) of equal
shape, 2D or 3D; `spacing` is the voxel size in mm along each array axis
(`masks` checks both).

Ignored voxels (`evaluate_subject`'s `ignore`: a cohort's ignore label, the
WMH challenge's label 2 "other pathology") are scored as the WMH evaluation
script scores them: the prediction is masked out there (set to background)
before any metric, and they are not reference lesion, so a prediction inside
them counts neither for nor against the model.

Empty-mask rule (one rule for every metric):
  * Both masks empty: the prediction is exactly right, so every metric takes
    its best value: dice 1, voe 0, hd95 0, avd 0, lesion recall, precision and
    F1 1.
  * Exactly one mask empty: a metric keeps the value its formula gives; where
    the formula divides by zero, or needs a surface that does not exist, it is
    NaN (undefined). Lesion F1 is 0 whenever recall or precision is 0, whether
    or not the other one is defined, as a harmonic mean with a zero term is 0.

      case                  dice  voe  hd95  avd  recall  precision  f1
      ref empty, pred not   0     1    NaN   NaN  NaN     0          0
      pred empty, ref not   0     1    NaN   100  0       NaN        0

  `aggregate` skips NaNs and reports how many subjects each statistic rests on
  (`<metric>_n`, beside `n_subjects`). A complete miss thus leaves HD95
  undefined rather than large, so read `hd95_mm_mean` together with
  `hd95_mm_n` (and `dice`, which scores the miss as 0).
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from pvl_jax.evaluation import lesions
from pvl_jax.evaluation import masks


def dice(pred: ArrayLike, ref: ArrayLike) -> float:
  """Dice coefficient 2|P∩R| / (|P| + |R|); 1 when both masks are empty."""
  pred, ref = masks.as_binary_pair(pred, ref)
  total = pred.sum() + ref.sum()
  if total == 0:
    return 1.0
  return float(2 * np.logical_and(pred, ref).sum() / total)


def voe(pred: ArrayLike, ref: ArrayLike) -> float:
  """Volumetric overlap error 1 - |P∩R| / |P∪R|; 0 when both are empty."""
  pred, ref = masks.as_binary_pair(pred, ref)
  union = np.logical_or(pred, ref).sum()
  if union == 0:
    return 0.0
  return float(1 - np.logical_and(pred, ref).sum() / union)


def abs_volume_difference_pct(pred: ArrayLike, ref: ArrayLike) -> float:
  """Absolute volume difference |V_pred - V_ref| / V_ref * 100.

  A ratio of volumes, so voxel spacing cancels out. 0 when both masks are
  empty, NaN when only the reference is.
  """
  pred, ref = masks.as_binary_pair(pred, ref)
  v_pred, v_ref = int(pred.sum()), int(ref.sum())
  if v_ref == 0:
    return 0.0 if v_pred == 0 else math.nan
  return abs(v_pred - v_ref) / v_ref * 100


def _crop_to_union(pred: np.ndarray,
                   ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Crops both (non-empty) masks to the bounding box of their union.

  Neither the surfaces nor the distances between them change: outside the box
  there is only background, which is also what the erosion assumes outside the
  volume. It keeps the distance transforms small on whole-brain volumes.
  """
  box = ndimage.find_objects((pred | ref).astype(np.int8))[0]
  return pred[box], ref[box]


def _surface(mask: np.ndarray) -> np.ndarray:
  """Mask minus its erosion by the full-connectivity (3^ndim) element.

  `border_value=0` makes voxels on the volume border surface voxels.
  """
  structure = np.ones((3,) * mask.ndim, dtype=bool)
  eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
  return mask & ~eroded


def _distance_to(surface: np.ndarray, spacing: np.ndarray) -> np.ndarray:
  """Euclidean distance (mm) from every voxel to the nearest `surface` one."""
  return ndimage.distance_transform_edt(~surface, sampling=spacing)


def hd95(pred: ArrayLike, ref: ArrayLike, spacing: ArrayLike) -> float:
  """95th-percentile Hausdorff distance in mm, as the WMH challenge defines it.

  Surfaces are each mask minus its erosion by the full-connectivity
  structuring element (3x3x3; 3x3 in 2D), voxels on the volume border counting
  as surface. For every pred surface voxel, take the Euclidean distance in mm
  (voxel centres, scaled by `spacing`) to the nearest ref surface voxel, and
  likewise from ref to pred. Then

    HD95 = max(P95(pred -> ref), P95(ref -> pred)),

  the larger of the two directed 95th percentiles (numpy's default linear
  interpolation), as the WMH evaluation script computes it, and not the 95th
  percentile of the two sets pooled. The one deviation from that script: it
  erodes in-plane only (its data are thick-sliced), here erosion is full 3D.

  Args:
    pred: Predicted binary mask.
    ref: Reference binary mask, same shape.
    spacing: Voxel size in mm along each axis.

  Returns:
    HD95 in mm; 0 when both masks are empty, NaN when exactly one is.
  """
  pred, ref = masks.as_binary_pair(pred, ref)
  spacing = masks.as_spacing(spacing, pred.ndim)
  if not pred.any() and not ref.any():
    return 0.0
  if not pred.any() or not ref.any():
    return math.nan
  pred, ref = _crop_to_union(pred, ref)
  pred_surface, ref_surface = _surface(pred), _surface(ref)
  pred_to_ref = _distance_to(ref_surface, spacing)[pred_surface]
  ref_to_pred = _distance_to(pred_surface, spacing)[ref_surface]
  return float(
      max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def evaluate_subject(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike,
    bins_ml: Sequence[float] = lesions.DEFAULT_SIZE_BINS_ML,
    ignore: ArrayLike | None = None,
) -> dict[str, float]:
  """All segmentation metrics of one subject, as one flat dict.

  Args:
    pred: Predicted binary mask.
    ref: Reference binary mask, same shape.
    spacing: Voxel size in mm along each axis.
    bins_ml: Lesion size bin edges in ml, see
      `lesions.lesion_recall_by_size`.
    ignore: Binary mask of voxels left out of scoring (see the module
      docstring), same shape, disjoint from `ref`; None: none.

  Returns:
    Dict with dice, voe, hd95_mm, avd_pct, lesion_recall, lesion_precision,
    lesion_f1, and per size bin `size_<bin>_n_ref` and `size_<bin>_n_detected`.
  """
  if ignore is not None:
    ignore, ref = masks.as_binary_pair(ignore, ref)
    if np.any(ignore & ref):
      raise ValueError("ignore overlaps ref: an ignored voxel cannot be "
                       "reference lesion")
    pred, _ = masks.as_binary_pair(pred, ref)
    pred = pred & ~ignore
  detection = lesions.lesion_detection(pred, ref)
  metrics = {
      "dice": dice(pred, ref),
      "voe": voe(pred, ref),
      "hd95_mm": hd95(pred, ref, spacing),
      "avd_pct": abs_volume_difference_pct(pred, ref),
      "lesion_recall": detection["recall"],
      "lesion_precision": detection["precision"],
      "lesion_f1": detection["f1"],
  }
  metrics.update(lesions.size_counts(
      lesions.lesion_recall_by_size(pred, ref, spacing, bins_ml)))
  return metrics


def _summary_stats(name: str, values: np.ndarray) -> dict[str, float]:
  """Mean, sample std (ddof=1), median and count of the non-NaN `values`."""
  valid = values[~np.isnan(values)]
  n = int(valid.size)
  return {
      f"{name}_mean": float(valid.mean()) if n else math.nan,
      f"{name}_std": float(valid.std(ddof=1)) if n > 1 else math.nan,
      f"{name}_median": float(np.median(valid)) if n else math.nan,
      f"{name}_n": n,
  }


def aggregate(per_subject: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """Summarises `evaluate_subject` outputs over subjects.

  Every metric gets `<metric>_mean`, `<metric>_std` (sample std, NaN below two
  values), `<metric>_median` over its non-NaN values and `<metric>_n`, the
  number of those values. Size-bin lesion counts are summed instead, and give
  `size_<bin>_recall` pooled over subjects (every lesion weighs the same,
  whichever subject it is in; NaN for a bin without reference lesions).

  Args:
    per_subject: One metrics dict per subject, all with the same keys.

  Returns:
    The summary dict, with `n_subjects`.
  """
  if not per_subject:
    raise ValueError("aggregate needs at least one subject")
  keys = list(per_subject[0])
  for i, subject in enumerate(per_subject):
    if set(subject) != set(keys):
      raise ValueError(f"subject {i} has metrics {sorted(subject)}, "
                       f"expected {sorted(keys)}")
  summary: dict[str, float] = {"n_subjects": len(per_subject)}
  size_counts = {}
  for key in keys:
    values = np.array([subject[key] for subject in per_subject], dtype=float)
    if lesions.is_size_count(key):
      size_counts[key] = int(values.sum())
    else:
      summary.update(_summary_stats(key, values))
  summary.update(size_counts)
  summary.update(lesions.pooled_size_recall(size_counts))
  return summary
