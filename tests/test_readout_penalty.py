"""The located head's read-out penalty chosen on the training split."""

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import special
from sklearn import metrics
from sklearn import model_selection
from sklearn.linear_model import LogisticRegression

from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import nested_cv
from pvl_jax.training import config_validation
from pvl_jax.training import readout_penalty


def _cohort(seed=0, subjects=40, blocks=30):
  """Sparse block fractions; the label follows two blocks, with noise."""
  rng = np.random.default_rng(seed)
  fractions = rng.random((subjects, blocks)) * (rng.random((subjects, blocks))
                                                < 0.3) * 0.2
  fractions[:, -3:] = 0  # never lesioned: no feature
  score = 30 * (fractions[:, 0] + fractions[:, 1]) + rng.normal(0, 1,
                                                                subjects)
  return fractions.astype(np.float32), (score > np.median(score)).astype(int)


def test_l2_is_logistic_regressions_c_per_subject():
  """mean BCE + l2 |w|^2 at l2 = 1 / (2 C n) has scikit-learn's minimiser."""
  fractions, labels = _cohort()
  fractions = fractions.astype(np.float64)
  c = 30.0
  l2 = 1.0 / (2 * c * len(labels))
  sign = 2 * labels - 1

  def objective(params):
    logits = fractions @ params[:-1] + params[-1]
    return (np.mean(np.logaddexp(0, -sign * logits))
            + l2 * params[:-1] @ params[:-1])

  def gradient(params):
    logits = fractions @ params[:-1] + params[-1]
    d_logit = -sign * special.expit(-sign * logits) / len(labels)
    return np.append(fractions.T @ d_logit + 2 * l2 * params[:-1],
                     d_logit.sum())

  head = optimize.minimize(objective, np.zeros(fractions.shape[1] + 1),
                           jac=gradient, method="L-BFGS-B",
                           options=dict(gtol=1e-12, ftol=1e-15,
                                        maxiter=20000))
  sklearn = LogisticRegression(C=c, solver="newton-cg", tol=1e-12,
                               max_iter=20000).fit(
      fractions, labels)
  np.testing.assert_allclose(head.x[:-1], sklearn.coef_[0], atol=2e-4)
  assert head.x[-1] == pytest.approx(sklearn.intercept_[0], abs=2e-4)


def _choice_by_hand(fractions, labels, seed):
  """Inner CV log loss per C and the one-standard-error rule, written out."""
  features = fractions[:, fractions.max(axis=0) > 0]
  splits = list(model_selection.RepeatedStratifiedKFold(
      n_splits=nested_cv.INNER_FOLDS, n_repeats=nested_cv.INNER_REPEATS,
      random_state=seed).split(features, labels))
  losses = np.array([[metrics.log_loss(labels[test], LogisticRegression(
      C=c, max_iter=nested_cv.MAX_ITER).fit(features[train], labels[train])
      .predict_proba(features[test])[:, 1], labels=[0, 1])
                      for train, test in splits]
                     for c in readout_penalty.C_GRID])
  mean = losses.mean(axis=1)
  best = int(np.argmin(mean))
  margin = losses[best].std() / math.sqrt(len(splits))
  return readout_penalty.C_GRID[int(np.flatnonzero(
      mean <= mean[best] + margin)[0])], mean


def test_choice_is_the_inner_cv_one_standard_error_rule():
  fractions, labels = _cohort(seed=3)
  expected_c, mean_loss = _choice_by_hand(fractions, labels, seed=5)
  penalty = readout_penalty.choose(fractions, labels, seed=5)
  assert penalty.C == expected_c
  assert penalty.l2 == pytest.approx(1 / (2 * expected_c * len(labels)))
  assert (penalty.subjects, penalty.blocks) == (40, 27)
  np.testing.assert_allclose(penalty.inner_log_loss, mean_loss, rtol=1e-6)
  # Neither end of the grid: the label follows two blocks, and noise.
  assert readout_penalty.C_GRID[0] < penalty.C < readout_penalty.C_GRID[-1]
  assert "C=" in readout_penalty.describe(penalty)


def test_unlabelled_subjects_stay_out_of_the_choice():
  fractions, labels = _cohort(seed=1)
  extra = np.random.default_rng(9).random((6, fractions.shape[1]),
                                          np.float32)
  with_unlabelled = readout_penalty.choose(
      np.concatenate([fractions, extra]),
      np.concatenate([labels, -np.ones(6, int)]), seed=0)
  assert with_unlabelled == readout_penalty.choose(fractions, labels, seed=0)


def test_too_few_subjects_of_a_class_name_the_key():
  fractions, labels = _cohort()
  labels[:] = 0
  labels[:4] = 1
  with pytest.raises(InputError, match=r"model.cls_readout_l2=-1 chooses .* "
                     r"4 subject\(s\) with hand_function=1; set "
                     r"model.cls_readout_l2 to a value > 0"):
    readout_penalty.choose(fractions, labels, seed=0)


@pytest.mark.parametrize("value, ok", [(-1.0, True), (0.0, False),
                                       (1e-3, True), (-0.5, False)])
def test_config_accepts_a_penalty_or_the_choice(value, ok):
  config = joint.get_config("demo")
  config.model.cls_head = "located"
  config.model.cls_readout_l2 = value
  if ok:
    config_validation.validate_config(config)
  else:
    with pytest.raises(InputError, match=r"model.cls_readout_l2.*must be > "
                       r"0, or -1 to choose it"):
      config_validation.validate_config(config)
