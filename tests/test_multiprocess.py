"""Two JAX processes (CPU collectives, localhost coordinator) train like one."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import portpicker
import pytest

# Trains a few steps on the tiny cohort and prints a parameter checksum.
# argv: cohort, cache, port, process_id, num_processes, devices_per_process.
SCRIPT = textwrap.dedent("""
    import json, sys, time
    cohort, cache, port, pid, nproc, ndev = sys.argv[1:7]
    pid, nproc, ndev = int(pid), int(nproc), int(ndev)
    import jax
    jax.config.update("jax_num_cpu_devices", ndev)
    if nproc > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(f"localhost:{port}", num_processes=nproc,
                                 process_id=pid)
    from absl import flags
    flags.FLAGS(sys.argv[:1])
    from tests.test_train import tiny_config
    from pvl_jax.training import train
    config = tiny_config(cohort, cache)
    config.num_steps = 3
    config.eval_every = 100
    config.checkpoint_every = 100
    config.log_every = 1
    workdir = f"{cache}/run-{nproc}"
    config, sources = train.prepare_run(config, workdir)
    params = train.train(config, workdir, sources)
    leaves = [float(abs(x).sum()) for x in jax.tree.leaves(
        jax.device_get(params))]
    rates = []
    if pid == 0:
      history = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]
      rates = [h["train/steps_per_s"] for h in history
               if "train/steps_per_s" in h]
    print("RESULT", json.dumps({"leaves": leaves, "steps_per_s": rates}))
""")


def _run(args, cwd):
  return subprocess.Popen([sys.executable, "-c", SCRIPT, *map(str, args)],
                          cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _result(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny_cohort, tmp_path, request):
  cwd = request.config.rootpath
  cache = tmp_path / "cache"
  # Build the dataset once so the processes don't race to prepare it.
  single = _result(_run([tiny_cohort, cache, 0, 0, 1, 2], cwd))
  port = portpicker.pick_unused_port()
  procs = [_run([tiny_cohort, cache, port, pid, 2, 1], cwd) for pid in (0, 1)]
  multi = [_result(p) for p in procs]
  np.testing.assert_allclose(multi[0]["leaves"], single["leaves"], rtol=1e-5)
  np.testing.assert_allclose(multi[1]["leaves"], single["leaves"], rtol=1e-5)
  print("steps/s 1 process x 2 devices:", single["steps_per_s"])
  print("steps/s 2 processes x 1 device:", multi[0]["steps_per_s"])
