"""Logistic-regression hand-function baseline on lesion masks.

The poster's baseline: logistic regression on the segmentation results "in
matrix form", beside a lesion-load model (`features`, `nested_cv`). Masks are
either the reference (manual) masks of the cohort or a U-Net's cross-fitted
predicted masks.
"""

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from preprocessing import bids
from preprocessing.io import tables
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import json_number
from pvl_jax.evaluation import summary
from pvl_jax.evaluation.classification import classification_metrics
from pvl_jax.handfunction import features as features_lib
from pvl_jax.handfunction import nested_cv

log = logging.getLogger(__name__)

FEATURE_SETS = ("matrix", "lesion_load")


def result_row(name: str, feature_set: str, masks: str,
               result: nested_cv.CVResult,
               subject_ids: Sequence[str],
               labels: np.ndarray) -> dict[str, Any]:
  """One row of the output JSON (the keys launch/report.py reads)."""
  row: dict[str, Any] = {"name": name, "features": feature_set,
                         "masks": masks}
  for metric in ("accuracy", "f1", "auc"):
    stats = summary.summarize(f[metric] for f in result.folds)
    row[f"{metric}_mean"] = json_number(stats.mean)
    row[f"{metric}_std"] = json_number(stats.std)
  row["candidates"] = result.candidates
  row["folds"] = [{k: json_number(v) if isinstance(v, float) else v
                   for k, v in f.items()} for f in result.folds]
  pooled = classification_metrics(labels, result.prob, threshold=0.5)
  row["pooled"] = {k: json_number(v) if isinstance(v, float) else v
                   for k, v in pooled.items()}
  row["out_of_fold"] = [
      {"subject_id": s, "hand_function": int(y), "prob": float(p),
       "fold": int(f)}
      for s, y, p, f in zip(subject_ids, labels, result.prob, result.fold_of)]
  row["n_subjects"] = len(subject_ids)
  return row


_ROW_NAMES = {"matrix": "LR matrix", "lesion_load": "LR lesion load"}


def run(cohort_dir: str | os.PathLike,
        prediction_dirs: Sequence[str | os.PathLike] = (), folds: int = 5,
        downsample: Sequence[int] = nested_cv.BLOCK_FACTORS, seed: int = 0,
        inner_repeats: int = nested_cv.INNER_REPEATS) -> list[dict[str, Any]]:
  """Both feature sets on reference masks, and on predicted ones if given.

  Args:
    cohort_dir: a BIDS cohort (participants.tsv with hand_function, reference
      masks under derivatives/lesions), all masks in one grid.
    prediction_dirs: training runs whose predictions/ together hold one
      cross-fitted predicted mask per subject, in the same grid; empty: skip.
    folds: outer stratified folds.
    downsample: the block factors of the matrix features that the inner CV
      chooses from.
    seed: fold shuffling seed.
    inner_repeats: repeats of the inner `INNER_FOLDS`-fold CV.

  Returns:
    The result rows (see `result_row`), reference masks first.

  Raises:
    InputError: bad arguments, cohort or masks (the message names the file).
  """
  if folds < 2:
    raise InputError(f"--folds: must be at least 2, got {folds}")
  if not downsample or min(downsample) < 1:
    raise InputError("--downsample: block factors must be at least 1, got "
                     f"{list(downsample)}")
  if inner_repeats < 1:
    raise InputError(f"--inner_repeats: must be at least 1, got "
                     f"{inner_repeats}")
  subjects = bids.load_cohort(cohort_dir, modalities=())
  subject_ids = [s.participant_id for s in subjects]
  labels = np.array([s.hand_function for s in subjects])
  nested_cv.check_class_sizes(labels, folds,
                              Path(cohort_dir) / bids.PARTICIPANTS_FILE)
  sources = {"reference": [s.lesion_mask_path for s in subjects]}
  if prediction_dirs:
    predicted = features_lib.collect_predictions(prediction_dirs, subject_ids)
    sources["predicted"] = [predicted[s] for s in subject_ids]
  # Every mask is read (and checked) before the first, slower, fit.
  features = {}
  grid = None
  for masks, paths in sources.items():
    log.info("reading %d %s masks", len(paths), masks)
    features[masks], grid = features_lib.load_features(paths, grid)
  searches = {"matrix": nested_cv.matrix_search(grid.shape,
                                               sorted(set(downsample))),
              "lesion_load": nested_cv.lesion_load_search()}
  rows = []
  for masks, feature_sets in features.items():
    for feature_set in FEATURE_SETS:
      log.info("nested %d-fold CV: %s on %s masks", folds, feature_set,
                   masks)
      result = nested_cv.cross_validate(feature_sets[feature_set], labels,
                              searches[feature_set], folds, seed,
                              inner_repeats)
      rows.append(result_row(
          f"{_ROW_NAMES[feature_set]} ({masks} masks)", feature_set, masks,
          result, subject_ids, labels))
  return rows


def _feature_counts(row: Mapping[str, Any]) -> str:
  """Features the folds' models saw: one number, or the range across folds."""
  counts = [fold["n_features"] for fold in row["folds"]]
  low, high = min(counts), max(counts)
  return str(low) if low == high else f"{low}-{high}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table: mean ± std across outer folds."""
  return tables.markdown_table(
      ["baseline", "subjects", "features", "accuracy", "F1", "AUC"],
      [[row["name"], str(row["n_subjects"]), _feature_counts(row)]
       + [summary.format_mean_std(row[f"{m}_mean"], row[f"{m}_std"])
          for m in ("accuracy", "f1", "auc")] for row in rows])
