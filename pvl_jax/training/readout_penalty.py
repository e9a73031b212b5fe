"""The located head's read-out penalty, chosen on the training split.

With the reference masks in place of the network's map the located head is
logistic regression on block fractions (`models.located_head`), so its
read-out L2 is logistic regression's C in other units: scikit-learn
minimises C * sum_i BCE_i + |w|^2 / 2 over n subjects, the head
mean_i BCE_i + l2 * |w|^2 (L_cls over batches that sample the training
subjects evenly); the same minimiser at l2 = 1 / (2 C n).

C is chosen the way the baseline chooses it (`handfunction.nested_cv`): the
log loss of a repeated stratified inner CV, with the one-standard-error rule
towards the smaller C, on the training split's reference masks -- what a
study of real patients has before training. The head reads raw fractions,
not standardised ones, so the grid reaches larger C than the baseline's.
"""

import dataclasses
import math

import numpy as np
from sklearn import pipeline
from sklearn.linear_model import LogisticRegression

from preprocessing.io.errors import InputError
from pvl_jax.handfunction import nested_cv

# Raw block fractions are mostly far below 1 (a block of 64 voxels with a
# few lesion voxels), so useful C lie above the standardised baseline's
# 1e-4..1e2.
C_GRID = tuple(10.0**e for e in range(-2, 6))
# The config value that asks for the choice (`model.cls_readout_l2`).
CHOOSE = -1.0


@dataclasses.dataclass(frozen=True)
class ReadoutPenalty:
  """The chosen penalty and what chose it.

  Attributes:
    l2: the head's `model.cls_readout_l2`, 1 / (2 C n).
    C: logistic regression's inverse regularisation strength chosen.
    subjects: n, the labelled training subjects it was chosen on.
    blocks: the blocks some of them have a lesion in (the features).
    inner_log_loss: mean inner-CV log loss per C of `C_GRID`.
  """
  l2: float
  C: float
  subjects: int
  blocks: int
  inner_log_loss: tuple[float, ...]


def choose(fractions: np.ndarray, labels: np.ndarray, seed: int
           ) -> ReadoutPenalty:
  """Chooses the read-out L2 on the training subjects' reference masks.

  Args:
    fractions: (subjects, blocks) lesion fraction per template block
      (`template_blocks.lesion_block_fractions`).
    labels: hand function per subject, 0, 1 or -1 (unlabelled: left out,
      as from L_cls).
    seed: shuffles the inner folds.

  Raises:
    InputError: a class has fewer labelled training subjects than the inner
      folds need, naming `model.cls_readout_l2`.
  """
  labelled = labels >= 0
  features, labels = fractions[labelled], labels[labelled]
  short = nested_cv.short_class(labels)
  if short is not None:
    raise InputError(
        f"model.cls_readout_l2={CHOOSE:g} chooses the read-out penalty by "
        f"{nested_cv.INNER_FOLDS}-fold CV on the training split, which has "
        f"{short[1]} subject(s) with hand_function={short[0]}; set "
        "model.cls_readout_l2 to a value > 0")
  features = features[:, np.any(features > 0, axis=0)]
  search = nested_cv.Search(
      pipeline.Pipeline([("logreg", LogisticRegression(
          max_iter=nested_cv.MAX_ITER))]),
      {"logreg__C": list(C_GRID)})
  grid_search = nested_cv.fit_inner(search, features, labels, seed)
  c = float(grid_search.best_params_["logreg__C"])
  return ReadoutPenalty(
      l2=1.0 / (2.0 * c * len(labels)), C=c, subjects=len(labels),
      blocks=features.shape[1],
      inner_log_loss=tuple(
          -float(s) for s in grid_search.cv_results_["mean_test_score"]))


def describe(penalty: ReadoutPenalty) -> str:
  """One log line: the value and what chose it."""
  return (f"located head: read-out L2 {penalty.l2:.3g} (C={penalty.C:g} by "
          f"{nested_cv.INNER_FOLDS}-fold inner CV x{nested_cv.INNER_REPEATS} "
          f"on {penalty.subjects} training subjects' reference masks, "
          f"{penalty.blocks} lesioned blocks; inner log loss "
          f"{min(penalty.inner_log_loss):.3f} at best)")


def is_chosen(value: float) -> bool:
  """Whether a `model.cls_readout_l2` asks for the choice."""
  return math.isclose(value, CHOOSE)
