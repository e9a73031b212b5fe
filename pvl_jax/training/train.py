"""Training loop: jitted, data-parallel over every device, resumable.

Data parallelism has pmap semantics written with `jax.jit` over a 1-D device
mesh: the global batch is sharded along the mesh axis "data", parameters and
optimizer state are replicated, and XLA inserts the all-reduce that averages
gradients (the loss is a mean over the global batch). In a multi-process run
each process feeds its own slice of the global batch through
`jax.make_array_from_process_local_data`.
"""

import json
import logging
import time
from pathlib import Path
from typing import Any

from clu import metrics as clu_metrics
import flax
from flax.training import train_state
import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorboardX

from pvl_jax.training import config_validation
from pvl_jax.data import dataset
from pvl_jax.evaluation import evaluate_run
from pvl_jax.data import input_pipeline
from pvl_jax.training import losses
from pvl_jax.planning import config_plan
from pvl_jax.evaluation import plots
from pvl_jax.training import preemption
from pvl_jax.training import preflight
from pvl_jax.models import unet
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  seg_loss: clu_metrics.Average.from_output("seg_loss")
  cls_loss: clu_metrics.Average.from_output("cls_loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """AdamW with linear warm-up, cosine decay and global-norm clipping."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate,
      warmup_steps=min(opt.warmup_steps, config.num_steps - 1),
      decay_steps=config.num_steps, end_value=opt.learning_rate * 1e-2)
  tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm),
                   optax.adamw(schedule, weight_decay=opt.weight_decay))
  if config.nonfinite == "skip":
    # Steps with NaN/Inf gradients leave parameters unchanged and are counted.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=10**9)
  return tx


def create_train_state(config: ml_collections.ConfigDict, model: unet.UNet,
                       rng: jax.Array, num_channels: int
                       ) -> train_state.TrainState:
  """Initialises parameters and optimizer state."""
  sample = jnp.zeros((1, *config.data.patch_size, num_channels), jnp.float32)
  params = jax.jit(model.init)(rng, sample)["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=make_optimizer(config))


def make_train_step(model: unet.UNet, r: float, batch_dice: bool):
  """Returns train_step(state, batch) -> (state, metrics) for a global batch."""

  def train_step(state: train_state.TrainState, batch: dict[str, jax.Array]):
    def loss_fn(params):
      seg_logits, cls_logit = model.apply({"params": params}, batch["image"])
      return losses.joint_loss(seg_logits, cls_logit, batch["label"],
                               batch["hand_function"], r, batch_dice)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       **parts}

  return train_step


def make_eval_step(model: unet.UNet, r: float, batch_dice: bool):
  """Returns eval_step(params, batch) -> loss and hard patch Dice."""

  def eval_step(params, batch):
    seg_logits, cls_logit = model.apply({"params": params}, batch["image"])
    loss, parts = losses.joint_loss(seg_logits, cls_logit, batch["label"],
                                    batch["hand_function"], r, batch_dice)
    pred = jnp.argmax(seg_logits[0], axis=-1) > 0
    ref = batch["label"] > 0
    dice = 2 * jnp.sum(pred & ref) / jnp.maximum(jnp.sum(pred) + jnp.sum(ref), 1)
    return {"loss": loss, "patch_dice": dice, **parts}

  return eval_step


class DataParallel:
  """The device mesh and the shardings of a data-parallel step."""

  def __init__(self, devices: list[jax.Device] | None = None):
    """Builds a 1-D mesh over `devices` (default: every device)."""
    devices = devices or jax.devices()
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))

  def jit(self, step_fn, donate_state: bool = True):
    """Jits `step_fn(state, batch)`: state replicated, batch sharded."""
    return jax.jit(step_fn, in_shardings=(self.replicated, self.batch),
                   out_shardings=self.replicated,
                   donate_argnums=(0,) if donate_state else ())

  def global_batch(self, local_batch: dict[str, np.ndarray]
                   ) -> dict[str, jax.Array]:
    """Assembles this process's batch slice into global sharded arrays."""
    return {k: jax.make_array_from_process_local_data(self.batch, v)
            for k, v in local_batch.items()}


def checkpoint_manager(workdir: Path, config: ml_collections.ConfigDict
                       ) -> ocp.CheckpointManager:
  """Orbax manager for the train state and the grain iterator state."""
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.max_checkpoints_to_keep, create=True))


def _save(manager, step, state, data_iter) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter)))


def _restore(manager, step, state, data_iter):
  """The train state (and, in place, the data iterator) of checkpoint `step`.

  Raises:
    InputError: the checkpoint's arrays do not fit the configured model
      (orbax's ValueError, e.g. a workdir written by another version).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
  except ValueError as err:
    # Orbax's first sentence names the shapes; the rest suggests padding or
    # truncating the stored arrays, which would be wrong here.
    reason = str(err).split(". ")[0]
    raise InputError(
        f"{manager.directory / str(step)}: cannot resume from this checkpoint "
        f"({reason}); it does not fit the configured model (another version "
        "of pvl_jax or another config?); use a new --workdir") from err
  return restored["state"]


def _log_line(step: int, num_steps: int, summary: dict[str, float],
              steps_per_s: float) -> str:
  eta = (num_steps - step) / steps_per_s if steps_per_s > 0 else float("nan")
  parts = " ".join(f"{k}={v:.4f}" for k, v in sorted(summary.items()))
  return (f"step {step}/{num_steps} {parts} {steps_per_s:.2f} steps/s "
          f"ETA {eta / 60:.1f} min")


def prepare_run(config: ml_collections.ConfigDict, workdir: str | Path
                ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Validates the config, prepares the dataset and (optionally) the plan.

  Args:
    config: training config (see configs/joint.py).
    workdir: the run directory (created; the resolved config.json goes there).

  Returns:
    (config with the plan applied, split name -> data source).
  """
  config_validation.validate_config(config)
  preflight.check_run_dirs(workdir, config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  atomic_write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

  builder = dataset.prepare(config)
  sources = dataset.split_sources(builder, config)
  if config.plan:
    config = config_plan.plan_and_apply(config, sources["train"],
                                     builder.data_dir, workdir,
                                     jax.device_count())
    config_validation.validate_config(config)
    atomic_write_text(workdir / "config.json",
                      config.to_json_best_effort(indent=2))
  config_validation.validate_patch_size(
      config.data.patch_size, evaluate_run.volume_shapes(sources))
  return config, sources


def train(config: ml_collections.ConfigDict, workdir: str | Path,
          sources: dict[str, Any]) -> Any:
  """Trains (resuming from `workdir`'s latest checkpoint) and returns params.

  Args:
    config: the prepared config (from `prepare_run`).
    workdir: where checkpoints, TensorBoard events and metrics.jsonl go.
    sources: split name -> data source (from `prepare_run`).

  Returns:
    The final parameters (replicated over the devices).
  """
  workdir = Path(workdir)
  model = unet.unet_from_config(config.model)
  parallel = DataParallel()
  state = create_train_state(config, model, unet.init_key(config.seed),
                             len(config.data.modalities))
  state = jax.device_put(state, parallel.replicated)
  train_step = parallel.jit(make_train_step(model, config.r, config.batch_dice))
  eval_step = parallel.jit(make_eval_step(model, config.r, config.batch_dice),
                           donate_state=False)

  local_batch = config.batch_size // jax.process_count()
  train_ds = input_pipeline.train_dataset(
      sources["train"], config.data, local_batch, config.seed,
      jax.process_index(), jax.process_count())
  data_iter = iter(train_ds)
  val_batches = input_pipeline.fixed_patches(
      sources["validation"], config.data, config.eval_patches, local_batch,
      seed=config.seed + 1)

  manager = checkpoint_manager(workdir, config)
  start_step = manager.latest_step() or 0
  if start_step:
    state = _restore(manager, start_step, state, data_iter)
    logging.info("Resumed from checkpoint at step %d", start_step)

  writer = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
  history_path = workdir / "metrics.jsonl"
  train_ids = evaluate_run.subject_ids(sources["train"])
  train_metrics = None
  window_start, window_steps = time.perf_counter(), 0
  # The previous step's outputs, checked for NaN one step late so that the
  # host never waits for the device between steps.
  pending = None
  try:
    with preemption.PreemptionGuard() as guard:
      for step in range(start_step + 1, config.num_steps + 1):
        local_batch_np = next(data_iter)
        state, step_metrics = train_step(
            state, parallel.global_batch(local_batch_np))
        if pending is not None and config.nonfinite == "stop":
          _check_finite(*pending, train_ids)
        pending = (step, step_metrics, local_batch_np["subject_index"])
        update = TrainMetrics.single_from_model_output(**step_metrics)
        train_metrics = (update if train_metrics is None
                         else train_metrics.merge(update))
        window_steps += 1

        if step % config.log_every == 0 or step == config.num_steps:
          summary = {f"train/{k}": float(v)
                     for k, v in train_metrics.compute().items()}
          rate = window_steps / (time.perf_counter() - window_start)
          summary["train/steps_per_s"] = rate
          if config.nonfinite == "skip":
            summary["train/skipped_nonfinite"] = float(
                state.opt_state.total_notfinite)
          logging.info(_log_line(step, config.num_steps, summary, rate))
          _write_scalars(writer, history_path, step, summary)
          train_metrics, window_start, window_steps = None, time.perf_counter(), 0

        if step % config.eval_every == 0 or step == config.num_steps:
          summary = evaluate_run.patch_validation(eval_step, state.params,
                                              val_batches, parallel)
          logging.info("step %d validation %s", step, summary)
          _write_scalars(writer, history_path, step, summary)

        final = step == config.num_steps or guard.requested
        if step % config.checkpoint_every == 0 or final:
          if config.nonfinite == "stop":
            _check_finite(*pending, train_ids)  # never checkpoint a NaN state
          _save(manager, step, state, data_iter)
        if guard.requested:
          raise preemption.Preempted(
              f"SIGTERM received: checkpoint saved at step {step} in "
              f"{workdir / 'checkpoints'}; rerun the same command to resume")
  finally:
    # Finish pending async saves even when the loop raises (NaN, SIGTERM),
    # so the last good checkpoint is complete on disk.
    manager.wait_until_finished()
    manager.close()
    writer.close()

  return state.params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path
                       ) -> dict[str, Any]:
  """Trains the configured model, then evaluates it; resumes from workdir.

  Args:
    config: training config (see configs/joint.py).
    workdir: where checkpoints, TensorBoard events, metrics.jsonl, PNGs and
      results.json go.

  Returns:
    The results dict also written to `<workdir>/results.json`.
  """
  workdir = Path(workdir)
  config, sources = prepare_run(config, workdir)
  # Replicated parameters: every process holds them whole; evaluation runs
  # on one process, on its local device.
  params = jax.device_get(train(config, workdir, sources))
  if jax.process_index() != 0:
    return {}
  model = unet.unet_from_config(config.model)
  results = evaluate_run.evaluate_model(model, params, sources, config, workdir)
  plots.training_curves(workdir / "metrics.jsonl",
                           workdir / "training_curves.png")
  atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
  return results


class NonFiniteError(RuntimeError):
  """The loss or gradients of a training step were NaN or infinite."""


def _check_finite(step: int, metrics: dict[str, jax.Array],
                  subject_index: np.ndarray, subject_ids: list[str]) -> None:
  """Raises NonFiniteError naming the step and the subjects of its batch."""
  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  subjects = sorted({subject_ids[i] for i in np.asarray(subject_index)})
  raise NonFiniteError(
      f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step "
      f"{step}; batch subjects (this process): {', '.join(subjects)}. The "
      "last checkpoint before this step is kept; set config.nonfinite='skip' "
      "to skip such steps instead")


def _write_scalars(writer: tensorboardX.SummaryWriter, history_path: Path,
                   step: int, scalars: dict[str, float]) -> None:
  """Writes scalars to TensorBoard and appends them to metrics.jsonl."""
  for name, value in scalars.items():
    writer.add_scalar(name, value, step)
  if jax.process_index() == 0:
    with open(history_path, "a") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
