"""Paired bootstrap intervals against an independent resampling in numpy."""

import numpy as np
import pytest
from scipy import stats

from pvl_jax.evaluation import bootstrap

N = 40
RESAMPLES = 1000


def _problem(seed: int = 0):
  """Labels and two classifiers, the first better than the second."""
  rng = np.random.default_rng(seed)
  labels = np.arange(N) % 2
  good = np.clip(0.5 + 0.35 * (2 * labels - 1) + rng.normal(0, 0.25, N),
                 0, 1)
  poor = np.clip(0.5 + 0.1 * (2 * labels - 1) + rng.normal(0, 0.25, N), 0, 1)
  # The first decides at a threshold of its own (as the joint model does).
  return labels, {"good": bootstrap.Prediction(good, good >= 0.4),
                  "poor": bootstrap.Prediction(poor, poor >= 0.5)}


def _metrics(y, prob, decision):
  """Accuracy, F1 and AUC from their definitions (AUC: Mann-Whitney U)."""
  tp = np.sum((decision == 1) & (y == 1))
  fp = np.sum((decision == 1) & (y == 0))
  fn = np.sum((decision == 0) & (y == 1))
  ranks = stats.rankdata(prob)
  pos = y.sum()
  neg = y.size - pos
  auc = ((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)
         if pos and neg else np.nan)
  f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan
  return np.array([np.mean(decision == y), f1, auc])


def _numpy_intervals(labels, predictions, seed=123):
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, N, (RESAMPLES, N))
  good, poor = predictions["good"], predictions["poor"]
  values = np.array([
      [_metrics(labels[d], good.prob[d], good.decision[d]),
       _metrics(labels[d], poor.prob[d], poor.decision[d])] for d in draws])
  difference = values[:, 0] - values[:, 1]
  return (np.nanpercentile(values[:, 0], [2.5, 97.5], axis=0),
          np.nanpercentile(difference, [2.5, 97.5], axis=0))


def test_intervals_match_an_independent_bootstrap():
  labels, predictions = _problem()
  found = bootstrap.paired_intervals(labels, predictions, [("good", "poor")],
                                     n_resamples=RESAMPLES)
  good, difference = _numpy_intervals(labels, predictions)
  for j, metric in enumerate(bootstrap.METRICS):
    estimate = _metrics(labels, predictions["good"].prob,
                        predictions["good"].decision)[j]
    assert found["good"][metric].estimate == pytest.approx(estimate)
    # Two bootstraps of 1000 resamples: percentiles agree to Monte Carlo
    # error (about 0.01 here).
    assert found["good"][metric].low == pytest.approx(good[0, j], abs=0.03)
    assert found["good"][metric].high == pytest.approx(good[1, j], abs=0.03)
    pair = found["good - poor"][metric]
    assert pair.low == pytest.approx(difference[0, j], abs=0.04)
    assert pair.high == pytest.approx(difference[1, j], abs=0.04)
    assert pair.low <= pair.estimate <= pair.high
    assert pair.resamples == RESAMPLES
  # The better classifier's AUC is better beyond doubt on 40 subjects.
  assert found["good - poor"]["auc"].low > 0


def test_identical_classifiers_differ_by_exactly_zero():
  labels, predictions = _problem()
  same = {"a": predictions["poor"], "b": predictions["poor"]}
  found = bootstrap.paired_intervals(labels, same, [("a", "b")],
                                     n_resamples=50)
  for metric in bootstrap.METRICS:
    assert (found["a - b"][metric].low, found["a - b"][metric].high) == (0, 0)


def test_fixed_seed_gives_fixed_intervals():
  labels, predictions = _problem()
  def run(seed):
    return bootstrap.paired_intervals(labels, predictions, [("good", "poor")],
                                      n_resamples=50, seed=seed)
  assert run(0) == run(0)
  assert run(0) != run(1)


def test_undefined_resamples_are_left_out_and_counted():
  # One subject of four is positive: a resample misses it with probability
  # (3/4)^4 = 0.32, and then has neither AUC nor F1 (the classifier says no
  # to everyone else); one of (1/4)^4 = 1/256 holds it only: no AUC.
  labels = np.array([0, 0, 0, 1])
  prob = np.array([0.1, 0.2, 0.3, 0.9])
  found = bootstrap.paired_intervals(
      labels, {"a": bootstrap.Prediction(prob, prob >= 0.5)}, [],
      n_resamples=RESAMPLES)
  defined = found["a"]["auc"].resamples
  assert abs(defined / RESAMPLES - (1 - 0.75**4 - 0.25**4)) < 0.05
  assert 0 <= found["a"]["f1"].resamples - defined <= 15
  assert found["a"]["accuracy"].resamples == RESAMPLES
  assert found["a"]["auc"].low == found["a"]["auc"].high == 1.0
