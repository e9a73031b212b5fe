"""Paired bootstrap confidence intervals of hand-function metrics.

Several classifiers (e.g. the joint model and the logistic-regression
baselines) predict the same subjects. Resampling subjects with replacement
(`scipy.stats.bootstrap`, paired: one draw of subjects serves every
classifier) gives, per resample, each classifier's accuracy, F1 and AUC
(`classification.decision_metrics`) and so the differences between them on
the same subjects; the 95% interval is the 2.5th to 97.5th percentile of
those values (the percentile bootstrap). A resample in which a metric is
undefined (a single class for the AUC; no positive label or decision for F1)
is left out of that metric's interval, and the count of resamples it rests on
is kept (`Interval.resamples`).
"""

import dataclasses
import math
from typing import Any, Mapping, Sequence
import warnings

import numpy as np
from scipy import stats

from pvl_jax.evaluation import classification

METRICS = ("accuracy", "f1", "auc")
RESAMPLES = 2000
# Fewer resamples make the 2.5th and 97.5th percentiles a handful of values.
MIN_RESAMPLES = 100
CONFIDENCE = 0.95
UNDEFINED = "n/a"


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One classifier's predictions of the subjects.

  Attributes:
    prob: probability of label 1 (ranks the subjects for the AUC).
    decision: the predicted label (its own threshold(s) applied).
  """
  prob: np.ndarray
  decision: np.ndarray


@dataclasses.dataclass(frozen=True)
class Interval:
  """A metric (or difference) on all subjects and its bootstrap interval.

  Attributes:
    estimate: the value on the subjects themselves (NaN: undefined).
    low, high: the interval (NaN when no resample defines it).
    resamples: resamples in which the value was defined.
  """
  estimate: float
  low: float
  high: float
  resamples: int


def _interval(estimate: float, values: np.ndarray,
              confidence: float) -> Interval:
  values = values[np.isfinite(values)]
  if not values.size:
    return Interval(float(estimate), np.nan, np.nan, 0)
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(values, [tail, 100 - tail])
  return Interval(float(estimate), float(low), float(high), int(values.size))


def paired_intervals(
    labels: np.ndarray, predictions: Mapping[str, Prediction],
    pairs: Sequence[tuple[str, str]], n_resamples: int = RESAMPLES,
    seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, dict[str, Interval]]:
  """Each classifier's metrics and the pairs' differences, with intervals.

  Args:
    labels: 0/1, one per subject.
    predictions: classifier name -> its predictions of the same subjects.
    pairs: (a, b) classifier names; the differences are a minus b.
    n_resamples: bootstrap resamples of the subjects.
    seed: seeds the resampling (same seed, same intervals).
    confidence: the intervals' coverage.

  Returns:
    {name: {metric: Interval}} for every classifier, and for every pair
    under the key "a - b".
  """
  names = list(predictions)
  arrays = [np.asarray(labels)]
  for name in names:
    arrays += [np.asarray(predictions[name].prob, float),
               np.asarray(predictions[name].decision).astype(int)]

  def statistic(y: np.ndarray, *columns: np.ndarray) -> np.ndarray:
    values = []
    for prob, decision in zip(columns[::2], columns[1::2]):
      # A resample may hold one class only: the metric is then undefined.
      found = classification.decision_metrics(y, prob, decision)
      values += [found[metric] for metric in METRICS]
    return np.array(values)

  with warnings.catch_warnings():
    # Undefined resamples are expected (see the module docstring); scipy's
    # own interval, which they would make NaN, is not used.
    warnings.simplefilter("ignore", stats.DegenerateDataWarning)
    result = stats.bootstrap(
        tuple(arrays), statistic, paired=True, vectorized=False,
        n_resamples=n_resamples, method="percentile",
        confidence_level=confidence, rng=np.random.default_rng(seed))
  shape = (len(names), len(METRICS))
  estimate = statistic(*arrays).reshape(shape)
  samples = result.bootstrap_distribution.reshape(shape + (n_resamples,))
  out = {name: {metric: _interval(estimate[i, j], samples[i, j], confidence)
                for j, metric in enumerate(METRICS)}
         for i, name in enumerate(names)}
  for a, b in pairs:
    i, k = names.index(a), names.index(b)
    out[f"{a} - {b}"] = {
        metric: _interval(estimate[i, j] - estimate[k, j],
                          samples[i, j] - samples[k, j], confidence)
        for j, metric in enumerate(METRICS)}
  return out


def format_interval(interval: Mapping[str, Any], resamples: int,
                    signed: bool = False) -> str:
  """An `Interval` (as a dict) as `estimate [low, high]`.

  The count of resamples is added when some left the value undefined;
  `UNDEFINED` when the estimate itself is (None in JSON, or NaN).
  """
  estimate = interval["estimate"]
  if estimate is None or math.isnan(estimate):
    return UNDEFINED
  sign = "+" if signed else ""
  text = f"{estimate:{sign}.3f}"
  if interval["resamples"]:
    text += f" [{interval['low']:{sign}.3f}, {interval['high']:{sign}.3f}]"
  if interval["resamples"] < resamples:
    text += f" ({interval['resamples']} resamples)"
  return text
