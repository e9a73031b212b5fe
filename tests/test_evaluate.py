"""Whole-volume evaluation: brain mask, ignored voxels, unlabelled subjects."""

import jax
import numpy as np
import pytest

from configs import joint
from preprocessing import lesion_labels
from pvl_jax.evaluation import classification
from pvl_jax.evaluation import evaluate_run
from pvl_jax.evaluation import segmentation


def _everything_is_lesion(images):
  """A 'network' that marks every voxel, background included."""
  batch = images.shape[0]
  return (jax.numpy.ones(images.shape[:-1]),
          jax.numpy.zeros((batch,)))


def test_predict_split_discards_lesions_outside_the_brain():
  shape = (12, 10, 9)
  brain = np.zeros(shape, np.uint8)
  brain[3:9, 2:8, 2:7] = 1
  lesion = np.zeros(shape, np.uint8)
  lesion[4:6, 4:6, 3:5] = 1
  record = {"image": np.zeros(shape + (1,), np.float32),
            "lesion_mask": lesion, "brain_mask": brain, "hand_function": 1,
            "subject_id": b"sub-001", "spacing": np.ones(3, np.float32),
            "crop_start": np.zeros(3, np.int32)}
  config = joint.get_config("demo")
  config.data.patch_size = (8, 8, 8)
  split = evaluate_run.predict_split(jax.jit(_everything_is_lesion), [record],
                                 config, "test")
  np.testing.assert_array_equal(split["predictions"]["sub-001"], brain > 0)
  np.testing.assert_array_equal(split["references"]["sub-001"], lesion > 0)


def _record(subject, lesion, brain, hand_function=1):
  return {"image": np.zeros(lesion.shape + (1,), np.float32),
          "lesion_mask": lesion, "brain_mask": brain,
          "hand_function": hand_function, "subject_id": subject.encode(),
          "spacing": np.ones(3, np.float32),
          "crop_start": np.zeros(3, np.int32)}


def test_ignored_voxels_are_masked_out_of_the_scores():
  shape = (12, 10, 9)
  brain = np.zeros(shape, np.uint8)
  brain[1:11, 1:9, 1:8] = 1
  lesion = np.zeros(shape, np.uint8)
  lesion[4:6, 4:6, 3:5] = lesion_labels.LESION
  lesion[8:10, 2:4, 2:4] = lesion_labels.IGNORE
  config = joint.get_config("demo")
  config.data.patch_size = (8, 8, 8)
  split = evaluate_run.predict_split(
      jax.jit(_everything_is_lesion), [_record("sub-001", lesion, brain)],
      config, "test")
  np.testing.assert_array_equal(split["references"]["sub-001"], lesion == 1)
  row = evaluate_run.segmentation_results(split)["per_subject"][0]
  scored = (brain > 0) & (lesion != lesion_labels.IGNORE)
  expected = segmentation.evaluate_subject(scored, lesion == 1, (1, 1, 1))
  assert row["dice"] == expected["dice"] == pytest.approx(
      2 * 8 / (scored.sum() + 8))


def test_classification_leaves_unlabelled_subjects_out():
  def split(labels, probs):
    return {"labels": np.asarray(labels), "cls_prob": np.asarray(probs)}
  splits = {"val": split([0, 1, -1, 0, 1], [0.2, 0.9, 0.99, 0.3, 0.6]),
            "test": split([-1, 1, 0], [0.1, 0.8, 0.7])}
  results = {name: {"per_subject": [{} for _ in s["labels"]]}
             for name, s in splits.items()}
  evaluate_run.classification_results(splits, results)
  assert results["val"]["n_labelled"] == 4
  assert results["test"]["n_labelled"] == 2
  threshold = classification.choose_threshold([0, 1, 0, 1],
                                              [0.2, 0.9, 0.3, 0.6])
  assert results["test"]["cls_threshold"] == threshold
  assert results["test"]["cls_threshold_chosen_on"] == "validation"
  expected = classification.classification_metrics([1, 0], [0.8, 0.7],
                                                   threshold)
  assert results["test"]["cls_accuracy"] == expected["accuracy"]
  assert results["test"]["per_subject"][0]["hand_function_prob"] == 0.1


def test_classification_without_both_classes_in_validation():
  splits = {"val": {"labels": np.array([1, -1, 1]),
                    "cls_prob": np.array([0.4, 0.5, 0.7])},
            "test": {"labels": np.array([-1, -1]),
                     "cls_prob": np.array([0.1, 0.8])}}
  results = {name: {"per_subject": [{}] * len(s["labels"])}
             for name, s in splits.items()}
  evaluate_run.classification_results(splits, results)
  assert results["val"]["cls_threshold"] == 0.5
  assert results["val"]["cls_threshold_chosen_on"] == (
      "default (validation lacks a class)")
  assert results["test"]["n_labelled"] == 0
  assert "cls_accuracy" not in results["test"]
