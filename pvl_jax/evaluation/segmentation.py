"""Per-subject lesion segmentation metrics, as the WMH challenge defines them.

The metrics are those of the WMH challenge's evaluation script (Kuijf et al.,
IEEE TMI 2019, https://wmh.isi.uu.nl): Dice, volumetric overlap error (VOE),
95th-percentile Hausdorff distance (mm), absolute volume difference (%), and
lesion-wise recall, precision and F1 on 26-connected components (8-connected
in 2D). Lesion recall by lesion size is added so that a weakness on small
lesions shows up instead of disappearing inside a Dice score.

Inputs are binary numpy arrays (bool, or numbers that are all 0 or 1) of equal
shape, 2D or 3D; `spacing` is the voxel size in mm along each array axis.

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

# Lesion size bin edges in ml. A voxel is 0.001 ml at 1 mm and 0.008 ml at
# 2 mm, so the first bin holds lesions of up to ~6 voxels at 2 mm (~50 at
# 1 mm): the small, disconnected lesions the reference poster names as its
# weakness.
DEFAULT_SIZE_BINS_ML = (0.0, 0.05, 0.5, 2.0, math.inf)

# Keys of the per-bin lesion counts in `evaluate_subject`'s output:
# f"size_{bin_label}_n_ref" and f"size_{bin_label}_n_detected".
_SIZE_PREFIX = "size_"
_N_REF_SUFFIX = "_n_ref"
_N_DETECTED_SUFFIX = "_n_detected"


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
  """Returns `mask` as bool, refusing values other than 0 and 1."""
  if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
    raise ValueError(
        f"{name} is not binary: it holds values other than 0 and 1")
  return mask.astype(bool, copy=False)


def _as_binary_pair(pred: ArrayLike,
                    ref: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Checks `pred` and `ref` are binary volumes of one shape; returns bools."""
  pred, ref = np.asarray(pred), np.asarray(ref)
  if pred.shape != ref.shape:
    raise ValueError(f"shape mismatch: pred {pred.shape} vs ref {ref.shape}")
  if pred.ndim not in (2, 3):
    raise ValueError(f"expected 2D or 3D volumes, got {pred.ndim} dimensions")
  return _as_bool(pred, "pred"), _as_bool(ref, "ref")


def _as_spacing(spacing: ArrayLike, ndim: int) -> np.ndarray:
  """Checks that `spacing` gives one positive, finite voxel size per axis."""
  spacing = np.asarray(spacing, dtype=float)
  if spacing.shape != (ndim,):
    raise ValueError(f"spacing must give one voxel size per axis ({ndim}), "
                     f"got {spacing.tolist()}")
  if not np.all(np.isfinite(spacing) & (spacing > 0)):
    raise ValueError(
        f"spacing must be positive and finite, got {spacing.tolist()}")
  return spacing


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


def dice(pred: ArrayLike, ref: ArrayLike) -> float:
  """Dice coefficient 2|P∩R| / (|P| + |R|); 1 when both masks are empty."""
  pred, ref = _as_binary_pair(pred, ref)
  total = pred.sum() + ref.sum()
  if total == 0:
    return 1.0
  return float(2 * np.logical_and(pred, ref).sum() / total)


def voe(pred: ArrayLike, ref: ArrayLike) -> float:
  """Volumetric overlap error 1 - |P∩R| / |P∪R|; 0 when both are empty."""
  pred, ref = _as_binary_pair(pred, ref)
  union = np.logical_or(pred, ref).sum()
  if union == 0:
    return 0.0
  return float(1 - np.logical_and(pred, ref).sum() / union)


def abs_volume_difference_pct(pred: ArrayLike, ref: ArrayLike) -> float:
  """Absolute volume difference |V_pred - V_ref| / V_ref * 100.

  A ratio of volumes, so voxel spacing cancels out. 0 when both masks are
  empty, NaN when only the reference is.
  """
  pred, ref = _as_binary_pair(pred, ref)
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
  pred, ref = _as_binary_pair(pred, ref)
  spacing = _as_spacing(spacing, pred.ndim)
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


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
  """Labels 26-connected (8 in 2D) components, as WMH's script does."""
  return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


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
  f1 = 2PR / (P + R); see the module docstring for empty masks.

  Returns:
    Dict with recall, precision, f1, n_ref, n_pred, n_ref_detected,
    n_pred_correct.
  """
  pred, ref = _as_binary_pair(pred, ref)
  ref_labels, n_ref = _components(ref)
  pred_labels, n_pred = _components(pred)
  n_ref_detected = int(_overlaps(ref_labels, n_ref, pred).sum())
  n_pred_correct = int(_overlaps(pred_labels, n_pred, ref).sum())
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
  pred, ref = _as_binary_pair(pred, ref)
  spacing = _as_spacing(spacing, ref.ndim)
  edges = _as_bin_edges(bins_ml)
  ref_labels, n_ref = _components(ref)
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


def evaluate_subject(
    pred: ArrayLike,
    ref: ArrayLike,
    spacing: ArrayLike,
    bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
    ignore: ArrayLike | None = None,
) -> dict[str, float]:
  """All segmentation metrics of one subject, as one flat dict.

  Args:
    pred: Predicted binary mask.
    ref: Reference binary mask, same shape.
    spacing: Voxel size in mm along each axis.
    bins_ml: Lesion size bin edges in ml, see `lesion_recall_by_size`.
    ignore: Binary mask of voxels left out of scoring (see the module
      docstring), same shape, disjoint from `ref`; None: none.

  Returns:
    Dict with dice, voe, hd95_mm, avd_pct, lesion_recall, lesion_precision,
    lesion_f1, and per size bin `size_<bin>_n_ref` and `size_<bin>_n_detected`.
  """
  if ignore is not None:
    ignore, ref = _as_binary_pair(ignore, ref)
    if np.any(ignore & ref):
      raise ValueError("ignore overlaps ref: an ignored voxel cannot be "
                       "reference lesion")
    pred, _ = _as_binary_pair(pred, ref)
    pred = pred & ~ignore
  detection = lesion_detection(pred, ref)
  metrics = {
      "dice": dice(pred, ref),
      "voe": voe(pred, ref),
      "hd95_mm": hd95(pred, ref, spacing),
      "avd_pct": abs_volume_difference_pct(pred, ref),
      "lesion_recall": detection["recall"],
      "lesion_precision": detection["precision"],
      "lesion_f1": detection["f1"],
  }
  by_size = lesion_recall_by_size(pred, ref, spacing, bins_ml)
  for label, (n_ref, n_detected) in by_size.items():
    metrics[f"{_SIZE_PREFIX}{label}{_N_REF_SUFFIX}"] = n_ref
    metrics[f"{_SIZE_PREFIX}{label}{_N_DETECTED_SUFFIX}"] = n_detected
  return metrics


def _is_size_count(key: str) -> bool:
  return key.startswith(_SIZE_PREFIX) and key.endswith(
      (_N_REF_SUFFIX, _N_DETECTED_SUFFIX))


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


def _pooled_size_recall(size_counts: Mapping[str, int]) -> dict[str, float]:
  """Per size bin: detected / reference lesions, pooled over subjects."""
  recalls = {}
  for key, n_ref in size_counts.items():
    if key.endswith(_N_REF_SUFFIX):
      stem = key.removesuffix(_N_REF_SUFFIX)
      n_detected = size_counts[stem + _N_DETECTED_SUFFIX]
      recalls[f"{stem}_recall"] = _ratio(n_detected, n_ref)
  return recalls


def size_bins(summary: Mapping[str, float]) -> list[tuple[str, int, int]]:
  """(bin label, reference lesions, detected) of an `aggregate` summary.

  In the order of the bins (smallest lesions first).
  """
  labels = [key[len(_SIZE_PREFIX):-len(_N_REF_SUFFIX)] for key in summary
            if _is_size_count(key) and key.endswith(_N_REF_SUFFIX)]
  labels.sort(key=lambda label: float(label.split("-")[0]))
  return [(label, int(summary[f"{_SIZE_PREFIX}{label}{_N_REF_SUFFIX}"]),
           int(summary[f"{_SIZE_PREFIX}{label}{_N_DETECTED_SUFFIX}"]))
          for label in labels]


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
    if _is_size_count(key):
      size_counts[key] = int(values.sum())
    else:
      summary.update(_summary_stats(key, values))
  summary.update(size_counts)
  summary.update(_pooled_size_recall(size_counts))
  return summary
