"""Logistic-regression hand-function baseline on lesion masks.

The poster's baseline: logistic regression on the segmentation results "in
matrix form", beside a lesion-load model (`features`, `nested_cv`). Masks are
either the reference (manual) masks of the cohort or a U-Net's cross-fitted
predicted masks.
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from preprocessing import bids
from preprocessing.io import tables
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import json_number
from pvl_jax.evaluation import bootstrap
from pvl_jax.evaluation import summary
from pvl_jax.evaluation.classification import classification_metrics
from pvl_jax.handfunction import atlas as atlas_lib
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import crossfit
from pvl_jax.handfunction import features as features_lib
from pvl_jax.handfunction import nested_cv
from pvl_jax.handfunction import regions as regions_lib

log = logging.getLogger(__name__)

FEATURE_SETS = ("matrix", "lesion_load")
# The poster's baseline, logistic regression on the masks "in matrix form":
# the primary row, the one the joint model is compared with.
PRIMARY = "matrix"


def result_row(name: str, feature_set: str, masks: str,
               result: nested_cv.CVResult,
               subject_ids: Sequence[str],
               labels: np.ndarray, resamples: int = 0,
               seed: int = 0) -> dict[str, Any]:
  """One row of the output JSON (the keys launch/report.py reads).

  With `resamples`, "intervals" holds the pooled out-of-fold metrics with
  their bootstrap intervals (`bootstrap.paired_intervals`).
  """
  row: dict[str, Any] = {"name": name, "features": feature_set,
                         "masks": masks, "primary": feature_set == PRIMARY}
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
  if resamples:
    found = bootstrap.paired_intervals(
        labels, {name: bootstrap.Prediction(result.prob, result.prob >= 0.5)},
        [], n_resamples=resamples, seed=seed)[name]
    row["intervals"] = {m: {k: json_number(v) if isinstance(v, float) else v
                            for k, v in dataclasses.asdict(i).items()}
                        for m, i in found.items()}
    row["resamples"] = resamples
  return row


_ROW_NAMES = {"matrix": "LR matrix", "lesion_load": "LR lesion load"}
MASK_KINDS = ("reference", "predicted")
# Whom each outer fold's model trains on (`run`'s train_on).
TRAIN_ON = ("outer", "runs")


@dataclasses.dataclass(frozen=True)
class RegionOptions:
  """The lesion-load regions: built-in, or a user's atlas.

  Attributes:
    atlas: a label map in the masks' grid (`features.cohort_grid`; None:
      the built-in regions).
    atlas_names: its names table (`atlas.read_names`).
    regions: the region names to use (empty: all).
    tract: the names whose union is the tract load (empty: the built-in
      tract, or with an atlas every used region).
  """
  atlas: str | None = None
  atlas_names: str | None = None
  regions: tuple[str, ...] = ()
  tract: tuple[str, ...] = ()

  def region_set(self, grid: features_lib.Grid) -> regions_lib.RegionSet:
    """The regions in `grid` (atlas checked against it).

    Raises:
      InputError: an atlas without names table or the reverse, a bad atlas
        (see `atlas.load_atlas`), or a name the regions lack.
    """
    if (self.atlas is None) != (self.atlas_names is None):
      raise InputError("--atlas and --atlas_names: give both or neither")
    if self.atlas is None:
      available = regions_lib.builtin_regions(grid.shape, grid.affine)
      return available.select(self.regions, self.tract)
    available = atlas_lib.load_atlas(self.atlas, self.atlas_names,
                                     grid.shape, grid.affine, grid.path)
    return available.select(self.regions,
                            self.tract or self.regions or available.names)


def _labelled(subjects: Sequence[bids.Subject], column: str
              ) -> list[bids.Subject]:
  """The subjects with a hand-function label; logs how many are left out."""
  unlabelled = [s.participant_id for s in subjects if s.hand_function is None]
  if unlabelled:
    log.info("leaving out %d subject(s) without a %s label: %s",
             len(unlabelled), column, ", ".join(unlabelled))
  return [s for s in subjects if s.hand_function is not None]


def run(cohort_dir: str | os.PathLike,
        prediction_dirs: Sequence[str | os.PathLike] = (), folds: int = 5,
        downsample: Sequence[int] = nested_cv.BLOCK_FACTORS, seed: int = 0,
        inner_repeats: int = nested_cv.INNER_REPEATS,
        region_options: RegionOptions = RegionOptions(),
        feature_sets: Sequence[str] = FEATURE_SETS,
        masks: Sequence[str] | None = None,
        require_all: bool = True, resamples: int = 0,
        reading: cohort_reading.CohortReading | None = None,
        train_on: str = "outer") -> dict[str, Any]:
  """The baseline on reference masks, and on cross-fitted predicted ones.

  Args:
    cohort_dir: a BIDS cohort (participants.tsv with hand_function, reference
      masks under derivatives/lesions), all masks in one grid or, for a
      `preprocessing` output, crops of its template grid
      (`features.cohort_grid`). Subjects whose label is n/a are left out
      (and counted in the output).
    prediction_dirs: training runs, one per fold of one fold scheme, each
      with splits.json and predictions/ (`crossfit`); then the outer folds
      of every row are the runs' test splits; empty: stratified folds.
    folds: stratified outer folds (without runs).
    downsample: the block factors of the matrix features that the inner CV
      chooses from.
    seed: fold shuffling seed.
    inner_repeats: repeats of the inner `INNER_FOLDS`-fold CV.
    region_options: the lesion-load regions.
    feature_sets: which of `FEATURE_SETS` to fit, in that order.
    masks: which of `MASK_KINDS` to fit (default: reference, and predicted
      with runs).
    require_all: with runs, every labelled subject needs a predicted mask
      (else the subjects of the runs' test splits are used).
    resamples: bootstrap resamples of each row's pooled metrics (0: none).
    reading: how the cohort's labels, scans and reference masks are read;
      None: as the runs read it (their config.json), without runs the
      defaults.
    train_on: "outer": each outer fold's model trains on every subject
      outside the fold; "runs": on its run's train split alone (what the
      joint model trained on: its validation split stays out), which needs
      runs.

  Returns:
    {"rows": result rows (`result_row`), by masks then feature set,
     "regions": {"source", "names", "tract", "lesion_load_columns"},
     "folds": "stratified" or "runs", "unlabelled": ids left out,
     "reading": the `cohort_reading.CohortReading` used, as a dict}.

  Raises:
    InputError: bad arguments, cohort, masks, atlas or runs (the message
      names the file).
  """
  if folds < 2:
    raise InputError(f"--folds: must be at least 2, got {folds}")
  if not downsample or min(downsample) < 1:
    raise InputError("--downsample: block factors must be at least 1, got "
                     f"{list(downsample)}")
  if inner_repeats < 1:
    raise InputError(f"--inner_repeats: must be at least 1, got "
                     f"{inner_repeats}")
  if resamples and not bootstrap.MIN_RESAMPLES <= resamples:
    raise InputError(f"--resamples: 0 or at least {bootstrap.MIN_RESAMPLES}, "
                     f"got {resamples}")
  if train_on not in TRAIN_ON:
    raise InputError(f"train_on: one of {', '.join(TRAIN_ON)}, got "
                     f"{train_on!r}")
  if train_on == "runs" and not prediction_dirs:
    raise InputError("train_on='runs': training on the runs' train splits "
                     "needs the runs")
  masks = tuple(masks or MASK_KINDS[:1 + bool(prediction_dirs)])
  if "predicted" in masks and not prediction_dirs:
    raise InputError("--predictions: predicted masks need training runs")
  if reading is None:
    reading = (cohort_reading.of_runs(prediction_dirs) if prediction_dirs
               else cohort_reading.CohortReading())
  cohort = reading.load(cohort_dir)
  subjects = _labelled(cohort, reading.label_column)
  outer: int | np.ndarray = folds
  trainable = None
  paths = {"reference": {s.participant_id: s.lesion_mask_path
                         for s in subjects}}
  if prediction_dirs:
    fit = crossfit.cross_fit(prediction_dirs,
                             [s.participant_id for s in cohort],
                             list(paths["reference"]), require_all)
    subjects = [s for s in subjects if s.participant_id in fit.fold_of]
    paths["predicted"] = fit.predictions
    outer = np.array([fit.fold_of[s.participant_id] for s in subjects])
    if train_on == "runs":
      trainable = {run.fold: np.array([s.participant_id in run.splits["train"]
                                       for s in subjects])
                   for run in fit.runs}
  if not subjects:
    raise InputError(f"{cohort_dir}: no labelled subject"
                     + (" in the runs' test splits" if prediction_dirs else ""))
  subject_ids = [s.participant_id for s in subjects]
  labels = np.array([s.hand_function for s in subjects])
  if prediction_dirs:
    nested_cv.check_fold_class_sizes(
        labels, outer, {run.fold: run.splits_path for run in fit.runs},
        reading.label_column)
  else:
    table = reading.phenotype or Path(cohort_dir) / bids.PARTICIPANTS_FILE
    nested_cv.check_class_sizes(labels, folds, Path(table),
                                reading.label_column)
  grid = features_lib.cohort_grid(cohort_dir,
                                  paths["reference"][subject_ids[0]])
  region_set = region_options.region_set(grid)
  extract = features_lib.FeatureExtractor(grid, region_set)
  # Every mask is read (and checked) before the first, slower, fit.
  features = {}
  for kind in masks:
    log.info("reading %d %s masks", len(subject_ids), kind)
    features[kind] = features_lib.load_features(
        [paths[kind][s] for s in subject_ids], grid, extract,
        reading if kind == "reference" else None)
  searches = {"matrix": nested_cv.matrix_search(grid.shape,
                                               sorted(set(downsample))),
              "lesion_load": nested_cv.lesion_load_search()}
  rows = []
  for kind in masks:
    for feature_set in feature_sets:
      log.info("nested CV (%s): %s on %s masks",
               "the runs' test splits" if prediction_dirs
               else f"{folds} stratified folds", feature_set, kind)
      result = nested_cv.cross_validate(
          features[kind][feature_set], labels, searches[feature_set], outer,
          seed, inner_repeats, trainable)
      suffix = ", the runs' train splits" if train_on == "runs" else ""
      rows.append(result_row(
          f"{_ROW_NAMES[feature_set]} ({kind} masks{suffix})", feature_set,
          kind, result, subject_ids, labels, resamples, seed))
  return {"rows": rows,
          "regions": {"source": region_set.source,
                      "names": list(region_set.names),
                      "tract": list(region_set.tract),
                      "lesion_load_columns": list(
                          features_lib.lesion_load_names(region_set))},
          "folds": "runs" if prediction_dirs else "stratified",
          "unlabelled": [s.participant_id for s in cohort
                         if s.hand_function is None],
          "reading": dataclasses.asdict(reading)}


def _feature_counts(row: Mapping[str, Any]) -> str:
  """Features the folds' models saw: one number, or the range across folds."""
  counts = [fold["n_features"] for fold in row["folds"]]
  low, high = min(counts), max(counts)
  return str(low) if low == high else f"{low}-{high}"


def _metric_cell(row: Mapping[str, Any], metric: str) -> str:
  """Pooled value [bootstrap interval]; mean ± std over folds without."""
  if "intervals" in row:
    return bootstrap.format_interval(row["intervals"][metric],
                                     row["resamples"])
  return summary.format_mean_std(row[f"{metric}_mean"],
                                 row[f"{metric}_std"])


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table (see `_metric_cell`)."""
  return tables.markdown_table(
      ["baseline", "subjects (bad)", "features", "accuracy", "F1", "AUC"],
      [[row["name"] + (" (primary)" if row.get("primary") else ""),
        f"{row['n_subjects']} ({row['pooled']['n_pos']})",
        _feature_counts(row)]
       + [_metric_cell(row, m) for m in bootstrap.METRICS] for row in rows])
