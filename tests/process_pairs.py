"""Two `pvl_jax.main --distributed` processes on the tiny cohort (tests).

CPU collectives through gloo, one device per process, a localhost
coordinator; the network and data flags of the multi-process tests.
"""

import os
from pathlib import Path
import subprocess
import sys
from typing import Sequence

# A 3-stage U-Net of 4-8-16 features on 16^3 patches: seconds per step.
TINY_FLAGS = ("--config.data.patch_size=(16,16,16)",
              "--config.data.num_workers=0",
              "--config.model.features=(4,8,16)",
              "--config.inference.batch_size=2")


def start(cohort: Path, cache: Path, workdir: Path, process_id: int,
          port: int, cwd: Path, extra: Sequence[str] = ()
          ) -> subprocess.Popen:
  """Starts process `process_id` of 2, its output to `<workdir>.<id>.log`.

  A file, not a pipe: a full pipe nobody reads would stall the process, and
  with it its peer.

  Args:
    cohort: the BIDS cohort (config.data.cohort_dir).
    cache: the data cache (config.data.cache_dir).
    workdir: the run's --workdir.
    process_id: 0 or 1.
    port: the coordinator's port on localhost.
    cwd: the repository root.
    extra: more flags, after the tiny ones (they win).
  """
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1",
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  cmd = [sys.executable, "-m", "pvl_jax.main", "--distributed",
         f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={process_id}", f"--workdir={workdir}",
         "--config=configs/joint.py:demo",
         f"--config.data.cohort_dir={cohort}",
         f"--config.data.cache_dir={cache}", *TINY_FLAGS, *extra]
  with open(log_path(workdir, process_id), "w") as log:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def log_path(workdir: Path, process_id: int) -> Path:
  """Where `start` sends the output of process `process_id`."""
  return workdir.with_name(f"{workdir.name}.{process_id}.log")


def finish(procs: Sequence[subprocess.Popen], workdir: Path,
           timeout_s: float) -> list[tuple[int, str]]:
  """Waits for processes 0, 1, ...; [(exit status, output)] in that order.

  Args:
    procs: what `start` returned, in process order.
    workdir: their --workdir.
    timeout_s: the longest wait for each process in turn; a process still
      running then is killed (all are), and the test fails naming it.
  """
  results = []
  for index, proc in enumerate(procs):
    try:
      proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      for other in procs:
        other.kill()
        other.wait()
      raise AssertionError(
          f"process {index} still running after {timeout_s:g} s:\n"
          f"{log_path(workdir, index).read_text()[-3000:]}") from None
    results.append((proc.returncode, log_path(workdir, index).read_text()))
  return results
