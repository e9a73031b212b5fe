"""Two processes, SIGTERM to one: both stop at one step, resume exactly.

Runs `pvl_jax.main --distributed` twice over (CPU collectives through gloo,
a localhost coordinator): once uninterrupted, once with SIGTERM sent to
process 1 alone during training and then rerun. The signalled and the
unsignalled process must save the same checkpoint and exit 143, and the rerun
must end with parameters bitwise equal to the uninterrupted run's; both
reruns exit 0 after process 0's evaluation (process 1 waits for it).
"""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest

from pvl_jax.training import preemption

NUM_STEPS = 40


def _start(cohort, cache, workdir, pid, port, cwd):
  # The three pairs compile the same programs: JAX's persistent cache
  # compiles them once (minutes on a busy 2-core CPU).
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1",
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
         "JAX_COMPILATION_CACHE_DIR": str(cache / "jax")}
  cmd = [sys.executable, "-m", "pvl_jax.main", "--distributed",
         f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={pid}", "--config=configs/joint.py:demo",
         f"--workdir={workdir}", f"--config.data.cohort_dir={cohort}",
         f"--config.data.cache_dir={cache}",
         "--config.data.patch_size=(16,16,16)", "--config.data.num_workers=0",
         "--config.model.features=(4,8,16)", f"--config.num_steps={NUM_STEPS}",
         "--config.log_every=1", "--config.eval_every=1000",
         "--config.checkpoint_every=1000", "--config.inference.batch_size=2"]
  return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_pair(cohort, cache, workdir, cwd, sigterm_after_steps=None):
  """Starts processes 0 and 1; returns [(returncode, output)] per process."""
  port = portpicker.pick_unused_port()
  procs = [_start(cohort, cache, workdir, pid, port, cwd) for pid in (0, 1)]
  if sigterm_after_steps is not None:
    history = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (history.exists()
               and history.read_text().count("\n") >= sigterm_after_steps):
      if not all(p.poll() is None for p in procs) or time.time() > deadline:
        _fail_with_outputs(procs, "a process ended early, or training did "
                           "not start in 300 s")
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
  return [(p.wait(timeout=600), p.stdout.read()) for p in procs]


def _fail_with_outputs(procs, message):
  """Kills what still runs and fails with each process's status and output."""
  for p in procs:
    if p.poll() is None:
      p.kill()
  details = [f"process {i}: status {p.wait()}\n{p.stdout.read()[-3000:]}"
             for i, p in enumerate(procs)]
  pytest.fail("\n".join([message, *details]))


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit())


def _params(workdir, step):
  """The parameters of a checkpoint two processes wrote, on this device."""
  path = (workdir / "checkpoints" / str(step) / "state").absolute()
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(path).item_metadata["params"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"params": jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                        sharding=device), stored)}
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=target,
      restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))["params"]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(tiny_cohort, tmp_path,
                                                       request):
  cwd = request.config.rootpath
  # The first pair builds the records, both processes at once (under a lock).
  cache = tmp_path / "cache"
  reference = tmp_path / "reference"
  for code, out in _run_pair(tiny_cohort, cache, reference, cwd):
    assert code == 0, out[-3000:]

  interrupted = tmp_path / "interrupted"
  stopped = _run_pair(tiny_cohort, cache, interrupted, cwd,
                      sigterm_after_steps=12)
  steps = []
  for code, out in stopped:
    assert code == 143, out[-3000:]
    steps += [int(s) for s in re.findall(r"checkpoint saved at step (\d+)",
                                         out)]
  assert len(steps) == 2 and steps[0] == steps[1], steps
  assert steps[0] % preemption.SYNC_EVERY == 0 and steps[0] < NUM_STEPS
  assert _checkpoint_steps(interrupted) == [steps[0]]

  for code, out in _run_pair(tiny_cohort, cache, interrupted, cwd):
    assert code == 0, out[-3000:]
  assert (interrupted / "results.json").exists()
  expected = jax.tree.leaves(_params(reference, NUM_STEPS))
  got = jax.tree.leaves(_params(interrupted, NUM_STEPS))
  assert len(expected) == len(got) > 0
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)
