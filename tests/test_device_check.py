"""The one-shot device check, dry-run at CPU size: every part reports."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_tiny_device_check_prints_one_full_table(tiny_cohort, tmp_path,
                                                  request):
  env = {**os.environ, "PVL_JAX_CACHE": str(tmp_path / "cache")}
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.device_check", "--tiny",
       f"--cohort_dir={tiny_cohort}", "--train_steps=6",
       f"--workdir={tmp_path / 'run'}"],
      cwd=request.config.rootpath, env=env, capture_output=True, text=True,
      timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  table = [line for line in lines if line.startswith("| ")]
  assert table[0] == "| check | value | detail |"
  checks = [row.split(" | ")[0].lstrip("| ") for row in table[2:]]
  assert checks == [
      "train step: pvl_jax", "train step: with nnU-Net augmentation",
      "train step: torch eager",
      "train step: torch.compile", "inference, no mirroring",
      "inference, 8-way mirroring", "planned config",
      "planned config: steps/s", "planned config: data wait",
      "preflight estimate vs measured peak"]
  body = "\n".join(table)
  assert "exit " not in body  # no part failed
  assert " ms |" in body and "% |" in body and "GiB" in body
