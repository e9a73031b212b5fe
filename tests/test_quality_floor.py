"""A quality floor: a shortened demo run must still find the lesions.

One fixed seed of the demo recipe, cut to a 20-subject cohort (12 training,
4 validation, 4 test subjects) and `NUM_STEPS` steps, trained and evaluated
as `python -m pvl_jax.main` does. On one machine training is a function of
the seed; across machines a seed's run differs (main's demo seed 0 gave test
Dice 0.869 on one machine and 0.898 on another), so the floors keep a margin
under the values measured on the 2-core CPU machine (test Dice 0.710, lesion
recall 0.442 on its 4 test subjects, 2026-12-07; docs/results.md, "Quality
floor in CI"). A result under a floor is a broken recipe, not noise: judge
the change with `python -m benchmarks.segmentation_quality` and move the
floors only with its table.
"""

import json
import subprocess
import sys

NUM_STEPS = 500
NUM_SUBJECTS = 20
# Measured 0.710 and 0.442; see the module docstring.
DICE_FLOOR = 0.60
LESION_RECALL_FLOOR = 0.30


def test_shortened_demo_run_stays_above_its_quality_floor(tmp_path):
  workdir = tmp_path / "run"
  command = [
      sys.executable, "-m", "pvl_jax.main", "--config=configs/joint.py:demo",
      f"--workdir={workdir}", "--config.seed=0",
      f"--config.num_steps={NUM_STEPS}",
      f"--config.data.synthetic.num_subjects={NUM_SUBJECTS}",
      f"--config.data.cache_dir={tmp_path / 'cache'}",
      "--config.checkpoint_every=1000", "--config.eval_every=1000"]
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=1800, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  test = json.loads((workdir / "results.json").read_text())["test"]
  print(f"test Dice {test['dice_mean']:.3f}, lesion recall "
        f"{test['lesion_recall_mean']:.3f}")
  assert test["n_subjects"] == 4
  assert test["dice_mean"] >= DICE_FLOOR, test["dice_mean"]
  assert test["lesion_recall_mean"] >= LESION_RECALL_FLOOR, (
      test["lesion_recall_mean"])
