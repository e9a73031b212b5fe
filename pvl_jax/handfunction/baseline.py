"""Logistic-regression hand-function baseline on lesion masks.

The poster's baseline: logistic regression on the segmentation results "in
matrix form". Here two feature sets are computed from binary lesion masks that
all lie in one common grid (template space, MNI152 RAS millimetres):

  * "matrix": the mask block-averaged (the fraction of lesion voxels per
    block, `block_features.BlockAverage`) and flattened, keeping the blocks
    lesioned in enough training subjects (`block_features.MinLesionFrequency`).
    A decision "lesion volume in some region >= v" is linear in these
    features, but with a few dozen subjects and thousands of blocks the
    block size and the frequency threshold matter as much as C, so the inner
    CV chooses all three.
  * "lesion_load": the lesion volume (mm^3) of the whole mask and of each
    anatomical region of `lesion_regions` (periventricular parts and
    corticospinal tract), log-transformed, log(1 + volume), as lesion loads
    conventionally are, or not: the inner CV chooses. A threshold on one
    region's volume is linear either way, but a sum of regions (or one
    region minus what a box holds beyond the tract) is linear only in
    volumes, while log loads temper subjects with huge lesions. The inner CV
    also chooses between all twelve loads and the two that motor-outcome
    studies use, the total and the corticospinal-tract load: on a
    60-subject cohort the twelve correlated loads overfit (one outer fold
    fell to 0.25 accuracy).

Masks are either the reference (manual) masks of the cohort or a U-Net's
predicted masks. Predictions must be cross-fitted: each subject's mask comes
from the training run whose test fold held it, so no network saw the subject.

Model: the features, StandardScaler and L2 LogisticRegression, the
hyper-parameters chosen per outer fold by an inner repeated stratified grid
search (nested cross-validation) with the one-standard-error rule; outer
stratified subject-level k-fold with a fixed seed. Each outer test fold is
scored with `classification_metrics` at threshold 0.5 on `predict_proba`.
"""

import dataclasses
import functools
import itertools
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import sparse
import threadpoolctl
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing as sk_preprocessing
from sklearn.linear_model import LogisticRegression

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import block_features
from pvl_jax.handfunction import regions
from pvl_jax.evaluation.classification import classification_metrics

FEATURE_SETS = ("matrix", "lesion_load")
# Regularisation strengths searched by the inner CV: tens to thousands of
# standardised blocks need C around 1e-2..1, a dozen lesion loads 0.1..10.
C_GRID = tuple(10.0**e for e in range(-4, 3))
# Block edges in voxels (at 2 mm: 4 to 12 mm), searched by the inner CV.
BLOCK_FACTORS = (2, 3, 4, 6)
# Shares of training subjects a block must be lesioned in (0: at least one).
MIN_LESION_FRACTIONS = (0.0, 0.05, 0.1, 0.2)
# Repeated inner folds: with a few dozen subjects one split's choice of
# hyper-parameters is mostly noise.
INNER_FOLDS = 5
INNER_REPEATS = 2
# Log loss rather than accuracy picks the hyper-parameters: on inner folds of
# a few subjects accuracy ties between most candidates, a proper scoring rule
# rarely does.
INNER_SCORING = "neg_log_loss"
MAX_ITER = 5000
PRED_SUFFIX = "_pred.nii.gz"  # `pvl_jax.evaluation.evaluate_run.save_predictions` naming
LESION_LOAD_NAMES = ("total",) + regions.REGIONS
# Lesion-load transforms the inner CV chooses from (None: volumes as such).
VOLUME_TRANSFORMS = (np.log1p, None)


def total_and_tract(volumes: np.ndarray) -> np.ndarray:
  """The total and the bilateral corticospinal-tract columns of the loads."""
  return volumes[:, [LESION_LOAD_NAMES.index("total"),
                     LESION_LOAD_NAMES.index("cst")]]


def all_regions(volumes: np.ndarray) -> np.ndarray:
  """Every `LESION_LOAD_NAMES` column."""
  return volumes


# Lesion-load subsets the inner CV chooses from, simplest first.
LESION_LOAD_SUBSETS = (total_and_tract, all_regions)
# Grid keys of the searches -> their names in the result rows.
PARAM_NAMES = {"logreg__C": "C", "block__factor": "downsample",
               "frequency__min_fraction": "min_lesion_fraction",
               "volumes__func": "volume_transform",
               "loads__func": "lesion_loads"}


@dataclasses.dataclass(frozen=True)
class Grid:
  """The voxel grid every mask must lie in (that of the first mask read)."""
  shape: tuple[int, ...]
  affine: np.ndarray
  path: Path


@dataclasses.dataclass(frozen=True)
class Search:
  """A model, the grid its inner CV chooses from and what "simpler" means.

  Attributes:
    model: the pipeline.
    grid: hyper-parameter name -> candidate values.
    simplicity: grid keys, most important first; for each, candidates earlier
      in its grid list are simpler (`one_standard_error_choice`).
  """
  model: pipeline.Pipeline
  grid: dict[str, list[Any]]
  simplicity: tuple[str, ...] = ("logreg__C",)


def one_standard_error_choice(cv_results: Mapping[str, Any],
                              search: Search) -> int:
  """The simplest candidate within one standard error of the best score.

  Breiman's one-standard-error rule: the inner CV's best mean score is
  optimistic (it is the maximum over many noisy estimates; with a few dozen
  subjects a dozen correlated lesion loads at weak regularisation won the
  inner CV and then scored 0.25 on an outer fold), so any candidate within
  one standard error of it, the error of the best candidate's mean over its
  inner folds, counts as tied, and the simplest of those is chosen.

  Args:
    cv_results: `GridSearchCV.cv_results_`.
    search: the search whose grid and simplicity order the candidates.

  Returns:
    Index of the chosen candidate in `cv_results`.
  """
  scores = np.asarray(cv_results["mean_test_score"])
  best = int(np.nanargmax(scores))
  splits = sum(key.startswith("split") and key.endswith("_test_score")
               for key in cv_results)
  margin = cv_results["std_test_score"][best] / math.sqrt(splits)
  tied = np.flatnonzero(scores >= scores[best] - margin)

  def complexity(index: int) -> tuple[int, ...]:
    params = cv_results["params"][index]
    return tuple(search.grid[key].index(params[key])
                 for key in search.simplicity)
  return int(min(tied, key=complexity))


@dataclasses.dataclass(frozen=True)
class CVResult:
  """Nested cross-validation of one feature set.

  Attributes:
    folds: per outer fold: fold, n_train, n_test, the chosen hyper-parameters
      (`PARAM_NAMES`), n_features (what the logistic regression saw),
      inner_scores (mean inner score per candidate, in `candidates` order),
      inner_score_stds (their standard deviations over the inner folds),
      and the `classification_metrics` of its test subjects.
    candidates: the hyper-parameter combinations of the inner search.
    prob: out-of-fold probability of bad hand function, one per subject.
    fold_of: the outer fold that tested each subject.
  """
  folds: list[dict[str, Any]]
  candidates: list[dict[str, Any]]
  prob: np.ndarray
  fold_of: np.ndarray


def _logistic_regression() -> list[tuple[str, Any]]:
  return [("scale", sk_preprocessing.StandardScaler()),
          ("logreg", LogisticRegression(max_iter=MAX_ITER))]


def matrix_search(shape: tuple[int, ...],
                  factors: Sequence[int] = BLOCK_FACTORS) -> Search:
  """Matrix-form model of flat masks in a grid of `shape`."""
  model = pipeline.Pipeline([
      ("block", block_features.BlockAverage(shape)),
      ("frequency", block_features.MinLesionFrequency()),
      *_logistic_regression()])
  return Search(model, {"block__factor": list(factors),
                        "frequency__min_fraction": list(MIN_LESION_FRACTIONS),
                        "logreg__C": list(C_GRID)})  # C ascending: simpler


def lesion_load_search() -> Search:
  """Lesion-load model of regional volumes in mm^3 (see `FeatureExtractor`)."""
  model = pipeline.Pipeline([
      ("loads", sk_preprocessing.FunctionTransformer()),
      ("volumes", sk_preprocessing.FunctionTransformer()),
      *_logistic_regression()])
  return Search(model, {"loads__func": list(LESION_LOAD_SUBSETS),
                        "volumes__func": list(VOLUME_TRANSFORMS),
                        "logreg__C": list(C_GRID)},
                simplicity=("loads__func", "logreg__C"))


class FeatureExtractor:
  """Computes both feature sets' inputs of masks that share one grid."""

  def __init__(self, grid: Grid):
    regions = regions.region_masks(grid.shape, grid.affine)
    # (voxels, regions) indicator matrix: one product gives every volume.
    self._regions = sparse.csc_matrix(np.stack(
        [np.ones(int(np.prod(grid.shape)), bool)]
        + [regions[name] for name in regions.REGIONS], axis=1))
    self._voxel_mm3 = abs(np.linalg.det(grid.affine[:3, :3]))

  def __call__(self, mask: np.ndarray) -> dict[str, Any]:
    """Feature set name -> features of one bool mask.

    Returns:
      matrix: the flat mask as a sparse (1, voxels) row; lesion_load: the
      volume in mm^3 per `LESION_LOAD_NAMES`.
    """
    flat = sparse.csr_matrix(mask.reshape(1, -1), dtype=np.float32)
    volumes = (flat @ self._regions).toarray()[0] * self._voxel_mm3
    return {"matrix": flat, "lesion_load": volumes}


def load_features(paths: Sequence[Path], grid: Grid | None
                  ) -> tuple[dict[str, Any], Grid]:
  """Reads masks one at a time (a cohort of them need not fit in memory).

  Args:
    paths: binary mask files, one per subject.
    grid: the grid they must lie in; None: that of the first mask.

  Returns:
    (feature set name -> (subjects, features) array, sparse for "matrix"
    (flat masks), the grid).

  Raises:
    InputError: a mask is unreadable, not binary or in another grid.
  """
  if grid is None:
    data, affine = nifti.load_volume(paths[0], kind="mask")
    grid = Grid(data.shape, affine, Path(paths[0]))
  extract = FeatureExtractor(grid)
  return stack_features([
      extract(nifti.load_mask(path, reference_shape=grid.shape,
                                 reference_affine=grid.affine,
                                 reference_path=grid.path))
      for path in paths]), grid


def stack_features(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """`FeatureExtractor` outputs -> feature set name -> (subjects, features)."""
  return {"matrix": sparse.vstack([row["matrix"] for row in rows],
                                  format="csr"),
          "lesion_load": np.stack([row["lesion_load"] for row in rows])}


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
          f"{INNER_FOLDS}-fold inner selection of hyper-parameters) needs "
          "per class")


def _finite(value: float) -> float | None:
  """JSON has no NaN: an undefined metric (see classification.py) is null."""
  return float(value) if math.isfinite(value) else None


def _json_value(value: Any) -> Any:
  """A hyper-parameter as JSON holds it: numbers, or a function's name."""
  if isinstance(value, np.generic):
    return value.item()
  return value.__name__ if callable(value) else value


def _named(params: Mapping[str, Any]) -> dict[str, Any]:
  """Grid keys -> `PARAM_NAMES`, values -> `_json_value`."""
  return {PARAM_NAMES[key]: _json_value(value)
          for key, value in params.items()}


def cross_validate(features: Any, labels: np.ndarray, search: Search,
                   folds: int, seed: int,
                   inner_repeats: int = INNER_REPEATS) -> CVResult:
  """Nested stratified cross-validation of one feature matrix.

  Args:
    features: (subjects, features), dense or sparse, as `search` takes them.
    labels: hand function, 0 or 1, one per subject.
    search: the model and the grid the inner CV chooses from.
    folds: outer folds.
    seed: shuffles the outer and inner folds.
    inner_repeats: repeats of the inner `INNER_FOLDS`-fold CV.

  Returns:
    The per-fold metrics and out-of-fold probabilities.
  """
  outer = model_selection.StratifiedKFold(folds, shuffle=True,
                                          random_state=seed)
  inner = model_selection.RepeatedStratifiedKFold(
      n_splits=INNER_FOLDS, n_repeats=inner_repeats, random_state=seed)
  prob = np.zeros(len(labels))
  fold_of = np.zeros(len(labels), int)
  results = []
  for fold, (train, test) in enumerate(outer.split(labels, labels)):
    grid_search = model_selection.GridSearchCV(
        search.model, search.grid, scoring=INNER_SCORING, cv=inner,
        error_score="raise",
        refit=functools.partial(one_standard_error_choice, search=search))
    # The fits are small: BLAS threads synchronise more than they compute
    # (one thread fitted 6x faster on a busy 2-core machine).
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
      grid_search.fit(features[train], labels[train])
    prob[test] = grid_search.predict_proba(features[test])[:, 1]
    fold_of[test] = fold
    results.append({
        "fold": fold, "n_train": int(train.size), "n_test": int(test.size),
        **_named(grid_search.best_params_),
        "n_features": int(
            grid_search.best_estimator_["logreg"].n_features_in_),
        "inner_scores": [_finite(score) for score
                         in grid_search.cv_results_["mean_test_score"]],
        "inner_score_stds": [_finite(std) for std
                             in grid_search.cv_results_["std_test_score"]],
        **classification_metrics(labels[test], prob[test], threshold=0.5),
    })
  # GridSearchCV scores its candidates in ParameterGrid order.
  candidates = [_named(params)
                for params in model_selection.ParameterGrid(search.grid)]
  return CVResult(results, candidates, prob, fold_of)


def _summary(values: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean and sample std (ddof=1, as launch/report.py uses) across folds."""
  values = np.asarray(values, dtype=float)
  return _finite(values.mean()), _finite(values.std(ddof=1))


def result_row(name: str, feature_set: str, masks: str, result: CVResult,
               subject_ids: Sequence[str],
               labels: np.ndarray) -> dict[str, Any]:
  """One row of the output JSON (the keys launch/report.py reads)."""
  row: dict[str, Any] = {"name": name, "features": feature_set,
                         "masks": masks}
  for metric in ("accuracy", "f1", "auc"):
    row[f"{metric}_mean"], row[f"{metric}_std"] = _summary(
        [f[metric] for f in result.folds])
  row["candidates"] = result.candidates
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
        downsample: Sequence[int] = BLOCK_FACTORS, seed: int = 0,
        inner_repeats: int = INNER_REPEATS) -> list[dict[str, Any]]:
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
    features[masks], grid = load_features(paths, grid)
  searches = {"matrix": matrix_search(grid.shape, sorted(set(downsample))),
              "lesion_load": lesion_load_search()}
  rows = []
  for masks, feature_sets in features.items():
    for feature_set in FEATURE_SETS:
      logging.info("nested %d-fold CV: %s on %s masks", folds, feature_set,
                   masks)
      result = cross_validate(feature_sets[feature_set], labels,
                              searches[feature_set], folds, seed,
                              inner_repeats)
      rows.append(result_row(
          f"{_ROW_NAMES[feature_set]} ({masks} masks)", feature_set, masks,
          result, subject_ids, labels))
  return rows


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "n/a"
  return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _feature_counts(row: Mapping[str, Any]) -> str:
  """Features the folds' models saw: one number, or the range across folds."""
  counts = [fold["n_features"] for fold in row["folds"]]
  low, high = min(counts), max(counts)
  return str(low) if low == high else f"{low}-{high}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows as a markdown table: mean ± std across outer folds."""
  lines = ["| baseline | subjects | features | accuracy | F1 | AUC |",
           "| --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    cells = [_cell(row[f"{m}_mean"], row[f"{m}_std"])
             for m in ("accuracy", "f1", "auc")]
    lines.append(f"| {row['name']} | {row['n_subjects']} | "
                 f"{_feature_counts(row)} | {' | '.join(cells)} |")
  return "\n".join(lines)
