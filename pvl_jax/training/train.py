"""Training loop: jitted, data-parallel over every device, resumable.

`train_and_evaluate` is what `pvl_jax.main` runs: validate the config,
prepare the data and the plan (`prepare_run`), train (`train`), evaluate the
final model on whole volumes (`pvl_jax.evaluation.evaluate_run`) and write
`results.json` last, so that its presence means the run is finished.
"""

import json
import logging
from pathlib import Path
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorboardX

from preprocessing.io.atomic import atomic_write_text
from pvl_jax.data import bags
from pvl_jax.data import dataset
from pvl_jax.data import input_pipeline
from pvl_jax.data import records
from pvl_jax.data import splits
from pvl_jax.data import template_blocks
from pvl_jax.data import template_grid
from pvl_jax.evaluation import evaluate_run
from pvl_jax.evaluation import plots
from pvl_jax.evaluation import run_summary
from pvl_jax.models import unet
from pvl_jax.planning import config_plan
from pvl_jax.training import checkpointing
from pvl_jax.training import compiled_step
from pvl_jax.training import config_validation
from pvl_jax.training import parallel as parallel_lib
from pvl_jax.training import preemption
from pvl_jax.training import disk_checks
from pvl_jax.training import head_recipe
from pvl_jax.training import progress
from pvl_jax.training import steps

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """The loss or gradients of a training step were NaN or infinite."""


def prepare_run(config: ml_collections.ConfigDict, workdir: str | Path
                ) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Validates the config, prepares the dataset and (optionally) the plan.

  Args:
    config: training config (see configs/joint.py).
    workdir: the run directory (created by the disk checks; the resolved
      config.json goes there once the data is ready).

  Returns:
    (config with the plan applied, split name -> data source).
  """
  config_validation.validate_config(config)
  disk_checks.check_run_dirs(workdir, config)
  workdir = Path(workdir)
  builder = dataset.prepare(config)
  sources = dataset.split_sources(builder, config)
  # Written only once the data has been read and split, so that a run that
  # fails on bad input leaves no files in its workdir; by process 0 alone,
  # as every once-per-run output.
  if head_recipe.is_located(config):
    # The blocks tile the template grid the records are crops of; config.json
    # keeps it so that inference rebuilds the same head and places new scans
    # where training placed its records.
    config = config.copy_and_resolve_references()
    grid = template_blocks.template_grid(
        sources, dataset.pipeline_template_grid(config))
    config.model.cls_template_shape = grid.shape
    config.model.cls_template_affine = grid.affine
    config = head_recipe.with_readout_penalty(config, sources["train"])
  if jax.process_index() == 0:
    atomic_write_text(workdir / "config.json",
                      config.to_json_best_effort(indent=2))
  config = splits.record_splits(config, sources, workdir)
  log.info("data: %s (fold %d: %d train, %d validation, %d test subjects)",
           builder.data_dir, config.data.fold, len(sources["train"]),
           len(sources["validation"]), len(sources["test"]))
  if config.plan:
    config = config_plan.plan_and_apply(config, sources["train"],
                                        builder.data_dir, workdir,
                                        jax.device_count())
    config_validation.validate_config(config)
    if jax.process_index() == 0:
      atomic_write_text(workdir / "config.json",
                        config.to_json_best_effort(indent=2))
  return config, sources


def preflight(config: ml_collections.ConfigDict, sources: dict[str, Any]
              ) -> tuple[unet.UNet, parallel_lib.DataParallel,
                         compiled_step.CompiledStep]:
  """Compiles the planned train step ahead of time and checks its memory.

  Args:
    config: the prepared config (from `prepare_run`).
    sources: split name -> data source (from `prepare_run`).

  Raises:
    InputError: the step does not fit the device's memory (exit 2).
  """
  model = unet.unet_from_config(config.model)
  parallel = parallel_lib.DataParallel()
  step = compiled_step.compile_train_step(config, model, parallel,
                                          len(sources["train"]))
  compiled_step.report(step, config)
  return model, parallel, step


def train(config: ml_collections.ConfigDict, workdir: str | Path,
          sources: dict[str, Any],
          compiled: tuple[unet.UNet, parallel_lib.DataParallel,
                          compiled_step.CompiledStep] | None = None) -> Any:
  """Trains (resuming from `workdir`'s latest checkpoint) and returns params.

  Args:
    config: the prepared config (from `prepare_run`).
    workdir: where checkpoints, TensorBoard events and metrics.jsonl go.
    sources: split name -> data source (from `prepare_run`).
    compiled: what `preflight` returned; None: run it here.

  Returns:
    The final parameters (replicated over the devices).
  """
  workdir = Path(workdir)
  model, parallel, step_compiled = compiled or preflight(config, sources)
  train_step = step_compiled.executable
  state = head_recipe.initial_train_state(config, model, sources["train"],
                                          step_compiled.tx)
  state = jax.device_put(state, parallel.replicated)
  # Validation scores what training optimises: bags for a subject head,
  # whole scans for the located head's loss.
  eval_step = parallel.jit(head_recipe.make_eval_step(config, model),
                           donate_state=False)
  whole_scans = head_recipe.whole_scans(config, model, sources["validation"])

  local_batch = config.batch_size // jax.process_count()
  # Where the patches lie in the located head's grid.
  template = template_grid.TemplateGrid.from_config(config.model)
  train_ds = input_pipeline.train_dataset(
      sources["train"], config.data, local_batch, config.seed,
      jax.process_index(), jax.process_count(), bags.bag_size(config),
      bags.pooled_patches(config), template)
  data_iter = iter(train_ds)
  val_batches = input_pipeline.fixed_patches(
      sources["validation"], config.data, config.eval_patches, local_batch,
      seed=config.seed + 1, bag_size=bags.bag_size(config),
      pooled_per_bag=bags.pooled_patches(config), template=template)

  manager = checkpointing.checkpoint_manager(workdir, config)
  start_step = manager.latest_step() or 0
  if start_step:
    state = checkpointing.restore(manager, start_step, state, data_iter)
    log.info("resumed from the checkpoint of step %d", start_step)

  # Once-per-run outputs come from process 0 alone: tensorboardX creates its
  # folder check-then-mkdir, so two processes starting together collide.
  writer = (tensorboardX.SummaryWriter(str(workdir / "tensorboard"))
            if jax.process_index() == 0 else None)
  history_path = workdir / "metrics.jsonl"
  train_ids = records.subject_ids(sources["train"])
  train_metrics = None
  window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
  # The previous step's outputs, checked for NaN one step late so that the
  # host never waits for the device between steps.
  pending = None
  try:
    with (preemption.PreemptionGuard() as guard,
          progress.TrainingProgress(start_step, config.num_steps,
                                    show_cls=config.r > 0) as bar):
      for step in range(start_step + 1, config.num_steps + 1):
        wait_start = time.perf_counter()
        local_batch_np = next(data_iter)
        data_wait += time.perf_counter() - wait_start
        state, step_metrics = train_step(
            state, parallel.global_batch(local_batch_np))
        if pending is not None and config.nonfinite == "stop":
          _check_finite(*pending, train_ids)
        pending = (step, step_metrics, local_batch_np["subject_index"])
        update = steps.TrainMetrics.single_from_model_output(**step_metrics)
        train_metrics = (update if train_metrics is None
                         else train_metrics.merge(update))
        window_steps += 1
        bar.step()

        if step % config.log_every == 0 or step == config.num_steps:
          summary = {f"train/{k}": float(v)
                     for k, v in train_metrics.compute().items()}
          window_s = time.perf_counter() - window_start
          summary["train/steps_per_s"] = window_steps / window_s
          # Share of wall time the loop waited for the input pipeline.
          summary["train/data_wait"] = data_wait / window_s
          if config.nonfinite == "skip":
            summary["train/skipped_nonfinite"] = float(
                state.opt_state.total_notfinite)
          bar.train_summary(step, summary)
          _write_scalars(writer, history_path, step, summary)
          train_metrics, window_steps, data_wait = None, 0, 0.0
          window_start = time.perf_counter()

        if step % config.eval_every == 0 or step == config.num_steps:
          summary = _patch_validation(eval_step, state.params, val_batches,
                                      parallel)
          if whole_scans is not None:
            summary.update(whole_scans(state.params))
            summary["val/loss"] = (summary["val/seg_loss"]
                                   + config.r * summary["val/cls_loss"])
          bar.validation(step, summary)
          _write_scalars(writer, history_path, step, summary)

        stop = guard.should_stop(step)
        final = step == config.num_steps or stop
        if step % config.checkpoint_every == 0 or final:
          if config.nonfinite == "stop":
            _check_finite(*pending, train_ids)  # never checkpoint a NaN state
          checkpointing.save(manager, step, state, data_iter)
        if stop:
          raise preemption.Preempted(
              f"SIGTERM received: checkpoint saved at step {step} in "
              f"{workdir / 'checkpoints'}; rerun the same command to resume")
  finally:
    # Finish pending async saves even when the loop raises (NaN, SIGTERM),
    # so the last good checkpoint is complete on disk.
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()

  return state.params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       preflight_only: bool = False) -> dict[str, Any]:
  """Trains the configured model, then evaluates it; resumes from workdir.

  Args:
    config: training config (see configs/joint.py).
    workdir: where checkpoints, TensorBoard events, metrics.jsonl, PNGs and
      results.json go.
    preflight_only: stop after data preparation, planning and the compiled
      step's memory check (`pvl_jax.main --preflight`).

  Returns:
    The results dict also written to `<workdir>/results.json` (empty for
    preflight_only and on processes other than 0).
  """
  workdir = Path(workdir)
  config, sources = prepare_run(config, workdir)
  compiled = preflight(config, sources)
  if preflight_only:
    return {}
  # Replicated parameters: every process holds them whole; evaluation runs
  # on process 0, on its local device, while the others wait for it.
  params = jax.device_get(train(config, workdir, sources, compiled))
  results = {}
  if jax.process_index() == 0:
    model = unet.unet_from_config(config.model)
    results = evaluate_run.evaluate_model(model, params, sources, config,
                                          workdir)
    plots.training_curves(workdir / "metrics.jsonl",
                          workdir / "training_curves.png")
    atomic_write_text(workdir / "results.json",
                      json.dumps(results, indent=2))
    print(run_summary.summary_text(results, workdir))
  preemption.wait_for_all_processes("pvl_jax: evaluation finished")
  return results


def _patch_validation(eval_step, params, batches, parallel
                      ) -> dict[str, float]:
  """Mean loss and hard Dice over the fixed validation patches."""
  totals: dict[str, float] = {}
  for batch in batches:
    out = jax.device_get(eval_step(params, parallel.global_batch(batch)))
    for key, value in out.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return {f"val/{k}": v / len(batches) for k, v in totals.items()}


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


def _write_scalars(writer: tensorboardX.SummaryWriter | None,
                   history_path: Path, step: int,
                   scalars: dict[str, float]) -> None:
  """Writes scalars to TensorBoard and metrics.jsonl (process 0 only).

  Args:
    writer: process 0's TensorBoard writer; None on the other processes,
      which write nothing.
    history_path: metrics.jsonl, appended to.
    step: the training step the scalars belong to.
    scalars: name -> value.
  """
  if writer is None:
    return
  for name, value in scalars.items():
    writer.add_scalar(name, value, step)
  with open(history_path, "a") as f:
    f.write(json.dumps({"step": step, **scalars}) + "\n")
