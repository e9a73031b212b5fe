"""Tests of pvl_jax.evaluation.classification against hand-computed values."""

import math

import pytest

from pvl_jax.evaluation import classification as cls

# Six subjects; sorted by probability (label in brackets):
# 0.1 (0), 0.35 (1), 0.4 (0), 0.6 (0), 0.8 (1), 0.9 (1).
Y = [0, 0, 0, 1, 1, 1]
PROB = [0.1, 0.4, 0.6, 0.35, 0.8, 0.9]


def test_metrics_by_hand_at_default_threshold():
  # Predicted positive: 0.6, 0.8, 0.9 -> TP 2, FP 1, FN 1, TN 2.
  # AUC: of the 9 (positive, negative) pairs, 0.35 beats 1 and 0.8, 0.9 beat
  # all 3 -> 7/9.
  result = cls.classification_metrics(Y, PROB)
  assert result == {
      "accuracy": pytest.approx(4 / 6),
      "f1": pytest.approx(2 / 3),
      "auc": pytest.approx(7 / 9),
      "n": 6,
      "n_pos": 3,
  }


def test_metrics_by_hand_at_lower_threshold():
  # Threshold 0.3: all but 0.1 positive -> TP 3, FP 2, FN 0, TN 1;
  # precision 3/5, recall 1, F1 = 2 * 0.6 / 1.6 = 0.75. AUC is unchanged.
  result = cls.classification_metrics(Y, PROB, threshold=0.3)
  assert result["accuracy"] == pytest.approx(4 / 6)
  assert result["f1"] == pytest.approx(0.75)
  assert result["auc"] == pytest.approx(7 / 9)


def test_threshold_is_inclusive():
  assert cls.classification_metrics([0, 1], [0.2, 0.5])["accuracy"] == 1.0


def test_one_class_gives_nan_auc():
  result = cls.classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
  assert math.isnan(result["auc"])
  assert result["f1"] == 0.0  # One false positive, nothing right: defined, 0.
  assert result["accuracy"] == pytest.approx(2 / 3)
  assert result["n_pos"] == 0


def test_no_positive_labels_or_predictions_gives_nan_f1():
  result = cls.classification_metrics([0, 0], [0.1, 0.2])
  assert math.isnan(result["f1"])
  assert result["accuracy"] == 1.0


def test_choose_threshold_by_hand():
  # Candidates 0.225, 0.375, 0.5, 0.7, 0.85 have balanced accuracies
  # (1 + 1/3)/2, (2/3 + 1/3)/2, (2/3 + 2/3)/2, (2/3 + 1)/2, (1/3 + 1)/2.
  assert cls.choose_threshold(Y, PROB) == pytest.approx(0.7)


def test_choose_threshold_separable():
  # Only the midpoint between 0.65 and 0.8 separates the classes; 0.5 does not.
  threshold = cls.choose_threshold([0, 0, 1, 1], [0.6, 0.65, 0.8, 0.9])
  assert threshold == pytest.approx(0.725)


def test_choose_threshold_prefers_half_on_ties():
  # 0.45 and 0.5 both separate the classes; 0.5 is kept.
  assert cls.choose_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == 0.5


def test_choose_threshold_equidistant_tie_takes_lower():
  # Candidates 0.3125, 0.5, 0.6875 (exact in binary): the outer two both score
  # 0.75 balanced accuracy, 0.5 scores 0.5; both are 0.1875 from 0.5.
  threshold = cls.choose_threshold([0, 1, 0, 1], [0.25, 0.375, 0.625, 0.75])
  assert threshold == 0.3125


@pytest.mark.parametrize(
    "y_true, prob, message",
    [
        ([0, 1, 1], [0.2, 0.8], "length mismatch"),
        ([0, 2], [0.2, 0.8], "labels must be 0 or 1"),
        ([0, 1], [0.2, 1.2], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.8], r"\[0, 1\]"),
        ([0, 1], [math.nan, 0.8], "NaN"),
        ([], [], "empty"),
        ([[0, 1]], [[0.2, 0.8]], "1D"),
    ],
)
def test_bad_input_is_rejected(y_true, prob, message):
  with pytest.raises(ValueError, match=message):
    cls.classification_metrics(y_true, prob)
  with pytest.raises(ValueError, match=message):
    cls.choose_threshold(y_true, prob)


def test_bad_threshold_and_single_class_threshold_choice_are_rejected():
  with pytest.raises(ValueError, match="threshold"):
    cls.classification_metrics(Y, PROB, threshold=1.5)
  with pytest.raises(ValueError, match="both classes"):
    cls.choose_threshold([1, 1], [0.2, 0.8])
