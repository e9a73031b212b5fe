"""TFDS builder: records, fold splits, determinism, no TensorFlow."""

import dataclasses
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from preprocessing import bids
from preprocessing import folds
from preprocessing import lesion_labels
from preprocessing import tfds_builder
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import splits
from tests import own_data


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
  names = splits.fold_splits(2, 5)
  assert names == {"train": "fold0+fold1+fold4", "validation": "fold3",
                   "test": "fold2"}
  assert len(tiny_builder.as_data_source(names["train"])) == 6
  assert splits.fold_splits(2, 5, predefined_test=True) == {
      "train": "fold0+fold1+fold3+fold4", "validation": "fold2",
      "test": "test"}
  with pytest.raises(ValueError, match="fold must be in"):
    splits.fold_splits(5, 5)
  assert tiny_builder.info.metadata[tfds_builder.FOLD_RULE] == (
      "5 folds stratified by hand_function")


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
  assigned = folds.stratified_folds(ids, labels, 4)
  again = folds.stratified_folds(ids[::-1], labels[::-1], 4)[::-1]
  assert assigned == again
  assert sorted(np.bincount(assigned).tolist()) == [5, 5, 5, 5]


def test_too_few_subjects_for_folds():
  with pytest.raises(ValueError, match="cannot fill 5 folds"):
    folds.stratified_folds(["sub-1", "sub-2"], [0, 1], 5)


def test_missing_cohort_is_a_clear_error(tmp_path):
  with pytest.raises(InputError, match="does not exist|not found|missing"):
    tfds_builder.build(tmp_path / "nope", tmp_path / "tfds")


# Sites, predefined test sets and unlabelled subjects (folds.assign).


def _subject(pid, label, split=None, site=None):
  return bids.Subject(participant_id=pid, hand_function=label, image_paths={},
                      lesion_mask_path=None, brain_mask_path=None,
                      split=split, site=site)


def _cohort(n=30, sites=6, split=False, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice([0, 1, None], n, p=[0.45, 0.45, 0.1])
  return [_subject(f"sub-{i:03d}", labels[i],
                   ("test" if i % 5 == 0 else "train") if split else None,
                   f"site{i % sites}" if sites else None)
          for i in range(n)]


def test_site_folds_group_sites_and_stratify():
  subjects = _cohort()
  assignment = folds.assign(subjects, 5, "hand_function", "p.tsv",
                            group_column="site")
  assert assignment.rule == ("5 folds stratified by hand_function, grouped by"
                             " site (StratifiedGroupKFold, data.group_column "
                             "= 'site')")
  fold_of_site = {}
  for s in subjects:
    fold_of_site.setdefault(s.site, set()).add(
        assignment.folds[s.participant_id])
  assert all(len(f) == 1 for f in fold_of_site.values())
  # Order-free and deterministic.
  again = folds.assign(subjects[::-1], 5, "hand_function", "p.tsv",
                       group_column="site")
  assert again.folds == assignment.folds


def test_two_sites_do_not_stop_a_default_run():
  """A two-centre study: 5 folds, each site and class spread over them."""
  subjects = _cohort(n=40, sites=2)
  assignment = folds.assign(subjects, 5, "hand_function", "p.tsv")
  assert assignment.rule == (
      "5 folds stratified by hand_function, balanced across sites (not "
      "grouped: data.group_column = '')")
  for site in ("site0", "site1"):
    members = [s for s in subjects if s.site == site]
    counts = np.bincount([assignment.folds[s.participant_id]
                          for s in members], minlength=5)
    # Each of the 3 classes is dealt evenly within a site: a site's fold
    # sizes differ by at most one per class.
    assert counts.min() > 0 and counts.max() - counts.min() <= 3, counts
  for label in (0, 1, None):
    counts = np.bincount([assignment.folds[s.participant_id]
                          for s in subjects if s.hand_function == label],
                         minlength=5)
    assert counts.max() - counts.min() <= 1, (label, counts)
  # Without the site column, the folds of earlier versions.
  plain = [dataclasses.replace(s, site=None) for s in subjects]
  ids = [s.participant_id for s in plain]
  labels = [-1 if s.hand_function is None else s.hand_function
            for s in plain]
  assert folds.assign(plain, 5, "hand_function", "p.tsv").folds == dict(
      zip(ids, folds.stratified_folds(ids, labels, 5)))


def test_grouping_by_site_needs_the_column_and_a_known_name():
  with pytest.raises(InputError, match="p.tsv: no site column to group"):
    folds.assign(_cohort(sites=0), 5, "hand_function", "p.tsv",
                 group_column="site")
  with pytest.raises(InputError, match="data.group_column: 'centre' is not"):
    folds.assign(_cohort(), 5, "hand_function", "p.tsv",
                 group_column="centre")


def test_predefined_test_set_is_kept_out_of_the_folds():
  subjects = _cohort(split=True, sites=0)
  assignment = folds.assign(subjects, 3, "grip", "p.tsv")
  test = {s.participant_id for s in subjects if s.split == "test"}
  assert {p for p, f in assignment.folds.items() if f == folds.TEST} == test
  assert set(assignment.folds.values()) == {0, 1, 2, folds.TEST}
  assert assignment.rule == ("predefined test set (split column, 6 "
                             "participants); the others in 3 folds stratified"
                             " by grip")


@pytest.mark.parametrize("subjects, problem", [
    ([_subject(f"sub-{i}", 0, "test") for i in range(6)],
     "the split column puts all 6 participants in the test set; none is left"
     " to train on"),
    ([_subject(f"sub-{i}", 0, "train") for i in range(6)],
     "the split column marks no participant as test"),
    ([_subject(f"sub-{i}", i % 2, site=f"s{i % 3}") for i in range(9)],
     "3 sites (s0, s1, s2) among the participants cannot fill 5 site-grouped"
     " folds; set data.num_folds to at most 3 or merge sites in the site "
     "column"),
    ([_subject(f"sub-{i}", 0) for i in range(3)],
     "3 of the participants cannot fill 5 folds; set data.num_folds lower"),
])
def test_fold_assignment_errors(subjects, problem):
  with pytest.raises(InputError) as info:
    folds.assign(subjects, 5, "hand_function", "p.tsv",
                 group_column="site" if subjects[0].site else "")
  assert str(info.value) == f"p.tsv: {problem}"


@pytest.fixture(scope="module")
def study_builder(tmp_path_factory):
  root = own_data.write_study(tmp_path_factory.mktemp("study") / "study")
  config = tfds_builder.PVLCohortConfig(name="ignore2", ignore_label=2)
  return root, tfds_builder.build(root, tmp_path_factory.mktemp("tfds"),
                                  config)


def _records(builder):
  return [source[i] for name in builder.info.splits
          for source in [builder.as_data_source(name)]
          for i in range(len(source))]


def test_study_records(study_builder):
  root, builder = study_builder
  records = {r["subject_id"].decode(): r for r in _records(builder)}
  assert len(records) == own_data.NUM_SUBJECTS
  assert builder.info.metadata[tfds_builder.FOLD_RULE] == (
      "5 folds stratified by hand_function, balanced across sites (not "
      "grouped: data.group_column = '')")
  for pid, record in records.items():
    subject = {s.participant_id: s for s in bids.load_cohort(root)}[pid]
    assert record["hand_function"] == (
        -1 if pid in own_data.UNLABELLED else subject.hand_function)
    assert record["brain_mask_source"] == b"nonzero rule"
    mask, _ = nifti.load_volume(subject.lesion_mask_path)
    start = record["crop_start"]
    crop = tuple(slice(a, a + n) for a, n in
                 zip(start, record["lesion_mask"].shape))
    expected = np.select([mask[crop] == 2, mask[crop] == 1],
                         [lesion_labels.IGNORE, lesion_labels.LESION], 0)
    np.testing.assert_array_equal(record["lesion_mask"], expected)
    # The whole labelled volume is inside the crop.
    assert (mask > 0).sum() == (record["lesion_mask"] > 0).sum()
  assert (records["sub-002"]["lesion_mask"] == lesion_labels.IGNORE).any()


def test_without_ignore_label_label_two_is_refused(study_builder, tmp_path):
  root, _ = study_builder
  with pytest.raises(InputError, match=(
      r"sub-0\d\d_ses-01_label-lesion_mask.nii.gz: lesion mask holds values "
      r"other than 0, 1 \(e.g. 2\); set data.mask_threshold")):
    tfds_builder.build(root, tmp_path / "tfds")
  assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_predefined_test_split_written(study_builder, tmp_path):
  root, _ = study_builder
  cohort = tmp_path / "study"
  shutil.copytree(root, cohort)
  tsv = cohort / "participants.tsv"
  lines = tsv.read_text().splitlines()
  test_ids = ("sub-003", "sub-008", "sub-012")
  lines = [lines[0] + "\tsplit"] + [
      line + ("\ttest" if line.split("\t")[0] in test_ids else "\ttrain")
      for line in lines[1:]]
  tsv.write_text("\n".join(lines) + "\n")
  builder = tfds_builder.build(
      cohort, tmp_path / "tfds", tfds_builder.PVLCohortConfig(
          name="split", ignore_label=2, num_folds=3))
  test = builder.as_data_source("test")
  assert sorted(test[i]["subject_id"].decode()
                for i in range(len(test))) == list(test_ids)
  assert splits.has_predefined_test(builder.info)
