"""TFDS builder: records, fold splits, determinism, no TensorFlow."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from preprocessing import tfds_builder
from preprocessing.io.errors import InputError


def test_no_tensorflow_needed(tiny_builder):
  del tiny_builder
  assert "tensorflow" not in sys.modules


def test_folds_partition_subjects_and_stratify(tiny_builder):
  ids, labels = [], []
  for k in range(5):
    source = tiny_builder.as_data_source(f"fold{k}")
    assert len(source) == 2
    for i in range(len(source)):
      ids.append(source[i]["subject_id"])
      labels.append(source[i]["hand_function"])
  assert sorted(ids) == [f"sub-{i:03d}".encode() for i in range(1, 11)]
  # Each fold's positives differ from the even share by at most one.
  per_fold = np.array(labels).reshape(5, 2).sum(axis=1)
  assert per_fold.max() - per_fold.min() <= 1


def test_split_arithmetic_and_fold_splits(tiny_builder):
  splits = tfds_builder.fold_splits(2, 5)
  assert splits == {"train": "fold0+fold1+fold4", "validation": "fold3",
                    "test": "fold2"}
  assert len(tiny_builder.as_data_source(splits["train"])) == 6
  with pytest.raises(ValueError, match="fold must be in"):
    tfds_builder.fold_splits(5, 5)


def test_record_contents(tiny_builder, tiny_cohort):
  from preprocessing.io import nifti
  source = tfds.data_source("pvl_cohort", data_dir=tiny_builder.data_dir_root,
                            split="fold0")
  record = source[0]
  sid = record["subject_id"].decode()
  raw, affine = nifti.load_volume(tiny_cohort / sid / "anat" /
                                     f"{sid}_FLAIR.nii.gz")
  start = record["crop_start"]
  stop = start + np.array(record["lesion_mask"].shape)
  assert record["image"].shape == record["lesion_mask"].shape + (1,)
  np.testing.assert_array_equal(record["original_shape"], raw.shape)
  np.testing.assert_allclose(record["spacing"], [2, 2, 2])
  # The cropped affine maps crop voxel 0 to the original voxel `start`.
  np.testing.assert_allclose(record["affine"][:3, 3],
                             affine[:3, :3] @ start + affine[:3, 3])
  # Z-scored inside the brain with statistics from the central 99% of the
  # in-brain intensities, and not clipped.
  brain = record["brain_mask"] > 0
  crop = tuple(slice(a, b) for a, b in zip(start, stop))
  values = raw[crop][brain]
  lo, hi = np.percentile(values, [0.5, 99.5])
  central = values[(values >= lo) & (values <= hi)]
  expected = (raw[crop] - central.mean()) / central.std()
  np.testing.assert_allclose(record["image"][..., 0][brain], expected[brain],
                             atol=1e-4)
  # The crop keeps the whole lesion.
  lesion, _ = nifti.load_volume(
      tiny_cohort / "derivatives" / "lesions" / sid / "anat" /
      f"{sid}_label-lesion_mask.nii.gz")
  assert record["lesion_mask"].sum() == lesion.sum() > 0
  assert stop.max() <= max(raw.shape)


def test_assign_folds_is_deterministic_and_order_free():
  ids = [f"sub-{i:03d}" for i in range(20)]
  labels = [i % 3 == 0 for i in range(20)]
  folds = tfds_builder.assign_folds(ids, labels, 4)
  again = tfds_builder.assign_folds(ids[::-1], labels[::-1], 4)[::-1]
  assert folds == again
  assert sorted(np.bincount(folds).tolist()) == [5, 5, 5, 5]


def test_too_few_subjects_for_folds():
  with pytest.raises(ValueError, match="cannot fill 5 folds"):
    tfds_builder.assign_folds(["sub-1", "sub-2"], [0, 1], 5)


def test_missing_cohort_is_a_clear_error(tmp_path):
  with pytest.raises(InputError, match="does not exist|not found|missing"):
    tfds_builder.build(tmp_path / "nope", tmp_path / "tfds")
