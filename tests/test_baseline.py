"""Tests of the logistic-regression hand-function baseline."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing import nifti_io
from preprocessing.errors import InputError
from pvl_jax import baseline

SHAPE = (12, 12, 12)
VOXEL_MM = 8.0
# The grid's centre plane between voxels 5 and 6 lies on the octant centre, so
# voxel octants (index < 6 or >= 6 per axis) are the lesion-load octants.
AFFINE = np.diag([VOXEL_MM] * 3 + [1.0])
AFFINE[:3, 3] = np.asarray(baseline.OCTANT_CENTER_MM) - VOXEL_MM * 5.5
# The motor spot that decides hand function: one 4^3 block (so one matrix
# feature at downsample 4) inside the left-posterior-superior octant.
SPOT = (slice(0, 4), slice(0, 4), slice(8, 12))
OCTANT = (slice(0, 6), slice(0, 6), slice(6, 12))
NUM_SUBJECTS = 40
LABEL_NOISE = 0.05
NUM_DISTRACTORS = 2  # at most, per subject


def _cube(rng: np.random.Generator, low: tuple[int, ...],
          high: tuple[int, ...]) -> np.ndarray:
  """A 2^3 lesion whose corner lies in [low, high - 2]."""
  start = rng.integers(low, np.asarray(high) - 1)
  mask = np.zeros(SHAPE, bool)
  mask[tuple(slice(s, s + 2) for s in start)] = True
  return mask


def synthetic_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Masks and labels: bad hand function = a lesion in SPOT, 5% flipped.

  Every subject has 0 to NUM_DISTRACTORS lesions outside the octant holding
  SPOT, half of them also one inside SPOT.
  """
  rng = np.random.default_rng(seed)
  octant = np.zeros(SHAPE, bool)
  octant[OCTANT] = True
  present = np.arange(NUM_SUBJECTS) % 2 == 1
  masks = []
  for has_spot in present:
    mask = np.zeros(SHAPE, bool)
    for _ in range(rng.integers(NUM_DISTRACTORS + 1)):
      lesion = _cube(rng, (0, 0, 0), SHAPE)
      while (lesion & octant).any():
        lesion = _cube(rng, (0, 0, 0), SHAPE)
      mask |= lesion
    if has_spot:
      mask |= _cube(rng, tuple(s.start for s in SPOT),
                    tuple(s.stop for s in SPOT))
    masks.append(mask)
  labels = present.astype(int)
  flipped = rng.choice(NUM_SUBJECTS, int(LABEL_NOISE * NUM_SUBJECTS),
                       replace=False)
  labels[flipped] ^= 1
  return np.stack(masks), labels


def features_of(masks: np.ndarray, downsample: int = 4
                ) -> dict[str, np.ndarray]:
  extract = baseline.FeatureExtractor(
      baseline.Grid(SHAPE, AFFINE, Path("grid.nii.gz")), downsample)
  rows = [extract(mask) for mask in masks]
  return {name: np.stack([row[name] for row in rows])
          for name in baseline.FEATURE_SETS}


@pytest.fixture(scope="module")
def problem():
  masks, labels = synthetic_problem()
  return features_of(masks), labels


@pytest.fixture(scope="module")
def cv_results(problem):
  """Nested 5-fold CV of both feature sets, on true and shuffled labels."""
  features, labels = problem
  shuffled = np.random.default_rng(1).permutation(labels)
  return {(name, kind): baseline.cross_validate(features[name], y, 5, 0)
          for name in baseline.FEATURE_SETS
          for kind, y in (("true", labels), ("shuffled", shuffled))}


def _mean(result: baseline.CVResult, metric: str) -> float:
  return float(np.mean([fold[metric] for fold in result.folds]))


def write_cohort(root: Path, masks: np.ndarray, labels: np.ndarray) -> Path:
  rows = ["participant_id\thand_function"]
  for i, (mask, label) in enumerate(zip(masks, labels), start=1):
    sid = f"sub-{i:03d}"
    nifti_io.save_nifti(
        mask.astype(np.uint8), AFFINE, root / "derivatives" / "lesions" / sid
        / "anat" / f"{sid}_label-lesion_mask.nii.gz", np.uint8)
    rows.append(f"{sid}\t{label}")
  (root / "participants.tsv").write_text("\n".join(rows) + "\n")
  return root


def write_predictions(cohort: Path, root: Path,
                      runs: dict[str, list[int]]) -> list[Path]:
  """Copies reference masks as the predictions of runs (subject numbers)."""
  run_dirs = []
  for run, numbers in runs.items():
    for number in numbers:
      sid = f"sub-{number:03d}"
      target = root / run / "predictions" / f"{sid}_pred.nii.gz"
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(cohort / "derivatives" / "lesions" / sid / "anat"
                  / f"{sid}_label-lesion_mask.nii.gz", target)
    run_dirs.append(root / run)
  return run_dirs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  masks, labels = synthetic_problem()
  return write_cohort(tmp_path_factory.mktemp("baseline") / "cohort", masks,
                      labels)


def test_block_mean_hand_computed():
  volume = np.zeros((3, 2, 2))
  volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 0, 1] = 1
  # x is padded to 4: block x 0-1 holds 2 of 8 voxels, block x 2-3 holds 1
  # (the padding counts as background).
  np.testing.assert_allclose(baseline.block_mean(volume, 2),
                             [[[0.25]], [[0.125]]])
  np.testing.assert_array_equal(baseline.block_mean(volume, 1), volume)
  assert baseline.block_mean(np.zeros((99, 117, 95)), 4).shape == (25, 30, 24)


def test_regions_octants_partition_grid_and_follow_world_axes():
  regions = baseline.region_masks(SHAPE, AFFINE)
  octants = np.stack([regions[name] for name in baseline.REGIONS[:8]])
  np.testing.assert_array_equal(octants.sum(0), 1)
  expected = np.zeros(SHAPE, bool)
  expected[OCTANT] = True
  np.testing.assert_array_equal(regions["left_posterior_superior"],
                                expected.reshape(-1))
  # The box x -35..35, y -50..-10, z 5..40 mm holds the voxel centres (8 mm
  # steps from (-44, -59, -30)) x -28..28, y -43..-11, z 10..34.
  assert regions["periventricular_posterior"].sum() == 8 * 5 * 4


def test_lesion_load_in_ml():
  mask = np.zeros(SHAPE, bool)
  mask[OCTANT][:2, :2, :2] = True  # 8 voxels of 0.512 ml
  mask[11, 11, 0] = True  # right anterior inferior
  load = dict(zip(baseline.LESION_LOAD_NAMES,
                  features_of(mask[None])["lesion_load"][0]))
  assert load["total"] == pytest.approx(9 * 0.512)
  assert load["left_posterior_superior"] == pytest.approx(8 * 0.512)
  assert load["right_anterior_inferior"] == pytest.approx(0.512)
  assert load["left_anterior_superior"] == 0


@pytest.mark.parametrize("feature_set", baseline.FEATURE_SETS)
def test_learns_the_motor_spot(cv_results, feature_set):
  result = cv_results[feature_set, "true"]
  # 2 of 40 labels are flipped, so 0.95 is the best possible accuracy.
  assert _mean(result, "accuracy") >= 0.8
  assert _mean(result, "auc") >= 0.8


@pytest.mark.parametrize("feature_set", baseline.FEATURE_SETS)
def test_shuffled_labels_score_chance(cv_results, feature_set):
  # Leakage (scaling or C chosen on test subjects) would lift this.
  assert _mean(cv_results[feature_set, "shuffled"], "accuracy") < 0.75


def test_nested_cv_picks_c_by_inner_score(cv_results):
  chosen = set()
  for result in cv_results.values():
    for fold in result.folds:
      assert len(fold["inner_scores"]) == len(baseline.C_GRID)
      assert fold["C"] == baseline.C_GRID[int(np.argmax(fold["inner_scores"]))]
      assert fold["n_train"] + fold["n_test"] == NUM_SUBJECTS
      chosen.add(fold["C"])
  assert len(chosen) > 1  # the search does choose, not always one value


def test_out_of_fold_predictions_cover_every_subject_once(cv_results):
  result = cv_results["lesion_load", "true"]
  assert sorted(np.bincount(result.fold_of)) == [8] * 5
  assert np.all((result.prob > 0) & (result.prob < 1))


def test_collect_predictions(cohort, tmp_path):
  ids = [f"sub-{i:03d}" for i in range(1, 5)]
  run_a, run_b = write_predictions(cohort, tmp_path, {"a": [1, 3],
                                                      "b": [2, 4]})
  found = baseline.collect_predictions([run_a, run_b], ids)
  assert found["sub-003"] == run_a / "predictions" / "sub-003_pred.nii.gz"
  # A predictions folder itself is accepted too.
  assert baseline.collect_predictions([run_a / "predictions", run_b], ids) == (
      found)
  with pytest.raises(InputError, match=r"no predicted mask .* sub-002, "
                     "sub-004"):
    baseline.collect_predictions([run_a], ids)
  with pytest.raises(InputError, match=r"more than once.*sub-001"):
    baseline.collect_predictions([run_a, run_b, run_a], ids)
  with pytest.raises(InputError, match="sub-004 is not in participants"):
    baseline.collect_predictions([run_a, run_b], ids[:3])


def test_min_class_size():
  assert baseline.min_class_size(5) == 5
  assert baseline.min_class_size(2) == 6  # the training half needs 3


def test_run_reference_and_predicted_masks(cohort, tmp_path):
  runs = write_predictions(cohort, tmp_path,
                           {"fold0": list(range(1, 21)),
                            "fold1": list(range(21, 41))})
  rows = baseline.run(cohort, runs, folds=2, downsample=4)
  assert [(r["name"], r["masks"]) for r in rows] == [
      ("LR matrix (reference masks)", "reference"),
      ("LR lesion load (reference masks)", "reference"),
      ("LR matrix (predicted masks)", "predicted"),
      ("LR lesion load (predicted masks)", "predicted")]
  assert [r["n_features"] for r in rows] == [27, 10, 27, 10]
  # The "predictions" are copies of the reference masks: same results.
  assert rows[2]["folds"] == rows[0]["folds"]
  assert rows[3]["out_of_fold"] == rows[1]["out_of_fold"]
  assert rows[0]["n_subjects"] == len(rows[0]["out_of_fold"]) == NUM_SUBJECTS
  json.dumps(rows, allow_nan=False)


def test_run_rejects_prediction_in_another_grid(cohort, tmp_path):
  runs = write_predictions(cohort, tmp_path, {"all": list(range(1, 41))})
  shifted = AFFINE.copy()
  shifted[0, 3] += 2.0
  path = runs[0] / "predictions" / "sub-007_pred.nii.gz"
  nifti_io.save_nifti(np.zeros(SHAPE, np.uint8), shifted, path, np.uint8)
  with pytest.raises(InputError, match=f"{path}: affine differs"):
    baseline.run(cohort, runs, folds=2)


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pvl_jax.run_baseline", *args],
                        capture_output=True, text=True, check=False,
                        cwd=Path(__file__).parents[1])


def test_cli_writes_rows_and_table(cohort, tmp_path):
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={cohort}", f"--out={out}", "--folds=2")
  assert proc.returncode == 0, proc.stderr
  rows = json.loads(out.read_text())["rows"]
  assert [r["name"] for r in rows] == ["LR matrix (reference masks)",
                                       "LR lesion load (reference masks)"]
  for row in rows:
    for key in ("features", "masks", "accuracy_mean", "accuracy_std",
                "f1_mean", "f1_std", "auc_mean", "auc_std", "folds",
                "n_subjects"):
      assert key in row
    assert len(row["folds"]) == 2
  assert "| LR lesion load (reference masks) | 40 | 10 |" in proc.stdout


def test_cli_class_smaller_than_folds_exits_2(tiny_cohort, tmp_path):
  # tiny_cohort: 7 subjects with bad and 3 with good hand function.
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={tiny_cohort}", f"--out={out}", "--folds=5")
  assert proc.returncode == 2
  assert proc.stderr.startswith(
      f"error: {tiny_cohort / 'participants.tsv'}: hand_function=0 has 3 "
      "subject(s), fewer than the 5")
  assert not out.exists()
