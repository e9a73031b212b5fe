"""pvl_jax's training step and whole-brain inference vs the PyTorch anchor.

Usage (from the repository root, on the device machine):
  python -m benchmarks.train_step [--anchor=../shared/anchors/torch_unet3d.py]
      [--patch=128] [--batch=2] [--steps=20]

Each framework runs in its own process (no allocator or compiler state is
shared): pvl_jax's jitted joint training step (nnU-Net's 6-stage
32-64-128-256-320-320 3D U-Net, one input channel, deep supervision, the
hand-function head, bfloat16 compute), alone and with nnU-Net's
augmentation in the step (`data.augment.recipe="nnunet"`: the batch is the
larger patch the host cuts, resampled and augmented on the device), the two
timed in alternation so that both see the same machine; the anchor eager and
with torch.compile, and pvl_jax's sliding-window prediction of a whole 1 mm brain
(the MNI template's brain bounding box plus the pipeline's crop margin;
0.5 overlap, Gaussian weights, patch-sized windows) without and with 8-way
mirroring. Prints one markdown table: ms per step (median after warm-up),
voxels/s, achieved TFLOP/s from the analytic convolution FLOP count, peak
device memory and the ratio to torch.compile; the augmented step's step rate
relative to the plain one.

`--patch=32 --features=8,16,32 --dtype=float32` runs the same at the CPU
demo's size (no anchor). With `--cpu` (benchmarks/step_profile.py) it times
the step on the CPU beside the anchor's network of the same shape,
alternating, and profiles both by part. The torch rows' "compile s" is the anchor's warm-up
(its first three steps).
"""

from collections.abc import Sequence
import json
import math
from pathlib import Path
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from benchmarks import step_profile
from configs import joint
from pvl_jax.inference import sliding_window
from pvl_jax.training import augmentation
from pvl_jax.training import compiled_step
from pvl_jax.training import losses
from pvl_jax.training import parallel as parallel_lib
from pvl_jax.training import steps
from pvl_jax.models import flops
from pvl_jax.models import unet

_WORKER = flags.DEFINE_enum("worker", None,
                            ["jax", "inference", "jax_serve"],
                            "Internal: run one measurement and print JSON.")
_CPU = flags.DEFINE_bool(
    "cpu", False, "CPU mode (benchmarks/step_profile.py): pvl_jax's step and "
    "the anchor's network of the same shape on the CPU, alternating, with "
    "the ratio and a profile of both by part.")
flags.DEFINE_integer("rounds", 5, "CPU mode: alternating rounds of --steps.")
flags.DEFINE_integer("profile_steps", 5,
                     "CPU mode: steps in each framework's profile.")
flags.DEFINE_string("torch_python", sys.executable,
                    "CPU mode: a Python with torch for the anchor.")
ANCHOR = flags.DEFINE_string(
    "anchor", str(Path(__file__).resolve().parents[2] / "shared" / "anchors"
                  / "torch_unet3d.py"),
    "The PyTorch anchor script; skipped when missing or torch is absent.")
_PATCH = flags.DEFINE_integer("patch", 128, "Cubic patch edge (voxels).")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
_FEATURES = flags.DEFINE_list("features", ["32", "64", "128", "256", "320",
                                           "320"], "Feature maps per stage.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype.")
# The 1 mm MNI152 brain mask's bounding box (146 x 182 x 156 voxels) plus
# the 2-voxel normalize.BRAIN_CROP_MARGIN on each side,
# clipped to the template grid (197 x 233 x 189).
_BRAIN_SHAPE = flags.DEFINE_list("brain_shape", ["149", "185", "157"],
                                 "Spatial shape of the predicted volume.")


def topology() -> dict[str, tuple]:
  """features / strides / kernel_sizes of the benchmarked U-Net."""
  features = tuple(int(f) for f in _FEATURES.value)
  strides = ((1, 1, 1),) + ((2, 2, 2),) * (len(features) - 1)
  return {"features": features, "strides": strides,
          "kernel_sizes": ((3, 3, 3),) * len(features)}


def model_and_config() -> tuple[unet.UNet, ml_collections.ConfigDict]:
  """The benchmarked model and its config (the full joint recipe, resized)."""
  config = joint.get_config()
  config.data.patch_size = (_PATCH.value,) * 3
  config.batch_size = _BATCH.value
  config.model.update(topology())
  config.model.compute_dtype = _DTYPE.value
  return unet.unet_from_config(config.model), config


def _peak_gib() -> float | None:
  stats = jax.devices()[0].memory_stats()
  return stats["peak_bytes_in_use"] / 2**30 if stats else None


def compiled_train_step(model: unet.UNet, config: ml_collections.ConfigDict,
                        recipe: str = "none") -> dict:
  """The jitted joint training step, compiled, with a state and a batch.

  Random data of the shapes the input pipeline yields for `recipe`.

  Returns:
    {"step", "state", "batch", "compile_s"}.
  """
  parallel = parallel_lib.DataParallel()
  rng = np.random.default_rng(0)
  variant = config.copy_and_resolve_references()
  variant.data.augment.recipe = recipe
  image = compiled_step.batch_spec(variant)["image"].shape
  batch = parallel.global_batch({
      "image": rng.normal(size=image).astype(np.float32),
      "label": (rng.random(image[:-1]) > 0.97).astype(np.int32),
      "hand_function": (np.arange(image[0]) % 2).astype(np.int32),
      "subject_index": np.arange(image[0], dtype=np.int32)})
  state = steps.create_train_state(variant, model, jax.random.key(0), 1)
  step = parallel.jit(steps.make_train_step(
      model, variant.r, losses.SegLoss.from_config(variant),
      augmentation.make_augment_fn(variant)))
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return {"step": compiled, "state": state, "batch": batch,
          "compile_s": time.perf_counter() - start}


def run_steps(variant: dict, count: int) -> list[float]:
  """Runs `count` steps of a `compiled_train_step`; each one's seconds."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    variant["state"], metrics = variant["step"](variant["state"],
                                                variant["batch"])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return times


def jax_train_steps() -> list[dict[str, float | None]]:
  """Times the jitted training step without and with on-device augmentation.

  The two steps alternate, so that load on the machine falls on both alike.
  """
  model, config = model_and_config()
  variants = {name: compiled_train_step(model, config, recipe)
              for name, recipe in (("pvl_jax", "none"),
                                   ("pvl_jax + nnU-Net augmentation",
                                    "nnunet"))}
  for _ in range(3):  # warm-up
    for v in variants.values():
      run_steps(v, 1)
  for v in variants.values():
    v["times"] = []
  for _ in range(_STEPS.value):
    for v in variants.values():
      v["times"] += run_steps(v, 1)
  plain_ms = 1000 * float(np.median(variants["pvl_jax"]["times"]))
  rows = []
  for name, v in variants.items():
    ms = 1000 * float(np.median(v["times"]))
    rows.append({"impl": name, "step_ms_median": ms,
                 "compile_s": v["compile_s"], "peak_gib": _peak_gib(),
                 "rate_vs_plain": plain_ms / ms})
  return rows


def jax_inference() -> list[dict[str, float | None]]:
  """Times sliding-window prediction of one brain, without/with mirroring."""
  model, config = model_and_config()
  window = config.data.patch_size
  variables = jax.jit(model.init)(
      jax.random.key(0), np.zeros((1, *window, 1), np.float32))
  brain = np.random.default_rng(0).normal(
      size=(*(int(s) for s in _BRAIN_SHAPE.value), 1)).astype(np.float32)
  rows = []
  for name, axes in (("inference, no mirroring", ()),
                     ("inference, 8-way mirroring", (0, 1, 2))):
    window_fn = sliding_window.make_window_fn(model.apply, variables, axes)

    # Until the probability map is on the host.
    def predict(window_fn=window_fn):
      return sliding_window.predict_volume(
          window_fn, brain, window, config.inference.overlap,
          config.inference.batch_size)
    start = time.perf_counter()
    predict()  # compile
    first_s = time.perf_counter() - start
    times = []
    for _ in range(5):
      start = time.perf_counter()
      predict()
      times.append(time.perf_counter() - start)
    rows.append({"impl": name, "brain_s_median": float(np.median(times)),
                 "first_s": first_s, "peak_gib": _peak_gib()})
  return rows


def run_json(argv: Sequence[str]) -> list[dict] | str:
  """Runs a measuring process; its JSON lines, or why it failed."""
  done = subprocess.run(argv, capture_output=True, text=True, check=False)
  rows = [json.loads(line) for line in done.stdout.splitlines()
          if line.startswith("{")]
  if done.returncode or not rows:
    return f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
  return rows


def _fmt(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def cpu_mode() -> None:
  """pvl_jax's step beside the anchor's network on the CPU (step_profile)."""
  _, config = model_and_config()
  ds_weights = losses.SegLoss.from_config(config).weights(
      len(config.model.features) - 1)
  features = ",".join(_FEATURES.value)
  size = [f"--patch={_PATCH.value}", f"--batch={_BATCH.value}",
          f"--features={features}"]
  step_profile.compare(
      [sys.executable, "-m", "benchmarks.train_step", "--worker=jax_serve",
       *size, f"--dtype={_DTYPE.value}"],
      [flags.FLAGS.torch_python, str(step_profile.ANCHOR_WORKER),
       f"--anchor={ANCHOR.value}", *size,
       f"--ds_weights={','.join(str(float(w)) for w in ds_weights)}"],
      f"patch {_PATCH.value}^3, batch {_BATCH.value}, features "
      f"{features.replace(',', '-')}, pvl_jax {_DTYPE.value}, PyTorch "
      "float32", flags.FLAGS.rounds, _STEPS.value,
      flags.FLAGS.profile_steps)


def main(argv: Sequence[str]) -> None:
  del argv
  if _WORKER.value == "jax_serve":
    model, config = model_and_config()
    step_profile.serve(compiled_train_step(model, config), run_steps)
    return
  if _CPU.value:
    cpu_mode()
    return
  if _WORKER.value == "jax":
    for row in jax_train_steps():
      print(json.dumps(row))
    return
  if _WORKER.value == "inference":
    for row in jax_inference():
      print(json.dumps(row))
    return
  passthrough = [f"--patch={_PATCH.value}", f"--batch={_BATCH.value}",
                 f"--steps={_STEPS.value}", f"--dtype={_DTYPE.value}",
                 f"--features={','.join(_FEATURES.value)}",
                 f"--brain_shape={','.join(_BRAIN_SHAPE.value)}"]
  me = [sys.executable, "-m", "benchmarks.train_step"]
  # The parent process never touches a device: each measurement owns its
  # process's allocator and compilation caches.
  results = {"pvl_jax": run_json([*me, "--worker=jax", *passthrough])}
  anchor = Path(ANCHOR.value)
  anchor_size = (_PATCH.value == 128 and _BATCH.value == 2
                 and _FEATURES.value == _FEATURES.default)
  for name, extra in (("torch eager", []), ("torch.compile", ["compile"])):
    if not anchor.exists():
      results[name] = f"skipped: no anchor at {anchor}"
    elif not anchor_size:
      results[name] = "skipped: the anchor is fixed at 128^3, batch 2"
    else:
      results[name] = run_json([sys.executable, str(anchor), *extra])
  inference_rows = run_json([*me, "--worker=inference", *passthrough])

  step_flops = flops.TRAIN_STEP_FORWARDS * _BATCH.value * (
      flops.unet_forward_flops((_PATCH.value,) * 3, 1, **topology()))
  voxels = _BATCH.value * _PATCH.value ** 3
  compiled = results["torch.compile"]
  compiled_ms = compiled[0]["step_ms_median"] if isinstance(
      compiled, list) else None
  print(f"train step: patch {_PATCH.value}^3, batch {_BATCH.value}, "
        f"features {'-'.join(_FEATURES.value)}, {_DTYPE.value}; "
        f"{step_flops / 1e12:.2f} TFLOP per step (convolutions)")
  print("| implementation | ms/step | Mvoxels/s | TFLOP/s | peak GiB | "
        "compile s | vs torch.compile |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name, rows in results.items():
    if isinstance(rows, str):
      print(f"| {name} | {rows} | | | | | |")
      continue
    for row in rows:
      ms = row["step_ms_median"]
      ratio = f"{compiled_ms / ms:.2f}x" if compiled_ms else "n/a"
      label = row["impl"] if len(rows) > 1 else name
      print(f"| {label} | {ms:.1f} | {voxels / ms / 1e3:.1f} | "
            f"{step_flops / ms / 1e9:.2f} | "
            f"{_fmt(row.get('peak_gib'), '.2f')} "
            f"| {_fmt(row.get('compile_s', row.get('warmup_s')), '.1f')} "
            f"| {ratio} |")
  augmented = results["pvl_jax"]
  if isinstance(augmented, list) and len(augmented) > 1:
    print(f"\nwith nnU-Net's augmentation in the step: "
          f"{augmented[1]['rate_vs_plain']:.2f}x the plain step rate")
  brain = [int(s) for s in _BRAIN_SHAPE.value]
  print(f"\nwhole-brain inference: {'x'.join(map(str, brain))} voxels "
        f"({math.prod(brain) / 1e6:.1f} M), {_PATCH.value}^3 windows")
  print("| run | s per brain | first brain s (compile) | peak GiB |")
  print("| --- | --- | --- | --- |")
  if isinstance(inference_rows, str):
    print(f"| pvl_jax | {inference_rows} | | |")
  else:
    for row in inference_rows:
      print(f"| {row['impl']} | {row['brain_s_median']:.3f} | "
            f"{row['first_s']:.1f} | {_fmt(row['peak_gib'], '.2f')} |")


if __name__ == "__main__":
  app.run(main)
