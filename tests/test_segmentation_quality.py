"""benchmarks.segmentation_quality: its flags and its table."""

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import segmentation_quality as sq
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import segmentation


@pytest.mark.parametrize("text, problem", [
    ("", "--seeds: empty"), ("0,x", "expected comma-separated integers"),
    ("1,1", "distinct"), ("-1", ">= 0")])
def test_bad_seed_lists_name_the_flag(text, problem):
  with pytest.raises(InputError, match=problem):
    sq.parse_seeds(text)
  assert sq.parse_seeds("2,0") == [2, 0]


def test_a_malformed_seed_list_exits_2_before_any_work(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.segmentation_quality",
       f"--out={tmp_path / 'out'}", "--seeds=0,a"],
      capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert "--seeds='0,a'" in result.stderr
  assert not (tmp_path / "out").exists()


def _subject(found_small: bool) -> dict:
  """One subject: a large lesion found, a 1-voxel lesion found or not."""
  ref = np.zeros((20, 20, 20), bool)
  ref[2:8, 2:8, 2:8] = True
  ref[15, 15, 15] = True
  pred = ref.copy()
  pred[15, 15, 15] = found_small
  return segmentation.evaluate_subject(pred, ref, (2.0, 2.0, 2.0))


def test_table_gives_mean_std_and_pooled_recall_per_size_bin(tmp_path):
  # Seed 0 finds the 1-voxel lesion of both subjects, seed 1 of one.
  found = {0: (True, True), 1: (True, False)}
  workdirs = []
  for seed, flags in found.items():
    workdir = tmp_path / f"seed{seed}"
    workdir.mkdir()
    test = segmentation.aggregate([_subject(f) for f in flags])
    (workdir / "results.json").write_text(json.dumps({
        "test": test, "postprocessing": {"min_component_mm3": 8.0 * seed,
                                         "min_depth_mm": 6.0}}))
    workdirs.append(workdir)
  header, rows = sq.table([0, 1], workdirs, None)
  assert header == ["figure", "mean ± std (2 seeds)", "seeds 0, 1"]
  by_name = {row[0]: row for row in rows}
  # Dice per seed by hand: 1 and the mean of 1 and 2*216/(216+217).
  dice_1 = (1 + 2 * 216 / 433) / 2
  assert by_name["test: Dice"][2] == f"1.000, {dice_1:.3f}"
  std = np.std([1.0, dice_1], ddof=1)
  assert by_name["test: Dice"][1] == f"{(1 + dice_1) / 2:.3f} ± {std:.3f}"
  # 2 lesions under 0.05 ml per seed (one voxel is 0.008 ml), pooled.
  assert by_name["test: recall 0-0.05ml (2/2 lesions)"][2] == "1.000, 0.500"
  assert by_name["postprocessing: min depth in the brain (mm)"][2] == "6.0, 6.0"
  assert by_name["postprocessing: min lesion (mm^3; older runs: voxels)"][
      2] == "0.0, 8.0"
