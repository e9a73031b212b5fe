r"""The one-shot check of the full-size recipe on an accelerator: one table.

Usage (from the repository root, on the device machine, wheels installed as
docs/design.md says):
  python -m benchmarks.device_check [--steps=300] [--num_subjects=40]
  python -m benchmarks.device_check --tiny --cohort_dir=COHORT   # CPU dry run

Measures, each part in its own process (no allocator or compiler state is
shared), and prints one markdown table:
1. the full-size joint train step (nnU-Net's 6-stage 32-320 U-Net, 128^3,
   batch 2, bfloat16), alone and with nnU-Net's augmentation in the step
   (its step rate relative to the plain one), beside the PyTorch anchor
   `../shared/anchors/torch_unet3d.py`, eager and with torch.compile
   (`benchmarks.train_step`);
2. whole-brain sliding-window inference at 1 mm, without and with 8-way
   mirroring (`benchmarks.train_step`);
3. `--steps` steps of the planned config (`configs/joint.py`, planned on the
   2 mm synthetic cohort, generated here): steps/s, the share of wall time
   the loop waited for data (`train/data_wait`), and preflight's memory
   estimate of the compiled step next to the device's measured peak.
`--tiny` shrinks every part to CPU size (a 32^3 3-stage network, a small
volume, a few steps, no anchor) so that the whole script is a test.

The device image has jax, flax, optax, orbax and torch; the rest travels as
cp312 wheels in the ignored folder `.wheels/` (the device tool's `carry`):
`../shared/wheels-cp312/*` plus clu, tensorboardX and what they need that
the image lacks (`pip download --no-deps --only-binary=:all:
--python-version 3.12 ... clu==0.0.12 tensorboardX==2.6.5 etils wrapt
protobuf`). SimpleITK is not needed: the cohort is generated in template
space, which does not import it. Then, on the device:
  pip install -q --no-index --no-deps --target /tmp/site .wheels/*.whl &&
  PYTHONPATH=/tmp/site python -m benchmarks.device_check
"""

from collections.abc import Sequence
import json
from pathlib import Path
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import train_step as train_step_benchmark
from configs import joint
from preprocessing.io import console
from preprocessing.io import tables
from pvl_jax.training import train

_WORKER = flags.DEFINE_bool("planned_worker", False,
                            "Internal: run part 3 and print JSON.")
_STEPS = flags.DEFINE_integer("train_steps", 300, "Steps of the planned config.")
_NUM_SUBJECTS = flags.DEFINE_integer("num_subjects", 40,
                                     "Subjects of the 2 mm cohort.")
_TINY = flags.DEFINE_bool("tiny", False, "CPU-sized dry run of every part.")
_COHORT = flags.DEFINE_string("cohort_dir", "", "Use this cohort instead of "
                              "generating the synthetic one.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where part 3 trains (default: "
                               "a temporary directory).")

GIB = 2**30
# CPU-sized stand-ins for --tiny.
_TINY_SIZES = ["--patch=32", "--features=8,16,32", "--brain_shape=48,56,48",
               "--steps=2", "--dtype=float32"]


def planned_config():
  """Part 3's config: the full recipe, planned on the 2 mm cohort."""
  config = joint.get_config()
  config.data.synthetic.resolution_mm = 2
  config.data.synthetic.num_subjects = _NUM_SUBJECTS.value
  config.data.preprocess.target_spacing = 2.0
  config.num_steps = _STEPS.value
  config.log_every = max(_STEPS.value // 6, 1)
  config.eval_every = config.checkpoint_every = 10**9  # the end only
  if _COHORT.value:
    config.data.cohort_dir = _COHORT.value
  if _TINY.value:
    config.plan = False
    config.batch_dice = True
    config.data.patch_size = (16, 16, 16)
    config.model.features = (4, 8, 16)
    config.model.strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2))
    config.model.kernel_sizes = ((3, 3, 3),) * 3
    config.model.compute_dtype = "float32"
    config.batch_size = 2
    config.data.num_workers = 1
  return config


def planned_run() -> dict[str, object]:
  """Part 3 in this process: prepare, preflight, train; the numbers."""
  config = planned_config()
  workdir = Path(_WORKDIR.value or tempfile.mkdtemp(prefix="device_check-"))
  start = time.perf_counter()
  config, sources = train.prepare_run(config, workdir)
  data_s = time.perf_counter() - start
  compiled = train.preflight(config, sources)
  train.train(config, workdir, sources, compiled)
  history = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  windows = [h for h in history if "train/steps_per_s" in h]
  # The first window holds the warm-up (first steps, worker start-up).
  steady = windows[1:] or windows
  stats = jax.local_devices()[0].memory_stats() or {}
  step = compiled[2]
  device = jax.local_devices()[0]
  return {
      "device": f"{device.device_kind} ({jax.default_backend()})",
      "plan": (f"patch {'x'.join(map(str, config.data.patch_size))}, "
               f"{'-'.join(map(str, config.model.features))}, batch "
               f"{config.batch_size}, {config.model.compute_dtype}"),
      "data_s": data_s,
      "compile_s": step.compile_s,
      "steps_per_s": float(np.mean([h["train/steps_per_s"] for h in steady])),
      "data_wait": float(np.mean([h["train/data_wait"] for h in steady])),
      "estimate_gib": step.memory_bytes / GIB,
      "peak_gib": (stats["peak_bytes_in_use"] / GIB
                   if "peak_bytes_in_use" in stats else None),
  }


def _number(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def rows(benchmark: dict, anchor: dict, inference: list | str,
         planned: dict | str) -> list[list[str]]:
  """The table's rows from the parts' JSON (a string: why a part failed)."""
  out = []
  for name, result in (("pvl_jax", benchmark), *anchor.items()):
    if isinstance(result, str):
      out.append([f"train step: {name}", result, ""])
    else:
      row = result[0]
      out.append([f"train step: {name}",
                  f"{row['step_ms_median']:.1f} ms",
                  f"peak {_number(row.get('peak_gib'), '.2f')} GiB"])
  if not isinstance(benchmark, str):
    # benchmarks.train_step times the step with the augmentation beside it.
    augmented = benchmark[1]
    out.insert(1, ["train step: with nnU-Net augmentation",
                   f"{augmented['step_ms_median']:.1f} ms",
                   f"{augmented['rate_vs_plain']:.2f}x the plain step rate"])
  if isinstance(inference, str):
    out.append(["whole-brain inference", inference, ""])
  else:
    out += [[row["impl"], f"{row['brain_s_median']:.3f} s per brain",
             f"first (compile) {row['first_s']:.1f} s"] for row in inference]
  if isinstance(planned, str):
    out.append(["planned config", planned, ""])
    return out
  out += [
      ["planned config", planned["plan"],
       f"data prepared in {planned['data_s']:.0f} s"],
      ["planned config: steps/s", f"{planned['steps_per_s']:.2f}",
       f"train step compiled in {planned['compile_s']:.1f} s"],
      ["planned config: data wait", f"{100 * planned['data_wait']:.1f}%",
       "share of wall time in next(data_iter)"],
      ["preflight estimate vs measured peak",
       f"{planned['estimate_gib']:.2f} GiB",
       f"peak {_number(planned['peak_gib'], '.2f')} GiB"],
  ]
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  console.configure()
  if _WORKER.value:
    print(json.dumps(planned_run()))
    return
  start = time.perf_counter()
  sizes = _TINY_SIZES if _TINY.value else []
  bench = [sys.executable, "-m", "benchmarks.train_step", *sizes]
  benchmark = train_step_benchmark.run_json([*bench, "--worker=jax"])
  anchor_script = Path(train_step_benchmark.ANCHOR.value)
  anchor = {}
  for name, extra in (("torch eager", []), ("torch.compile", ["compile"])):
    if _TINY.value:
      anchor[name] = "skipped (--tiny: the anchor is fixed at 128^3)"
    elif not anchor_script.exists():
      anchor[name] = f"skipped: no anchor at {anchor_script}"
    else:
      anchor[name] = train_step_benchmark.run_json(
          [sys.executable, str(anchor_script), *extra])
  inference = train_step_benchmark.run_json([*bench, "--worker=inference"])
  me = [sys.executable, "-m", "benchmarks.device_check", "--planned_worker",
        f"--train_steps={_STEPS.value}", f"--num_subjects={_NUM_SUBJECTS.value}"]
  me += ["--tiny"] * _TINY.value
  me += [f"--cohort_dir={_COHORT.value}"] * bool(_COHORT.value)
  me += [f"--workdir={_WORKDIR.value}"] * bool(_WORKDIR.value)
  planned = train_step_benchmark.run_json(me)
  planned = planned if isinstance(planned, str) else planned[0]
  # The parent never touches the device (each part owns its allocator).
  device = planned.get("device", "?") if isinstance(planned, dict) else "?"
  print(f"device check on {device}, {time.perf_counter() - start:.0f} s in "
        "all")
  print(tables.markdown_table(["check", "value", "detail"],
                              rows(benchmark, anchor, inference, planned)))


if __name__ == "__main__":
  app.run(main)
