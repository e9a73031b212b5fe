"""Nested cross-validation of logistic regression on mask features.

Model: the features, StandardScaler and L2 LogisticRegression, the
hyper-parameters chosen per outer fold by an inner repeated stratified grid
search with the one-standard-error rule; outer stratified subject-level
k-fold with a fixed seed. Each outer test fold is scored with
`classification_metrics` at threshold 0.5 on `predict_proba`.

  * The matrix model block-averages the flat masks (the fraction of lesion
    voxels per block, `block_features.BlockAverage`) and keeps the blocks
    lesioned in enough training subjects (`block_features.MinLesionFrequency`).
    A decision "lesion volume in some region >= v" is linear in these
    features, but with a few dozen subjects and thousands of blocks the
    block size and the frequency threshold matter as much as C, so the inner
    CV chooses all three.
  * The lesion-load model takes the regional volumes, log-transformed,
    log(1 + volume), as lesion loads conventionally are, or not: the inner CV
    chooses. A threshold on one region's volume is linear either way, but a
    sum of regions is linear only in volumes, while log loads temper subjects
    with huge lesions. The inner CV also chooses between all twelve loads and
    the two that motor-outcome studies use, the total and the
    corticospinal-tract load: on a 60-subject cohort the twelve correlated
    loads overfit (one outer fold fell to 0.25 accuracy).
"""

import dataclasses
import functools
import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import threadpoolctl
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing as sk_preprocessing
from sklearn.linear_model import LogisticRegression

from preprocessing.io.errors import InputError
from preprocessing.io.json_files import json_number
from pvl_jax.evaluation.classification import classification_metrics
from pvl_jax.handfunction import block_features
from pvl_jax.handfunction import features as features_lib

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
# Lesion-load transforms the inner CV chooses from (None: volumes as such).
VOLUME_TRANSFORMS = (np.log1p, None)


def total_and_tract(volumes: np.ndarray) -> np.ndarray:
  """The total and the (bilateral) tract columns of the loads."""
  return volumes[:, :len(features_lib.FIXED_LOADS)]


def all_regions(volumes: np.ndarray) -> np.ndarray:
  """Every column of the loads (`features.lesion_load_names`)."""
  return volumes


# Lesion-load subsets the inner CV chooses from, simplest first.
LESION_LOAD_SUBSETS = (total_and_tract, all_regions)
# Grid keys of the searches -> their names in the result rows.
PARAM_NAMES = {"logreg__C": "C", "block__factor": "downsample",
               "frequency__min_fraction": "min_lesion_fraction",
               "volumes__func": "volume_transform",
               "loads__func": "lesion_loads"}


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


def min_class_size(folds: int, inner_folds: int = INNER_FOLDS) -> int:
  """Subjects per class that nested stratified CV needs.

  Every outer test fold needs the class, and every outer training set (which
  lacks up to ceil(n / folds) of the class) needs it in every inner fold.
  """
  return next(n for n in itertools.count(folds)
              if n - math.ceil(n / folds) >= inner_folds)


def short_class(labels: np.ndarray) -> tuple[int, int] | None:
  """(label, count) of a class with fewer than `INNER_FOLDS` subjects.

  None when both classes fill the inner CV's folds.
  """
  for label in (0, 1):
    count = int(np.count_nonzero(labels == label))
    if count < INNER_FOLDS:
      return label, count
  return None


def check_class_sizes(labels: np.ndarray, folds: int, source: Path,
                      column: str = "hand_function") -> None:
  """Raises InputError naming `source` if a class is too small for the CV.

  `column` names the label in the message.
  """
  needed = min_class_size(folds)
  for label in (0, 1):
    count = int(np.count_nonzero(labels == label))
    if count < needed:
      raise InputError(
          f"{source}: {column}={label} has {count} subject(s), fewer "
          f"than the {needed} that {folds}-fold cross-validation (with "
          f"{INNER_FOLDS}-fold inner selection of hyper-parameters) needs "
          "per class")


def check_fold_class_sizes(labels: np.ndarray, fold_of: np.ndarray,
                           sources: Mapping[int, Path],
                           column: str = "hand_function") -> None:
  """Predefined outer folds: each training set needs every inner fold's class.

  `column` names the label in the message.

  Raises:
    InputError: naming the fold's source (the run whose test split it is).
  """
  for fold in np.unique(fold_of):
    short = short_class(labels[fold_of != fold])
    if short is not None:
      label, count = short
      raise InputError(
          f"{sources[int(fold)]}: outside this test split (fold {fold}) "
          f"{column}={label} has {count} subject(s), fewer than the "
          f"{INNER_FOLDS} that {INNER_FOLDS}-fold inner selection of "
          "hyper-parameters needs")


def _json_value(value: Any) -> Any:
  """A hyper-parameter as JSON holds it: numbers, or a function's name."""
  if isinstance(value, np.generic):
    return value.item()
  return value.__name__ if callable(value) else value


def _named(params: Mapping[str, Any]) -> dict[str, Any]:
  """Grid keys -> `PARAM_NAMES`, values -> `_json_value`."""
  return {PARAM_NAMES[key]: _json_value(value)
          for key, value in params.items()}


def fit_inner(search: Search, features: Any, labels: np.ndarray, seed: int,
              inner_repeats: int = INNER_REPEATS
              ) -> model_selection.GridSearchCV:
  """The inner CV: `search`'s grid chosen on `features` and refitted.

  Repeated stratified `INNER_FOLDS`-fold CV scored by `INNER_SCORING`, the
  candidate chosen by `one_standard_error_choice` and refitted on all of
  `features`.

  Args:
    search: the model and its grid.
    features: (subjects, features).
    labels: 0 or 1 per subject.
    seed: shuffles the inner folds.
    inner_repeats: repeats of the inner CV.
  """
  grid_search = model_selection.GridSearchCV(
      search.model, search.grid, scoring=INNER_SCORING,
      cv=model_selection.RepeatedStratifiedKFold(
          n_splits=INNER_FOLDS, n_repeats=inner_repeats, random_state=seed),
      error_score="raise",
      refit=functools.partial(one_standard_error_choice, search=search))
  # The fits are small: BLAS threads synchronise more than they compute
  # (one thread fitted 6x faster on a busy 2-core machine).
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    grid_search.fit(features, labels)
  return grid_search


def cross_validate(features: Any, labels: np.ndarray, search: Search,
                   folds: int | np.ndarray, seed: int,
                   inner_repeats: int = INNER_REPEATS,
                   trainable: Mapping[int, np.ndarray] | None = None
                   ) -> CVResult:
  """Nested stratified cross-validation of one feature matrix.

  Args:
    features: (subjects, features), dense or sparse, as `search` takes them.
    labels: hand function, 0 or 1, one per subject.
    search: the model and the grid the inner CV chooses from.
    folds: the number of stratified outer folds, or each subject's outer
      fold (predefined folds: the cross-fitted runs' test splits).
    seed: shuffles the stratified outer folds and the inner folds.
    inner_repeats: repeats of the inner `INNER_FOLDS`-fold CV.
    trainable: with predefined folds, per fold the (subjects,) mask of the
      subjects its model may train on (e.g. a run's train split, without
      its validation split); None: every subject outside the fold.

  Returns:
    The per-fold metrics and out-of-fold probabilities.
  """
  if np.ndim(folds):
    fold_ids = np.unique(folds)
    outer = model_selection.PredefinedSplit(np.asarray(folds))
  else:
    fold_ids = np.arange(folds)
    outer = model_selection.StratifiedKFold(folds, shuffle=True,
                                            random_state=seed)
  prob = np.zeros(len(labels))
  fold_of = np.zeros(len(labels), int)
  results = []
  for fold, (train, test) in zip(fold_ids.tolist(),
                                 outer.split(labels, labels)):
    if trainable is not None:
      train = train[trainable[fold][train]]
    grid_search = fit_inner(search, features[train], labels[train], seed,
                            inner_repeats)
    prob[test] = grid_search.predict_proba(features[test])[:, 1]
    fold_of[test] = fold
    results.append({
        "fold": fold, "n_train": int(train.size), "n_test": int(test.size),
        **_named(grid_search.best_params_),
        "n_features": int(
            grid_search.best_estimator_["logreg"].n_features_in_),
        "inner_scores": [json_number(score) for score
                         in grid_search.cv_results_["mean_test_score"]],
        "inner_score_stds": [json_number(std) for std
                             in grid_search.cv_results_["std_test_score"]],
        **classification_metrics(labels[test], prob[test], threshold=0.5),
    })
  # GridSearchCV scores its candidates in ParameterGrid order.
  candidates = [_named(params)
                for params in model_selection.ParameterGrid(search.grid)]
  return CVResult(results, candidates, prob, fold_of)
