r"""Training patches per second from the input pipeline alone.

Usage (from the repository root):
  git show a2c08a9:pvl_jax/data/input_pipeline.py > /tmp/old_input_pipeline.py
  PVL_JAX_CACHE=/tmp/cache_base python -m benchmarks.input_pipeline \
      [--old=/tmp/old_input_pipeline.py] [--num_workers=2] [--seconds=30] \
      [--repeats=2] [--resolution_mm=2 --num_subjects=40]

The cohort is the demo config's (the 40-subject 2 mm synthetic cohort,
generated and built if the cache lacks it; --resolution_mm=1 with a few
--num_subjects gives a 1 mm one); the patches come from fold 0's training
split. Cases: the demo config (32^3, batch 2), the full 3D config's
128^3 patches (batch 2), and what the full config's planner gives for this
cohort in 3D and in 2D (slices). The new pipeline pads a patch larger
than a volume; the old one could not, so it gets the patch cut to the
smallest volume.

Each pipeline runs with --num_workers worker processes (the new one's
worker count also follows the usable CPUs) and is consumed as fast as it
produces: "setup s" is building the pipeline and its first batch (worker
start-up; the new pipeline's first build also decodes the split once),
"patches/s" all patches over the time since the build started, after
--seconds or 3 setups, whichever is longer. --old is a module file of an
earlier pipeline with the same `train_dataset` (it is loaded for the
measurement only). The machine's load average is printed before and after:
other processes sharing the CPUs lower every number.
"""

from collections.abc import Sequence
import importlib.util
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import cloudpickle
import numpy as np

from configs import joint
from preprocessing.io import console
from preprocessing.io import tables
from preprocessing.io import workers
from pvl_jax.data import dataset
from pvl_jax.data import input_pipeline
from pvl_jax.data import records
from pvl_jax.planning import config_plan
from pvl_jax.planning import fingerprint

_OLD = flags.DEFINE_string("old", "", "Module file of the pipeline to compare "
                           "with (e.g. `git show a2c08a9:pvl_jax/data/"
                           "input_pipeline.py`); empty: the current one only.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes.")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "Shortest timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per row.")
_RESOLUTION = flags.DEFINE_integer("resolution_mm", 2,
                                   "The synthetic cohort's grid: 1 or 2 mm.")
_NUM_SUBJECTS = flags.DEFINE_integer("num_subjects", 40,
                                     "Subjects of the synthetic cohort.")


def _load_old(path: str) -> Any:
  """The module at `path`, pickled by value so that its workers need no file."""
  spec = importlib.util.spec_from_file_location("old_input_pipeline", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  cloudpickle.register_pickle_by_value(module)
  return module


def _cases(train: Any) -> list[tuple[str, tuple[int, ...], int, int]]:
  """(name, patch size, batch size, 2D slice axis) of each configuration."""
  demo = joint.get_config("demo")
  cases = [("demo", tuple(demo.data.patch_size), demo.batch_size, 2),
           ("full 3D", (128, 128, 128), 2, 2)]
  fp = fingerprint.fingerprint(train)
  for dims in (3, 2):
    config = joint.get_config()
    config.planner.dims = dims
    plan = config_plan.plan_from_config(fp, config)
    name = f"planned {dims}D"
    if plan.slice_axis is not None:
      name += f", slices across axis {plan.slice_axis}"
    cases.append((name, tuple(plan.patch_size), plan.batch_size,
                  plan.slice_axis or 2))
  return cases


def _patches_per_second(module: Any, train: Any, patch: tuple[int, ...],
                        batch_size: int, slice_axis: int
                        ) -> tuple[float, float]:
  """(setup seconds, patches per second) of one pipeline."""
  data = joint.get_config("demo").data
  data.patch_size = patch
  data.slice_axis = slice_axis
  data.num_workers = _NUM_WORKERS.value
  start = time.perf_counter()
  it = iter(module.train_dataset(train, data, batch_size, seed=0))
  next(it)
  setup = time.perf_counter() - start
  # Counted from the start: batches computed ahead during the start-up
  # (the old pipeline's 16 threads per worker finish theirs together) must
  # not count as speed. A window of 3 start-ups amortises the start-up.
  batches, window = 1, max(_SECONDS.value, 3 * setup)
  while time.perf_counter() - start < window:
    next(it)
    batches += 1
  rate = batches * batch_size / (time.perf_counter() - start)
  it.close()
  return setup, rate


def _load() -> str:
  one, five, fifteen = os.getloadavg()
  return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: Sequence[str]) -> None:
  del argv
  console.configure()
  config = joint.get_config("demo")
  config.data.synthetic.resolution_mm = _RESOLUTION.value
  config.data.synthetic.num_subjects = _NUM_SUBJECTS.value
  train = dataset.split_sources(dataset.prepare(config), config)["train"]
  shapes = np.array(list(records.volume_shapes({"train": train}).values()))
  smallest = shapes.min(axis=0)
  pipelines = {"new": input_pipeline}
  if _OLD.value:
    pipelines = {"old": _load_old(_OLD.value), **pipelines}
  print(f"{len(train)} training subjects, {_RESOLUTION.value} mm, volumes "
        f"from {'x'.join(map(str, smallest))} to "
        f"{'x'.join(map(str, shapes.max(axis=0)))}; {_NUM_WORKERS.value} "
        f"workers; {workers.available_cpus()} usable CPUs; load average "
        f"{_load()}")
  header = ["case", "patch", "batch", "pipeline", "setup s"] + [
      f"patches/s run {r + 1}" for r in range(_REPEATS.value)]
  rows = []
  for name, planned, batch_size, slice_axis in _cases(train):
    for label, module in pipelines.items():
      patch = planned
      if label == "old":
        # It cut axial patches inside the volumes only (no padding).
        patch = tuple(int(min(p, s)) for p, s in zip(planned, smallest))
      runs = [_patches_per_second(module, train, patch, batch_size,
                                  slice_axis)
              for _ in range(_REPEATS.value)]
      rows.append([name, "x".join(map(str, patch)), batch_size, label,
                   f"{runs[0][0]:.1f} / {runs[-1][0]:.1f}"]
                  + [f"{rate:.1f}" for _, rate in runs])
  print(tables.markdown_table(header, rows))
  print(f"load average after: {_load()}")


if __name__ == "__main__":
  app.run(main)
