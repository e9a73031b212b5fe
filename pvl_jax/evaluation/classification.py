"""Hand-function classification metrics (label 1 = the positive class).

Predictions are probabilities of the positive class; a subject is predicted
positive when its probability is >= the threshold. Undefined values are NaN,
not 0, so that they cannot pass for a score:
  * auc is NaN when y_true holds only one class (ROC AUC needs both);
  * f1 is NaN when there are neither positive labels nor positive predictions
    (no true positive, false positive or false negative to score).
"""

import math

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics


def _check_inputs(y_true: ArrayLike,
                  prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Checks labels in {0, 1} and probabilities in [0, 1], one per subject."""
  y_true = np.asarray(y_true)
  prob = np.asarray(prob, dtype=float)
  if y_true.ndim != 1 or prob.ndim != 1:
    raise ValueError(f"y_true and prob must be 1D, got shapes {y_true.shape} "
                     f"and {prob.shape}")
  if y_true.size != prob.size:
    raise ValueError(f"length mismatch: {y_true.size} labels vs "
                     f"{prob.size} probabilities")
  if y_true.size == 0:
    raise ValueError("no subjects: y_true and prob are empty")
  if not np.all((y_true == 0) | (y_true == 1)):
    raise ValueError(
        f"labels must be 0 or 1, got values {np.unique(y_true).tolist()}")
  if not np.all((prob >= 0) & (prob <= 1)):  # False for NaN too.
    raise ValueError("probabilities must lie in [0, 1] and not be NaN")
  return y_true.astype(int), prob


def _check_threshold(threshold: float) -> None:
  if not 0 <= threshold <= 1:
    raise ValueError(f"threshold must lie in [0, 1], got {threshold}")


def classification_metrics(
    y_true: ArrayLike, prob: ArrayLike, threshold: float = 0.5
) -> dict[str, float]:
  """Accuracy, F1 and ROC AUC of one set of predictions.

  Args:
    y_true: Labels, 0 or 1, one per subject.
    prob: Predicted probability of label 1, one per subject.
    threshold: Predict 1 where prob >= threshold.

  Returns:
    Dict with accuracy, f1 (of class 1), auc (threshold-free), n (subjects)
    and n_pos (subjects labelled 1); see the module docstring for NaNs.
  """
  _check_threshold(threshold)
  return decision_metrics(y_true, prob, np.asarray(prob) >= threshold)


def decision_metrics(y_true: ArrayLike, prob: ArrayLike,
                     y_pred: ArrayLike) -> dict[str, float]:
  """`classification_metrics` of given decisions (e.g. per-fold thresholds).

  Args:
    y_true: Labels, 0 or 1, one per subject.
    prob: Predicted probability of label 1 (for the AUC).
    y_pred: The decisions, bool or 0/1, one per subject.
  """
  y_true, prob = _check_inputs(y_true, prob)
  y_pred = np.asarray(y_pred).astype(int)
  if y_pred.shape != y_true.shape:
    raise ValueError(f"length mismatch: {y_true.size} labels vs "
                     f"{y_pred.size} decisions")
  if np.unique(y_true).size == 2:
    auc = float(metrics.roc_auc_score(y_true, prob))
  else:
    auc = math.nan
  return {
      "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
      "f1": float(metrics.f1_score(y_true, y_pred, zero_division=np.nan)),
      "auc": auc,
      "n": int(y_true.size),
      "n_pos": int(y_true.sum()),
  }


def choose_threshold(y_true: ArrayLike, prob: ArrayLike) -> float:
  """Picks the decision threshold on validation data by balanced accuracy.

  Candidates are the midpoints between consecutive sorted unique
  probabilities, plus 0.5. Balanced accuracy, rather than accuracy, keeps the
  minority class from being ignored on small, unbalanced cohorts. Ties go to
  the candidate closest to 0.5 (the threshold without tuning), then to the
  lower one.

  Args:
    y_true: Validation labels, 0 or 1; both classes must be present.
    prob: Predicted probability of label 1, one per subject.

  Returns:
    The chosen threshold.
  """
  y_true, prob = _check_inputs(y_true, prob)
  if np.unique(y_true).size < 2:
    raise ValueError("choose_threshold needs both classes in y_true")
  levels = np.unique(prob)
  candidates = np.unique(np.append((levels[:-1] + levels[1:]) / 2, 0.5))
  scores = np.array([
      metrics.balanced_accuracy_score(y_true, (prob >= t).astype(int))
      for t in candidates
  ])
  best = candidates[scores == scores.max()]
  return float(min(best, key=lambda t: (abs(t - 0.5), t)))
