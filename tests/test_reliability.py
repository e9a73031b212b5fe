"""Non-finite steps (stop or skip) and SIGTERM (final checkpoint, clean exit)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pvl_jax.data import input_pipeline
from pvl_jax.training import train
from tests.test_train import tiny_config

POISONED_STEP = 3


@pytest.fixture
def poisoned_pipeline(monkeypatch):
  """Makes the POISONED_STEP-th training batch contain NaN voxels."""
  original = input_pipeline.train_dataset

  def poisoned(*args, **kwargs):
    count = {"n": 0}

    def maybe_poison(batch):
      count["n"] += 1
      if count["n"] == POISONED_STEP:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      return batch

    return original(*args, **kwargs).map(maybe_poison)

  monkeypatch.setattr(train.input_pipeline, "train_dataset", poisoned)


def test_nonfinite_step_stops_naming_step_and_subjects(
    poisoned_pipeline, tiny_cohort, tmp_path):
  del poisoned_pipeline
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.num_steps = 6
  config.checkpoint_every = 2
  with pytest.raises(train.NonFiniteError,
                     match=rf"at step {POISONED_STEP}; batch subjects.*sub-"):
    train.train_and_evaluate(config, tmp_path / "run")
  checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints")
                       .iterdir() if p.name.isdigit())
  assert checkpoints == ["2"]  # the last good one; nothing after the NaN
  assert not (tmp_path / "run" / "results.json").exists()


def test_nonfinite_step_can_be_skipped_and_counted(
    poisoned_pipeline, tiny_cohort, tmp_path):
  del poisoned_pipeline
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.nonfinite = "skip"
  config.num_steps = 4
  config.log_every = 4
  results = train.train_and_evaluate(config, tmp_path / "run")
  assert np.isfinite(results["test"]["dice_mean"])
  logged = [json.loads(l) for l in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  skipped = [l["train/skipped_nonfinite"] for l in logged
             if "train/skipped_nonfinite" in l]
  assert skipped == [1.0]


# Grain worker processes (the full config uses 8) must not keep a SIGTERM'd
# run from checkpointing and exiting; with them the test takes longer.
@pytest.mark.parametrize("num_workers", [
    0, pytest.param(2, marks=pytest.mark.slow)])
def test_sigterm_writes_final_checkpoint_and_exits_cleanly(
    tiny_cohort, tmp_path, request, num_workers):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "pvl_jax.main",
         "--config=configs/joint.py:demo", f"--workdir={workdir}",
         f"--config.data.cohort_dir={tiny_cohort}",
         f"--config.data.cache_dir={tmp_path / 'cache'}",
         "--config.data.patch_size=(16,16,16)",
         f"--config.data.num_workers={num_workers}",
         "--config.model.features=(4,8,16)", "--config.num_steps=100000",
         "--config.log_every=1", "--config.checkpoint_every=100000"]
  proc = subprocess.Popen(cmd, cwd=request.config.rootpath,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  deadline = time.time() + 240
  history = workdir / "metrics.jsonl"
  while not (history.exists() and history.read_text().count("\n") >= 3):
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline, "training did not start in time"
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, output[-3000:]
  assert "SIGTERM received: checkpoint saved at step" in output
  assert "Traceback" not in output
  steps = [int(p.name) for p in (workdir / "checkpoints").iterdir()
           if p.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 3
