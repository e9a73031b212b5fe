"""Logistic-regression hand-function baseline on lesion masks.

The poster's baseline: logistic regression on the segmentation results "in
matrix form". Here two feature sets are computed from binary lesion masks that
all lie in one common grid (template space, MNI152 RAS millimetres):

  * "matrix": the mask block-averaged by `downsample` along each axis (the
    fraction of lesion voxels per block; the grid is zero-padded to a multiple
    of the factor, outside the grid being no lesion) and flattened. At 2 mm,
    factor 4 turns the 99x117x95 template into 25x30x24 = 18000 features.
  * "lesion_load": total lesion volume and the volume in each of the nine
    `REGIONS` (eight octants and a posterior periventricular box), in ml.

Masks are either the reference (manual) masks of the cohort or a U-Net's
predicted masks. Predictions must be cross-fitted: each subject's mask comes
from the training run whose test fold held it, so no network saw the subject.

Model: StandardScaler + L2 LogisticRegression, C chosen per outer fold by an
inner stratified grid search (nested cross-validation); outer stratified
subject-level k-fold with a fixed seed. Each outer test fold is scored with
`classification_metrics` at threshold 0.5 on `predict_proba`.
"""

import dataclasses
import itertools
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import threadpoolctl
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing as sk_preprocessing
from sklearn.linear_model import LogisticRegression

from preprocessing import bids
from preprocessing import nifti_io
from preprocessing.errors import InputError
from pvl_jax.evaluation.classification import classification_metrics

FEATURE_SETS = ("matrix", "lesion_load")
# Regularisation strengths searched by the inner CV: 18000 standardised
# matrix features need C around 1e-4..1e-2, ten lesion loads around 0.1..10.
C_GRID = tuple(10.0**e for e in range(-5, 2))
INNER_FOLDS = 3
# Log loss rather than accuracy picks C: on inner folds of a few subjects
# accuracy ties between most C values, a proper scoring rule rarely does.
INNER_SCORING = "neg_log_loss"
MAX_ITER = 5000
PRED_SUFFIX = "_pred.nii.gz"  # `pvl_jax.evaluate.save_predictions` naming

# Octants split at the centre of the MNI152 lateral ventricles (measured on
# the template nilearn ships: the CSF-like component inside the brain mask),
# so each octant holds the periventricular white matter of one part of the
# ventricles (frontal horn, body/trigone, temporal/occipital horn).
OCTANT_CENTER_MM = (0.0, -15.0, 14.0)
# Posterior periventricular white matter around the trigones and posterior
# bodies, next to the corticospinal tract, where PVL burden relates to motor
# outcome: an MNI box (x_min, x_max), (y_min, y_max), (z_min, z_max) in mm.
PERIVENTRICULAR_POSTERIOR_MM = ((-35.0, 35.0), (-50.0, -10.0), (5.0, 40.0))


def _octant_names() -> tuple[str, ...]:
  return tuple(f"{lr}_{ap}_{si}" for lr, ap, si in itertools.product(
      ("left", "right"), ("posterior", "anterior"), ("inferior", "superior")))


REGIONS = _octant_names() + ("periventricular_posterior",)
LESION_LOAD_NAMES = ("total",) + REGIONS


@dataclasses.dataclass(frozen=True)
class Grid:
  """The voxel grid every mask must lie in (that of the first mask read)."""
  shape: tuple[int, ...]
  affine: np.ndarray
  path: Path


@dataclasses.dataclass(frozen=True)
class CVResult:
  """Nested cross-validation of one feature set.

  Attributes:
    folds: per outer fold: fold, n_train, n_test, C (chosen by the inner
      search), inner_scores (mean inner score per entry of C_GRID), and the
      `classification_metrics` of its test subjects.
    prob: out-of-fold probability of bad hand function, one per subject.
    fold_of: the outer fold that tested each subject.
  """
  folds: list[dict[str, Any]]
  prob: np.ndarray
  fold_of: np.ndarray


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
  """Averages non-overlapping factor^ndim blocks, zero-padding the far ends.

  Args:
    volume: an array of any dimensionality.
    factor: block edge in voxels along every axis.

  Returns:
    An array of shape ceil(shape / factor).
  """
  if factor < 1:
    raise ValueError(f"block factor must be at least 1, got {factor}")
  volume = np.asarray(volume, dtype=np.float32)
  padded = np.pad(volume, [(0, -n % factor) for n in volume.shape])
  # (a*f, b*f, ...) -> (a, f, b, f, ...), then average the f axes.
  blocks = padded.reshape([d for n in padded.shape for d in (n // factor,
                                                             factor)])
  return blocks.mean(axis=tuple(range(1, blocks.ndim, 2)))


def region_masks(shape: tuple[int, ...],
                 affine: np.ndarray) -> dict[str, np.ndarray]:
  """The `REGIONS` of a grid, from its voxel centres' world coordinates.

  Args:
    shape: the 3D grid shape.
    affine: its voxel-to-world (RAS mm, MNI for template space) affine.

  Returns:
    Region name -> flat bool array over the grid's voxels (C order).
  """
  voxels = np.indices(shape).reshape(3, -1)
  world = affine[:3, :3] @ voxels + affine[:3, 3:]
  above = world > np.asarray(OCTANT_CENTER_MM)[:, None]
  regions = {}
  for name, sides in zip(_octant_names(),
                         itertools.product((False, True), repeat=3)):
    regions[name] = np.all(above == np.asarray(sides)[:, None], axis=0)
  box = np.asarray(PERIVENTRICULAR_POSTERIOR_MM)
  regions["periventricular_posterior"] = np.all(
      (world >= box[:, :1]) & (world <= box[:, 1:]), axis=0)
  return regions


class FeatureExtractor:
  """Computes both feature sets of masks that share one grid."""

  def __init__(self, grid: Grid, downsample: int):
    self.downsample = downsample
    self._regions = region_masks(grid.shape, grid.affine)
    self._voxel_ml = abs(np.linalg.det(grid.affine[:3, :3])) / 1000.0

  def __call__(self, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Feature set name -> 1D float feature vector of one bool mask."""
    flat = mask.reshape(-1)
    volumes = [np.count_nonzero(flat)] + [
        np.count_nonzero(flat & self._regions[name]) for name in REGIONS]
    return {
        "matrix": block_mean(mask, self.downsample).reshape(-1),
        "lesion_load": np.asarray(volumes, np.float64) * self._voxel_ml,
    }


def load_features(paths: Sequence[Path], grid: Grid | None,
                  downsample: int) -> tuple[dict[str, np.ndarray], Grid]:
  """Reads masks one at a time (a cohort of them need not fit in memory).

  Args:
    paths: binary mask files, one per subject.
    grid: the grid they must lie in; None: that of the first mask.
    downsample: the matrix features' block factor.

  Returns:
    (feature set name -> (subjects, features) array, the grid).

  Raises:
    InputError: a mask is unreadable, not binary or in another grid.
  """
  if grid is None:
    data, affine = nifti_io.load_volume(paths[0], kind="mask")
    grid = Grid(data.shape, affine, Path(paths[0]))
  extract = FeatureExtractor(grid, downsample)
  rows = [extract(nifti_io.load_mask(path, reference_shape=grid.shape,
                                     reference_affine=grid.affine,
                                     reference_path=grid.path))
          for path in paths]
  return {name: np.stack([row[name] for row in rows])
          for name in FEATURE_SETS}, grid


def collect_predictions(run_dirs: Sequence[str | os.PathLike],
                        subject_ids: Sequence[str]) -> dict[str, Path]:
  """Finds each subject's cross-fitted predicted mask among training runs.

  Args:
    run_dirs: training run workdirs (holding predictions/), or predictions
      folders themselves; together one per test fold.
    subject_ids: every subject of the cohort.

  Returns:
    Subject id -> its `<subject>_pred.nii.gz`.

  Raises:
    InputError: a folder holds no predictions, a prediction names a subject
      outside the cohort, or a subject has no prediction or several.
  """
  found: dict[str, list[Path]] = {}
  for run_dir in map(Path, run_dirs):
    folder = run_dir / "predictions"
    if not folder.is_dir():
      folder = run_dir
    files = sorted(folder.glob(f"sub-*{PRED_SUFFIX}"))
    if not files:
      raise InputError(f"{run_dir}: no predicted masks (expected "
                       f"predictions/sub-XXX{PRED_SUFFIX})")
    for path in files:
      found.setdefault(path.name[:-len(PRED_SUFFIX)], []).append(path)
  unknown = sorted(set(found) - set(subject_ids))
  if unknown:
    raise InputError(f"{found[unknown[0]][0]}: subject {unknown[0]} is not in "
                     f"participants.tsv ({len(unknown)} unknown subject(s): "
                     f"{', '.join(unknown)})")
  twice = [f"{s} ({', '.join(map(str, found[s]))})" for s in subject_ids
           if len(found.get(s, ())) > 1]
  if twice:
    raise InputError(f"{run_dirs[0]}: subjects predicted more than once (the "
                     "runs' test folds overlap; pass one run per fold): "
                     f"{'; '.join(twice)}")
  missing = [s for s in subject_ids if s not in found]
  if missing:
    raise InputError(f"{run_dirs[0]}: no predicted mask for {len(missing)} "
                     f"subject(s) (the runs must cover every test fold): "
                     f"{', '.join(missing)}")
  return {s: found[s][0] for s in subject_ids}


def min_class_size(folds: int, inner_folds: int = INNER_FOLDS) -> int:
  """Subjects per class that nested stratified CV needs.

  Every outer test fold needs the class, and every outer training set (which
  lacks up to ceil(n / folds) of the class) needs it in every inner fold.
  """
  return next(n for n in itertools.count(folds)
              if n - math.ceil(n / folds) >= inner_folds)


def check_class_sizes(labels: np.ndarray, folds: int, source: Path) -> None:
  """Raises InputError naming `source` if a class is too small for the CV."""
  needed = min_class_size(folds)
  for label in (0, 1):
    count = int(np.count_nonzero(labels == label))
    if count < needed:
      raise InputError(
          f"{source}: hand_function={label} has {count} subject(s), fewer "
          f"than the {needed} that {folds}-fold cross-validation (with "
          f"{INNER_FOLDS}-fold inner selection of C) needs per class")


def _finite(value: float) -> float | None:
  """JSON has no NaN: an undefined metric (see classification.py) is null."""
  return float(value) if math.isfinite(value) else None


def make_model(seed: int) -> model_selection.GridSearchCV:
  """Scaler + logistic regression, C chosen by an inner stratified CV."""
  model = pipeline.Pipeline([
      ("scale", sk_preprocessing.StandardScaler()),
      ("logreg", LogisticRegression(max_iter=MAX_ITER)),
  ])
  inner = model_selection.StratifiedKFold(INNER_FOLDS, shuffle=True,
                                          random_state=seed)
  return model_selection.GridSearchCV(
      model, {"logreg__C": list(C_GRID)}, scoring=INNER_SCORING, cv=inner)


def cross_validate(features: np.ndarray, labels: np.ndarray, folds: int,
                   seed: int) -> CVResult:
  """Nested stratified cross-validation of one feature matrix.

  Args:
    features: (subjects, features).
    labels: hand function, 0 or 1, one per subject.
    folds: outer folds.
    seed: shuffles the outer and inner folds.

  Returns:
    The per-fold metrics and out-of-fold probabilities.
  """
  outer = model_selection.StratifiedKFold(folds, shuffle=True,
                                          random_state=seed)
  prob = np.zeros(len(labels))
  fold_of = np.zeros(len(labels), int)
  results = []
  for fold, (train, test) in enumerate(outer.split(features, labels)):
    # The fits are small: BLAS threads synchronise more than they compute
    # (one thread fitted 6x faster on a busy 2-core machine).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
      search = make_model(seed).fit(features[train], labels[train])
    prob[test] = search.predict_proba(features[test])[:, 1]
    fold_of[test] = fold
    results.append({
        "fold": fold, "n_train": int(train.size), "n_test": int(test.size),
        "C": float(search.best_params_["logreg__C"]),
        "inner_scores": [_finite(score) for score
                         in search.cv_results_["mean_test_score"]],
        **classification_metrics(labels[test], prob[test], threshold=0.5),
    })
  return CVResult(results, prob, fold_of)


def _summary(values: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean and sample std (ddof=1, as launch/report.py uses) across folds."""
  values = np.asarray(values, dtype=float)
  return _finite(values.mean()), _finite(values.std(ddof=1))


def result_row(name: str, feature_set: str, masks: str, result: CVResult,
               subject_ids: Sequence[str], labels: np.ndarray,
               n_features: int) -> dict[str, Any]:
  """One row of the output JSON (the keys launch/report.py reads)."""
  row: dict[str, Any] = {"name": name, "features": feature_set,
                         "masks": masks, "n_features": n_features}
  for metric in ("accuracy", "f1", "auc"):
    row[f"{metric}_mean"], row[f"{metric}_std"] = _summary(
        [f[metric] for f in result.folds])
  row["folds"] = [{k: _finite(v) if isinstance(v, float) else v
                   for k, v in f.items()} for f in result.folds]
  pooled = classification_metrics(labels, result.prob, threshold=0.5)
  row["pooled"] = {k: _finite(v) if isinstance(v, float) else v
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
        downsample: int = 4, seed: int = 0) -> list[dict[str, Any]]:
  """Both feature sets on reference masks, and on predicted ones if given.

  Args:
    cohort_dir: a BIDS cohort (participants.tsv with hand_function, reference
      masks under derivatives/lesions), all masks in one grid.
    prediction_dirs: training runs whose predictions/ together hold one
      cross-fitted predicted mask per subject, in the same grid; empty: skip.
    folds: outer stratified folds.
    downsample: block factor of the matrix features.
    seed: fold shuffling seed.

  Returns:
    The result rows (see `result_row`), reference masks first.

  Raises:
    InputError: bad arguments, cohort or masks (the message names the file).
  """
  if folds < 2:
    raise InputError(f"--folds: must be at least 2, got {folds}")
  if downsample < 1:
    raise InputError(f"--downsample: must be at least 1, got {downsample}")
  subjects = bids.load_cohort(cohort_dir, modalities=())
  subject_ids = [s.participant_id for s in subjects]
  labels = np.array([s.hand_function for s in subjects])
  check_class_sizes(labels, folds, Path(cohort_dir) / bids.PARTICIPANTS_FILE)
  sources = {"reference": [s.lesion_mask_path for s in subjects]}
  if prediction_dirs:
    predicted = collect_predictions(prediction_dirs, subject_ids)
    sources["predicted"] = [predicted[s] for s in subject_ids]
  # Every mask is read (and checked) before the first, slower, fit.
  features = {}
  grid = None
  for masks, paths in sources.items():
    logging.info("reading %d %s masks", len(paths), masks)
    features[masks], grid = load_features(paths, grid, downsample)
  rows = []
  for masks, feature_sets in features.items():
    for feature_set in FEATURE_SETS:
      logging.info("nested %d-fold CV: %s on %s masks", folds, feature_set,
                   masks)
      result = cross_validate(feature_sets[feature_set], labels, folds, seed)
      rows.append(result_row(
          f"{_ROW_NAMES[feature_set]} ({masks} masks)", feature_set, masks,
          result, subject_ids, labels, feature_sets[feature_set].shape[1]))
  return rows


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table: mean ± std across outer folds."""
  lines = ["| baseline | subjects | features | accuracy | F1 | AUC |",
           "| --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    cells = [_cell(row[f"{m}_mean"], row[f"{m}_std"])
             for m in ("accuracy", "f1", "auc")]
    lines.append(f"| {row['name']} | {row['n_subjects']} | "
                 f"{row['n_features']} | {' | '.join(cells)} |")
  return "\n".join(lines)
