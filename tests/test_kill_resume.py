"""SIGKILL at random steps, restart with the same command: exact parameters."""

import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

NUM_STEPS = 30
KILLS = 5


def _command(cohort, cache, workdir, num_workers):
  return [sys.executable, "-m", "pvl_jax.main",
          "--config=configs/joint.py:demo", f"--workdir={workdir}",
          f"--config.data.cohort_dir={cohort}",
          f"--config.data.cache_dir={cache}",
          "--config.data.patch_size=(16,16,16)",
          f"--config.data.num_workers={num_workers}",
          "--config.model.features=(4,8,16)", f"--config.num_steps={NUM_STEPS}",
          "--config.log_every=1", "--config.eval_every=1000",
          "--config.checkpoint_every=3", "--config.inference.batch_size=2"]


def _latest_params(workdir):
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir()
           if p.name.isdigit()]
  path = workdir / "checkpoints" / str(max(steps)) / "state"
  return max(steps), ocp.StandardCheckpointer().restore(path.absolute())["params"]


def _steps_logged(workdir):
  history = workdir / "metrics.jsonl"
  return history.read_text().count("\n") if history.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])  # 2: grain worker processes
def test_five_sigkills_end_bitwise_equal(tiny_cohort, tmp_path, request,
                                         num_workers):
  cwd = request.config.rootpath
  cache = tmp_path / "cache"
  reference = tmp_path / "reference"
  subprocess.run(_command(tiny_cohort, cache, reference, num_workers),
                 cwd=cwd, check=True, capture_output=True, timeout=600)

  rng = random.Random(0)
  killed = tmp_path / "killed"
  kills = 0
  while kills < KILLS:
    proc = subprocess.Popen(_command(tiny_cohort, cache, killed, num_workers),
                            cwd=cwd,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Kill after a random number of further training steps are logged.
    target = _steps_logged(killed) + rng.randint(1, 5)
    while proc.poll() is None and _steps_logged(killed) < target:
      time.sleep(0.05)
    if proc.poll() is not None:
      break  # finished before the kill: nothing left to interrupt
    time.sleep(rng.uniform(0, 0.5))  # sometimes mid-step or mid-save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  assert kills == KILLS
  subprocess.run(_command(tiny_cohort, cache, killed, num_workers), cwd=cwd,
                 check=True, capture_output=True, timeout=600)

  step_a, expected = _latest_params(reference)
  step_b, got = _latest_params(killed)
  assert step_a == step_b == NUM_STEPS
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
