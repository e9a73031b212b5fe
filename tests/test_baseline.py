"""Tests of the logistic-regression hand-function baseline."""

import dataclasses
import itertools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse
from sklearn import model_selection

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import block_features
from pvl_jax.handfunction import features
from pvl_jax.handfunction import nested_cv
from pvl_jax.handfunction import regions
from tests import fake_runs

SHAPE = (12, 12, 12)
VOXEL_MM = 8.0
# Voxel centres x -44..44, y -60..28, z -12..76 mm (MNI).
AFFINE = np.diag([VOXEL_MM] * 3 + [1.0])
AFFINE[:3, 3] = (-44.0, -60.0, -12.0)
# The motor spot that decides hand function: voxels x -28..-20, y -28..-12,
# z 12..36 mm; every 2^3 cube in it reaches the left corticospinal tract
# region (voxels x 2-3, y 5, z 3-5 of this grid).
SPOT = (slice(2, 4), slice(4, 7), slice(3, 7))
# Distractor lesions lie in the front of the grid, y >= 4 mm.
FRONT = (slice(None), slice(8, 12), slice(None))
NUM_SUBJECTS = 40
IDS = [f"sub-{i:03d}" for i in range(1, NUM_SUBJECTS + 1)]
LABEL_NOISE = 0.05
NUM_DISTRACTORS = 2  # at most, per subject
# The searches of the learning tests: a coarser grid than the CLI's and one
# inner repeat keep them fast.
TEST_GRID = {"block__factor": [2, 4], "frequency__min_fraction": [0.0, 0.2],
             "logreg__C": [1e-2, 1.0, 1e2]}
# The 2 mm MNI152 grid of the nilearn template.
MNI_2MM_SHAPE = (99, 117, 95)
MNI_2MM_AFFINE = np.array([[2.0, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72],
                           [0, 0, 0, 1]])


def _cube(rng: np.random.Generator, region: tuple[slice, ...]) -> np.ndarray:
  """A 2^3 lesion lying inside `region` (slices of SHAPE)."""
  low = [r.start or 0 for r in region]
  high = [r.stop or n for r, n in zip(region, SHAPE)]
  start = rng.integers(low, np.asarray(high) - 1)
  mask = np.zeros(SHAPE, bool)
  mask[tuple(slice(s, s + 2) for s in start)] = True
  return mask


def synthetic_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Masks and labels: bad hand function = a lesion in SPOT, 5% flipped.

  Every subject has 0 to NUM_DISTRACTORS lesions in FRONT, half of them
  also one inside SPOT.
  """
  rng = np.random.default_rng(seed)
  present = np.arange(NUM_SUBJECTS) % 2 == 1
  masks = []
  for has_spot in present:
    mask = np.zeros(SHAPE, bool)
    for _ in range(rng.integers(NUM_DISTRACTORS + 1)):
      mask |= _cube(rng, FRONT)
    if has_spot:
      mask |= _cube(rng, SPOT)
    masks.append(mask)
  labels = present.astype(int)
  flipped = rng.choice(NUM_SUBJECTS, int(LABEL_NOISE * NUM_SUBJECTS),
                       replace=False)
  labels[flipped] ^= 1
  return np.stack(masks), labels


def features_of(masks: np.ndarray) -> dict[str, Any]:
  """Both feature sets' inputs, as `features.load_features` returns them."""
  extract = features.FeatureExtractor(
      features.Grid(SHAPE, AFFINE, Path("grid.nii.gz")),
      regions.builtin_regions(SHAPE, AFFINE))
  return features.stack_features([extract(mask) for mask in masks])


LESION_LOAD_NAMES = features.lesion_load_names(
    regions.builtin_regions(SHAPE, AFFINE))


INNER_REPEATS = 1  # of the module's cross-validations

# Lesion-load subset chosen by the inner CV -> columns the model sees.
LOADS_SEEN = {"total_and_tract": 2, "all_regions": len(LESION_LOAD_NAMES)}

SEARCHES = {
    "matrix": dataclasses.replace(nested_cv.matrix_search(SHAPE),
                                  grid=TEST_GRID),
    "lesion_load": dataclasses.replace(
        nested_cv.lesion_load_search(),
        grid={"loads__func": list(nested_cv.LESION_LOAD_SUBSETS),
              "volumes__func": [np.log1p, None],
              "logreg__C": TEST_GRID["logreg__C"]})}


@pytest.fixture(scope="module")
def problem():
  masks, labels = synthetic_problem()
  return features_of(masks), labels


@pytest.fixture(scope="module")
def cv_results(problem):
  """Nested 5-fold CV of both feature sets, on true and shuffled labels."""
  features, labels = problem
  shuffled = np.random.default_rng(1).permutation(labels)
  return {(name, kind): nested_cv.cross_validate(features[name], y,
                                                SEARCHES[name], 5, 0,
                                                inner_repeats=INNER_REPEATS)
          for name in baseline.FEATURE_SETS
          for kind, y in (("true", labels), ("shuffled", shuffled))}


def _mean(result: nested_cv.CVResult, metric: str) -> float:
  return float(np.mean([fold[metric] for fold in result.folds]))


def write_cohort(root: Path, masks: np.ndarray, labels: np.ndarray) -> Path:
  rows = ["participant_id\thand_function"]
  for i, (mask, label) in enumerate(zip(masks, labels), start=1):
    sid = f"sub-{i:03d}"
    nifti.save_nifti(
        mask.astype(np.uint8), AFFINE, root / "derivatives" / "lesions" / sid
        / "anat" / f"{sid}_label-lesion_mask.nii.gz", np.uint8)
    # The scan the mask was drawn on (the baseline reads masks only).
    nifti.save_nifti(mask.astype(np.float32), AFFINE,
                     root / sid / "anat" / f"{sid}_FLAIR.nii.gz", np.float32)
    rows.append(f"{sid}\t{label}")
  (root / "participants.tsv").write_text("\n".join(rows) + "\n")
  return root


@pytest.fixture
def small_grids(monkeypatch):
  """One C and one frequency threshold: `baseline.run` tests stay fast."""
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  masks, labels = synthetic_problem()
  return write_cohort(tmp_path_factory.mktemp("baseline") / "cohort", masks,
                      labels)


def test_block_average_hand_computed():
  volume = np.zeros((3, 2, 2))
  volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 0, 1] = 1

  def average(factor):
    model = block_features.BlockAverage(volume.shape, factor)
    return model.fit_transform(volume.reshape(1, -1)).toarray()[0]

  # x is padded to 4: block x 0-1 holds 2 of 8 voxels, block x 2-3 holds 1
  # (the padding counts as background).
  np.testing.assert_allclose(average(2), [0.25, 0.125])
  np.testing.assert_array_equal(average(1), volume.reshape(-1))
  assert block_features.pooling_matrix(MNI_2MM_SHAPE, 4).shape == (
      np.prod(MNI_2MM_SHAPE), 25 * 30 * 24)


def test_min_lesion_frequency_keeps_blocks_of_enough_subjects():
  # Block 0 is lesioned in 1 of 4 subjects, block 1 in none, block 2 in 2,
  # block 3 in all 4.
  blocks = np.array([[0.5, 0, 0.1, 1], [0, 0, 0.2, 1], [0, 0, 0, 0.3],
                     [0, 0, 0, 0.4]])

  def kept(fraction):
    return block_features.MinLesionFrequency(fraction).fit(blocks).kept_

  np.testing.assert_array_equal(kept(0.0), [0, 2, 3])
  np.testing.assert_array_equal(kept(0.5), [2, 3])
  np.testing.assert_array_equal(kept(0.75), [3])
  filtered = block_features.MinLesionFrequency(0.5).fit(blocks)
  np.testing.assert_array_equal(filtered.transform(sparse.csr_matrix(blocks)),
                                blocks[:, [2, 3]])
  # No block in 5 of 4 subjects: one constant column, not an empty matrix.
  np.testing.assert_array_equal(
      block_features.MinLesionFrequency(1.25).fit_transform(blocks),
      np.zeros((4, 1)))


def test_jhu_reference_voxels_in_mni_mm():
  # FSL's 1 mm MNI152 grid: x = 90 - i, y = j - 126, z = k - 72.
  np.testing.assert_array_equal(regions.mni_mm((66, 108, 85)), [24, -18, 13])
  np.testing.assert_array_equal(regions.mni_mm((116, 109, 96)),
                                [-26, -17, 24])
  np.testing.assert_array_equal(regions.mni_mm((90, 126, 72)), [0, 0, 0])


# A 1 mm grid whose voxel centres are the integer MNI points x -45..45,
# y -75..45, z -10..40.
MM_SHAPE = (91, 121, 51)
MM_AFFINE = np.array([[1.0, 0, 0, -45], [0, 1, 0, -75], [0, 0, 1, -10],
                      [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def mm_regions():
  return regions.builtin_regions(MM_SHAPE, MM_AFFINE)


def _regions_at(region_set, x, y, z):
  index = np.ravel_multi_index((x + 45, y + 75, z + 10), MM_SHAPE)
  return {name for name, mask in region_set.masks.items() if mask[index]}


def test_builtin_regions_at_published_points(mm_regions):
  assert mm_regions.names == (
      "left_cst", "left_acr", "left_pcr", "left_tapetum", "left_ptr",
      "right_cst", "right_acr", "right_pcr", "right_tapetum", "right_ptr")
  assert mm_regions.tract == ("left_cst", "right_cst")
  # The tract: internal capsule, superior corona radiata and between.
  assert _regions_at(mm_regions, 24, -18, 13) == {"right_cst"}
  assert _regions_at(mm_regions, -23, -18, 13) == {"left_cst"}
  assert _regions_at(mm_regions, -26, -17, 24) == {"left_cst"}
  assert "left_cst" in _regions_at(mm_regions, -25, -17, 19)
  # 6 mm below the internal capsule point is in, 7 mm is not.
  assert _regions_at(mm_regions, 24, -18, 7) == {"right_cst"}
  assert _regions_at(mm_regions, 24, -18, 6) == set()
  assert _regions_at(mm_regions, 21, 37, 1) == {"right_acr"}
  assert _regions_at(mm_regions, -25, -27, 27) == {"left_pcr"}
  assert _regions_at(mm_regions, 30, -48, 14) == {"right_tapetum"}
  assert _regions_at(mm_regions, -32, -62, 1) == {"left_ptr"}
  assert _regions_at(mm_regions, 0, -20, 20) == set()  # midline


def test_builtin_region_volumes(mm_regions):
  # Integer points within 6 mm of a lattice point, counted by brute force.
  ball = sum(1 for d in itertools.product(range(-6, 7), repeat=3)
             if sum(v * v for v in d) <= 36)
  for side in regions.SIDES:
    for zone in regions.PERIVENTRICULAR:
      assert mm_regions.masks[f"{side}_{zone}"].sum() == ball
  # The tract: a 6 mm tube around an 11.4 mm segment with hemispherical
  # ends, about pi 6^2 (11.4 + 4/3 6) mm^3; the lattice count is close.
  tube = np.pi * 36 * (np.sqrt(3**2 + 1 + 11**2) + 8)
  assert mm_regions.masks["right_cst"].sum() == pytest.approx(tube, rel=0.03)


def test_region_selection(mm_regions):
  chosen = mm_regions.select(["left_cst", "right_acr"], ["left_cst"])
  assert chosen.names == ("left_cst", "right_acr")
  np.testing.assert_array_equal(chosen.tract_mask(),
                                mm_regions.masks["left_cst"])
  with pytest.raises(InputError, match=r"built-in regions .*: no region "
                     r"named 'cst' \(available: left_cst, "):
    mm_regions.select(["cst"])


def test_lesion_load_in_mm3():
  mask = np.zeros(SHAPE, bool)
  # 8 voxels of 512 mm^3: 4 in the left tract (x 2-3, y 5, z 3-4), 2 in the
  # left posterior corona radiata (x 2-3, y 4, z 5... not in z 3-4).
  mask[2:4, 4:6, 3:5] = True
  mask[9, 4, 5] = True  # the right posterior corona radiata
  mask[9, 5, 3] = True  # the right tract
  load = dict(zip(LESION_LOAD_NAMES,
                  features_of(mask[None])["lesion_load"][0]))
  assert load["total"] == pytest.approx(10 * 512)
  assert load["left_cst"] == pytest.approx(4 * 512)
  assert load["right_cst"] == pytest.approx(512)
  assert load["tract"] == pytest.approx(5 * 512)
  assert load["right_pcr"] == pytest.approx(512)
  assert load["left_pcr"] == load["left_acr"] == 0


def test_one_standard_error_rule_prefers_the_simplest_near_tie():
  search = nested_cv.lesion_load_search()
  candidates = list(model_selection.ParameterGrid(search.grid))
  scores = np.full(len(candidates), -0.7)
  std = np.full(len(candidates), 0.1)

  def index(loads, c, volumes=np.log1p):
    return candidates.index({"loads__func": loads, "logreg__C": c,
                             "volumes__func": volumes})
  best = index(nested_cv.all_regions, 10.0)
  scores[best] = -0.30  # margin: 0.1 / sqrt(4 splits) = 0.05
  scores[index(nested_cv.total_and_tract, 100.0)] = -0.34
  scores[index(nested_cv.total_and_tract, 1.0)] = -0.36  # outside the margin
  scores[index(nested_cv.all_regions, 0.1)] = -0.31
  cv_results = {"params": candidates, "mean_test_score": scores,
                "std_test_score": std,
                **{f"split{i}_test_score": scores for i in range(4)}}
  # Fewer loads beats a smaller C: simplicity is ordered by loads first.
  assert (nested_cv.one_standard_error_choice(cv_results, search)
          == index(nested_cv.total_and_tract, 100.0))
  scores[index(nested_cv.total_and_tract, 100.0)] = -0.36
  assert (nested_cv.one_standard_error_choice(cv_results, search)
          == index(nested_cv.all_regions, 0.1))
  std[best] = 0.0  # no noise: the best candidate itself
  assert nested_cv.one_standard_error_choice(cv_results, search) == best


def test_lesion_load_search_chooses_all_loads_or_total_and_tract():
  search = nested_cv.lesion_load_search()
  assert search.grid["loads__func"] == [nested_cv.total_and_tract,
                                        nested_cv.all_regions]
  volumes = np.arange(2 * len(LESION_LOAD_NAMES),
                      dtype=float).reshape(2, -1)
  total = volumes[:, LESION_LOAD_NAMES.index("total")]
  tract = volumes[:, LESION_LOAD_NAMES.index("tract")]
  transform = search.model.set_params(
      loads__func=nested_cv.total_and_tract)["loads"]
  np.testing.assert_array_equal(transform.fit_transform(volumes),
                                np.stack([total, tract], axis=1))
  transform = search.model.set_params(loads__func=nested_cv.all_regions)["loads"]
  np.testing.assert_array_equal(transform.fit_transform(volumes), volumes)


def test_lesion_load_search_chooses_log_or_plain_volumes():
  search = nested_cv.lesion_load_search()
  assert search.grid["volumes__func"] == [np.log1p, None]
  volumes = np.array([[0.0, 512.0], [4096.0, 1.0]])
  for func, expected in ((np.log1p, np.log1p(volumes)), (None, volumes)):
    transform = search.model.set_params(volumes__func=func)["volumes"]
    np.testing.assert_allclose(transform.fit_transform(volumes), expected)


@pytest.mark.parametrize("feature_set", baseline.FEATURE_SETS)
def test_learns_the_motor_spot(cv_results, feature_set):
  result = cv_results[feature_set, "true"]
  # 2 of 40 labels are flipped, so 0.95 is the best possible accuracy.
  assert _mean(result, "accuracy") >= 0.8
  assert _mean(result, "auc") >= 0.8


@pytest.mark.parametrize("feature_set", baseline.FEATURE_SETS)
def test_shuffled_labels_score_chance(cv_results, feature_set):
  # Leakage (scaling, block selection or hyper-parameters fitted on test
  # subjects) would lift this.
  assert _mean(cv_results[feature_set, "shuffled"], "accuracy") < 0.75


def _grid_position(feature_set: str, key: str, candidate: dict) -> int:
  """Where a candidate's value of grid `key` stands in the grid's list."""
  named = nested_cv.PARAM_NAMES[key]
  values = [nested_cv._json_value(v) for v in SEARCHES[feature_set].grid[key]]
  return values.index(candidate[named])


def test_nested_cv_picks_hyper_parameters_by_inner_score(cv_results):
  chosen = set()
  for (name, _), result in cv_results.items():
    grid = model_selection.ParameterGrid(SEARCHES[name].grid)
    assert len(result.candidates) == len(grid)
    simplicity = SEARCHES[name].simplicity
    for fold in result.folds:
      scores = np.asarray(fold["inner_scores"])
      assert len(scores) == len(fold["inner_score_stds"]) == len(grid)
      best = int(np.argmax(scores))
      margin = fold["inner_score_stds"][best] / np.sqrt(
          nested_cv.INNER_FOLDS * INNER_REPEATS)
      tied = [result.candidates[i] for i in range(len(grid))
              if scores[i] >= scores[best] - margin]
      # The simplest tied candidate: first in grid order, key by key.
      expected = min(tied, key=lambda c: tuple(
          _grid_position(name, key, c) for key in simplicity))
      assert {k: fold[k] for k in expected} == expected
      assert fold["n_train"] + fold["n_test"] == NUM_SUBJECTS
      chosen.add(tuple(expected.items()))
  # The search does choose, not always one candidate.
  assert len(chosen) > 2


def test_matrix_search_chooses_block_factor_and_frequency():
  candidates = model_selection.ParameterGrid(
      nested_cv.matrix_search(SHAPE, (2, 3)).grid)
  assert {c["block__factor"] for c in candidates} == {2, 3}
  assert {c["frequency__min_fraction"] for c in candidates} == set(
      nested_cv.MIN_LESION_FRACTIONS)
  assert {c["logreg__C"] for c in candidates} == set(nested_cv.C_GRID)


def test_matrix_features_of_the_chosen_blocks(cv_results):
  for fold in cv_results["matrix", "true"].folds:
    blocks = -(-SHAPE[0] // fold["downsample"]) ** 3
    assert 1 <= fold["n_features"] <= blocks
  for fold in cv_results["lesion_load", "true"].folds:
    assert fold["n_features"] == LOADS_SEEN[fold["lesion_loads"]]


def test_out_of_fold_predictions_cover_every_subject_once(cv_results):
  result = cv_results["lesion_load", "true"]
  assert sorted(np.bincount(result.fold_of)) == [8] * 5
  assert np.all((result.prob > 0) & (result.prob < 1))


def test_min_class_size():
  assert nested_cv.min_class_size(5, inner_folds=3) == 5
  assert nested_cv.min_class_size(2, inner_folds=3) == 6  # 3 in the train half
  # 7 - ceil(7 / 5) = 5 subjects left for the 5 inner folds.
  assert nested_cv.min_class_size(5, inner_folds=5) == 7


def test_short_class_and_the_fold_check_name_the_class():
  labels = np.array([0] * 9 + [1] * 6)
  assert nested_cv.short_class(labels) is None
  assert nested_cv.short_class(labels[:13]) == (1, 4)
  # Outside fold 0 both classes fill the inner folds; outside fold 1 (six
  # of the ten class-1 subjects) class 1 keeps 4.
  labels = np.array([0] * 10 + [1] * 10)
  fold_of = np.array([0, 0, 1] + [2] * 7 + [0, 0] + [1] * 6 + [2] * 2)
  with pytest.raises(InputError, match=r"run1/splits.json: outside this test "
                     r"split \(fold 1\) hand_function=1 has 4 subject"):
    nested_cv.check_fold_class_sizes(labels, fold_of,
                                     {0: Path("run0/splits.json"),
                                      1: Path("run1/splits.json")})


def test_run_reference_and_predicted_masks(cohort, tmp_path, small_grids):
  runs = fake_runs.write_fold_runs(tmp_path, cohort, IDS, num_folds=4)
  output = baseline.run(cohort, runs, downsample=[4], inner_repeats=1)
  rows = output["rows"]
  assert [(r["name"], r["masks"], r["primary"]) for r in rows] == [
      ("LR matrix (reference masks)", "reference", True),
      ("LR lesion load (reference masks)", "reference", False),
      ("LR matrix (predicted masks)", "predicted", True),
      ("LR lesion load (predicted masks)", "predicted", False)]
  assert output["folds"] == "runs"
  assert {f["downsample"] for r in rows[::2] for f in r["folds"]} == {4}
  for fold in rows[1]["folds"]:
    assert fold["n_features"] == LOADS_SEEN[fold["lesion_loads"]]
  # The "predictions" are copies of the reference masks: same results.
  assert rows[2]["folds"] == rows[0]["folds"]
  assert rows[3]["out_of_fold"] == rows[1]["out_of_fold"]
  assert rows[0]["n_subjects"] == len(rows[0]["out_of_fold"]) == NUM_SUBJECTS
  assert output["regions"]["lesion_load_columns"] == list(LESION_LOAD_NAMES)
  json.dumps(output, allow_nan=False)


def test_train_on_runs_fits_each_fold_on_its_run_train_split(
    cohort, problem, tmp_path, small_grids):
  runs = fake_runs.write_fold_runs(tmp_path, cohort, IDS, num_folds=4)
  (row,) = baseline.run(cohort, runs, downsample=[4], inner_repeats=1,
                        feature_sets=["matrix"], masks=["reference"],
                        train_on="runs")["rows"]
  assert row["name"] == "LR matrix (reference masks, the runs' train splits)"
  features, labels = problem
  search = nested_cv.matrix_search(SHAPE, [4])
  prob = {e["subject_id"]: e["prob"] for e in row["out_of_fold"]}
  for fold in row["folds"]:
    splits = fake_runs.fold_splits(IDS, fold["fold"], 4)
    train = [IDS.index(s) for s in splits["train"]]
    test = [IDS.index(s) for s in splits["test"]]
    # Validation subjects are neither trained on nor tested in this fold.
    assert (fold["n_train"], fold["n_test"]) == (len(train), len(test))
    direct = nested_cv.fit_inner(search, features["matrix"][train],
                                 labels[train], 0, 1)
    np.testing.assert_allclose(
        [prob[IDS[i]] for i in test],
        direct.predict_proba(features["matrix"][test])[:, 1], atol=1e-9)


@pytest.mark.parametrize("runs, train_on, message", [
    (False, "runs", "train_on='runs': training on the runs' train splits "
     "needs the runs"),
    (True, "val", "train_on: one of outer, runs, got 'val'")])
def test_run_rejects_bad_train_on(cohort, tmp_path, runs, train_on, message):
  dirs = (fake_runs.write_fold_runs(tmp_path, cohort, IDS, num_folds=4)
          if runs else ())
  with pytest.raises(InputError, match=message):
    baseline.run(cohort, dirs, train_on=train_on)


def test_unlabelled_subjects_are_left_out(cohort, monkeypatch, caplog,
                                          small_grids):
  load_cohort = bids.load_cohort

  def with_two_unlabelled(*args, **kwargs):
    subjects = load_cohort(*args, **kwargs)
    return [dataclasses.replace(s, hand_function=None)
            if s.participant_id in ("sub-003", "sub-010") else s
            for s in subjects]
  monkeypatch.setattr(bids, "load_cohort", with_two_unlabelled)
  with caplog.at_level(logging.INFO):
    output = baseline.run(cohort, folds=2, downsample=[4], inner_repeats=1,
                          feature_sets=["lesion_load"])
  assert output["unlabelled"] == ["sub-003", "sub-010"]
  (row,) = output["rows"]
  assert row["n_subjects"] == NUM_SUBJECTS - 2
  assert {r["subject_id"] for r in row["out_of_fold"]} == set(IDS) - {
      "sub-003", "sub-010"}
  assert ("leaving out 2 subject(s) without a hand_function label: sub-003, "
          "sub-010") in caplog.text


@pytest.mark.parametrize("kwargs, message", [
    ({"downsample": [4, 0]}, "--downsample: block factors must be at least 1"),
    ({"downsample": []}, "--downsample: block factors must be at least 1"),
    ({"inner_repeats": 0}, "--inner_repeats: must be at least 1"),
    ({"resamples": 20}, "--resamples: 0 or at least 100, got 20")])
def test_run_rejects_bad_search_arguments(cohort, kwargs, message):
  with pytest.raises(InputError, match=message):
    baseline.run(cohort, folds=2, **kwargs)


def test_run_rejects_prediction_in_another_grid(cohort, tmp_path,
                                               small_grids):
  runs = fake_runs.write_fold_runs(tmp_path, cohort, IDS, num_folds=4)
  shifted = AFFINE.copy()
  shifted[0, 3] += 2.0
  path = runs[0] / "predictions" / "sub-007_pred.nii.gz"
  nifti.save_nifti(np.zeros(SHAPE, np.uint8), shifted, path, np.uint8)
  with pytest.raises(InputError, match=f"{path}: affine differs"):
    baseline.run(cohort, runs, downsample=[4], inner_repeats=1)


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pvl_jax.handfunction.run", *args],
                        capture_output=True, text=True, check=False,
                        cwd=Path(__file__).parents[1])


def test_cli_writes_rows_and_table(cohort, tmp_path):
  out = tmp_path / "baseline.json"
  # The CLI's own C and frequency grids, one inner repeat.
  proc = _cli(f"--cohort={cohort}", f"--out={out}", "--folds=2",
              "--downsample=4,3", "--inner_repeats=1", "--resamples=100")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert result["downsample"] == [4, 3]
  rows = result["rows"]
  assert {f["downsample"] for f in rows[0]["folds"]} <= {3, 4}
  assert [r["name"] for r in rows] == ["LR matrix (reference masks)",
                                       "LR lesion load (reference masks)"]
  for row in rows:
    for key in ("features", "masks", "accuracy_mean", "accuracy_std",
                "f1_mean", "f1_std", "auc_mean", "auc_std", "folds",
                "n_subjects"):
      assert key in row
    assert len(row["folds"]) == 2
  bad = rows[0]["pooled"]["n_pos"]
  load_row = (r"\| LR lesion load \(reference masks\) \| 40 \(%d\) \| "
              r"(2|12|2-12) \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|" % bad)
  assert re.search(load_row, proc.stdout)
  assert f"| LR matrix (reference masks) (primary) | 40 ({bad}) |" in (
      proc.stdout)
  for row in rows:
    # Pooled out-of-fold metrics, with their bootstrap intervals.
    for metric in ("accuracy", "f1", "auc"):
      interval = row["intervals"][metric]
      assert interval["estimate"] == pytest.approx(row["pooled"][metric])
      assert interval["low"] <= interval["estimate"] <= interval["high"]
      assert interval["resamples"] <= 100 == row["resamples"]
  assert result["regions"]["source"] == regions.BUILTIN_SOURCE
  assert result["unlabelled"] == []


def test_cli_non_integer_block_factor_exits_2(cohort, tmp_path):
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={cohort}", f"--out={out}", "--downsample=4,four")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: --downsample: expected integers")
  assert not out.exists()


def test_cli_class_smaller_than_folds_exits_2(tiny_cohort, tmp_path):
  # tiny_cohort: 7 subjects with bad and 3 with good hand function.
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={tiny_cohort}", f"--out={out}", "--folds=5")
  assert proc.returncode == 2
  assert proc.stderr.startswith(
      f"error: {tiny_cohort / 'participants.tsv'}: hand_function=0 has 3 "
      f"subject(s), fewer than the {nested_cv.min_class_size(5)}")
  assert not out.exists()
