"""The train step compiled ahead of time, sized before step 1.

`compile_train_step` lowers and compiles the planned train step from shapes
alone (`jit(...).lower(...).compile()`), before any parameter is initialised
or batch is read, and reports what a user needs to know before hours of
training: the parameter count, the compile time and XLA's memory estimate
per device against the device's memory (what the runtime reports, or
`config.device_memory_gb`). An estimate that does not fit stops the run with
exit status 2 naming the keys that lower it. Training then runs this same
executable, so the step is compiled once.

On the CPU backend the report also estimates the time per step from the
compiled program's FLOP count, so that a full-size recipe that lands on the
CPU (a GPU plugin that failed to load) says so before it starts.
"""

import dataclasses
import logging
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from preprocessing.io import workers
from preprocessing.io.errors import InputError
from pvl_jax.data import template_position
from pvl_jax.models import unet
from pvl_jax.training import augmentation_geometry
from pvl_jax.training import head_recipe
from pvl_jax.training import parallel as parallel_lib
from pvl_jax.training import steps

log = logging.getLogger(__name__)

GB = 1e9
# Convolution throughput of XLA's CPU backend per core, measured on a 2-core
# machine (~37 GFLOP/s with 32 channels, see docs/design.md); a rough guide.
CPU_FLOPS_PER_CORE = 18e9
# A CPU run expected to take longer than this gets a loud warning.
CPU_WARNING_HOURS = 4.0


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The compiled train step and what preflight measured of it.

  Attributes:
    executable: call as `executable(state, global_batch)`; `state` must be
      built with `tx` (`head_recipe.initial_train_state(..., tx)`).
    tx: the optimizer the step was compiled for.
    num_params: trainable parameters.
    compile_s: seconds spent lowering and compiling.
    memory_bytes: XLA's estimate of device memory per device during a step
      (arguments + outputs - donated aliases + temporaries + code).
    device_memory_bytes: the device's memory (config or runtime), None if
      neither says.
    flops: XLA's FLOP count of one step (None if it gives none).
  """
  executable: Any
  tx: optax.GradientTransformation
  num_params: int
  compile_s: float
  memory_bytes: int
  device_memory_bytes: int | None
  flops: float | None


def batch_spec(config: ml_collections.ConfigDict
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a global training batch (`input_pipeline`'s).

  With nnU-Net's augmentation the host cuts patches larger than
  `data.patch_size`, which the step resamples
  (`augmentation_geometry.input_patch_size`).
  """
  batch = config.batch_size
  patch = augmentation_geometry.input_patch_size(config.data)
  return {
      "image": jax.ShapeDtypeStruct(
          (batch, *patch, len(config.data.modalities)), jnp.float32),
      "label": jax.ShapeDtypeStruct((batch, *patch), jnp.int32),
      "hand_function": jax.ShapeDtypeStruct((batch,), jnp.int32),
      "subject_index": jax.ShapeDtypeStruct((batch,), jnp.int32),
      template_position.KEY: jax.ShapeDtypeStruct(
          (batch, 3, len(patch) + 1), jnp.float32),
  }


def device_memory_bytes(config: ml_collections.ConfigDict) -> int | None:
  """Memory of one device: config.device_memory_gb, else the runtime's."""
  if config.device_memory_gb > 0:
    return int(config.device_memory_gb * GB)
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def compile_train_step(config: ml_collections.ConfigDict, model: unet.UNet,
                       parallel: parallel_lib.DataParallel,
                       num_train_subjects: int = 0) -> CompiledStep:
  """Lowers and compiles the train step from shapes; measures it.

  Args:
    config: the prepared (planned) config.
    model: the U-Net.
    parallel: the device mesh and shardings the step runs on.
    num_train_subjects: the training split's subjects (the located head's
      memory has a row per subject; the other heads keep none).

  Returns:
    The compiled step and its numbers.
  """
  tx = steps.make_optimizer(config)
  state = head_recipe.abstract_train_state(config, model, tx,
                                          num_train_subjects)
  jitted = parallel.jit(head_recipe.make_train_step(config, model))
  start = time.perf_counter()
  executable = jitted.lower(state, batch_spec(config)).compile()
  compile_s = time.perf_counter() - start
  memory = executable.memory_analysis()
  memory_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                  - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                  + memory.generated_code_size_in_bytes)
  cost = executable.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  flops = cost.get("flops") if cost else None
  num_params = sum(math.prod(leaf.shape)
                   for leaf in jax.tree.leaves(state.params))
  return CompiledStep(executable, tx, num_params, compile_s,
                      int(memory_bytes),
                      device_memory_bytes(config),
                      float(flops) if flops else None)


def report(step: CompiledStep, config: ml_collections.ConfigDict) -> None:
  """Logs the preflight numbers; raises if the step does not fit.

  Raises:
    InputError: the memory estimate exceeds the device's memory (exit 2),
      naming the numbers and the keys that lower them.
  """
  available = ("unknown (the runtime does not say; set "
               "config.device_memory_gb to check)"
               if step.device_memory_bytes is None
               else f"{step.device_memory_bytes / GB:.2f} GB")
  log.info("preflight: %s parameters; train step compiled in %.1f s; "
           "memory estimate %.2f GB per device, device memory %s",
           f"{step.num_params:,}", step.compile_s, step.memory_bytes / GB,
           available)
  if (step.device_memory_bytes is not None
      and step.memory_bytes > step.device_memory_bytes):
    raise InputError(
        f"config: the compiled train step needs about "
        f"{step.memory_bytes / GB:.2f} GB per device, the device has "
        f"{step.device_memory_bytes / GB:.2f} GB; lower data.patch_size or "
        f"batch_size (now {tuple(config.data.patch_size)}, "
        f"{config.batch_size}), or with config.plan lower "
        f"planner.vram_budget_gb (now {config.planner.vram_budget_gb:g}) so "
        "that the planner chooses them")
  if jax.default_backend() == "cpu" and step.flops:
    cores = workers.available_cpus()
    seconds = step.flops / (CPU_FLOPS_PER_CORE * cores)
    hours = seconds * config.num_steps / 3600
    if hours > CPU_WARNING_HOURS:
      log.warning(
          "training on the CPU (JAX found no GPU or TPU): about %.0f s per "
          "step on %d cores, %.0f hours for %d steps. Is the GPU/TPU plugin "
          "installed? config.platform='gpu' (or 'tpu') makes such a run stop "
          "instead", seconds, cores, hours, config.num_steps)
