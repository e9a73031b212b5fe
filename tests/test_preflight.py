"""Preflight: the train step compiled from shapes, sized, reused; platform."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.data import input_pipeline
from pvl_jax.models import unet
from pvl_jax.training import compiled_step
from pvl_jax.training import parallel as parallel_lib
from pvl_jax.training import steps
from pvl_jax.training import train
from tests.test_train import tiny_config


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory):
  """(config, sources, cache) of a prepared tiny run, shared by the tests."""
  tmp = tmp_path_factory.mktemp("preflight")
  config, sources = train.prepare_run(tiny_config(tiny_cohort, tmp / "cache"),
                                      tmp / "run")
  return config, sources, tmp / "cache"


@pytest.mark.parametrize("recipe", ["basic", "nnunet"])
def test_batch_spec_is_what_the_pipeline_yields(prepared, recipe):
  config = prepared[0].copy_and_resolve_references()
  config.data.augment.recipe = recipe
  batch = next(iter(input_pipeline.train_dataset(
      prepared[1]["train"], config.data, config.batch_size, seed=0)))
  spec = compiled_step.batch_spec(config)
  assert set(batch) == set(spec)
  for key, value in batch.items():
    assert (value.shape, value.dtype) == (spec[key].shape, spec[key].dtype), key
  # nnU-Net's recipe: the host cuts 26^3 around the 16^3 patch.
  assert spec["image"].shape[1:4] == ((26,) * 3 if recipe == "nnunet"
                                      else (16,) * 3)


@pytest.mark.slow  # 35 s: compiles the augmented step
def test_preflight_compiles_the_augmentation_into_the_step(prepared):
  """The AOT-compiled step takes the host's larger patches and augments."""
  config = prepared[0].copy_and_resolve_references()
  config.data.augment.recipe = "nnunet"
  model, parallel, step = train.preflight(config, prepared[1])
  batch = parallel.global_batch(next(iter(input_pipeline.train_dataset(
      prepared[1]["train"], config.data, config.batch_size, seed=0))))
  losses = []
  for _ in range(2):  # the state is donated: a fresh one each time
    state = steps.create_train_state(config, model, unet.init_key(0), 1,
                                     step.tx)
    state, metrics = step.executable(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 1
  assert np.isfinite(losses[0]) and losses[0] == losses[1]


def test_compiled_step_reports_parameters_and_memory(prepared):
  config = prepared[0].copy_and_resolve_references()
  model = unet.unet_from_config(config.model)
  step = compiled_step.compile_train_step(config, model,
                                          parallel_lib.DataParallel())
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 16, 16, 1),
                                               jax.numpy.float32))["params"]
  assert step.num_params == sum(x.size for x in jax.tree.leaves(params))
  # At least the float32 parameters and AdamW's two moments.
  assert step.memory_bytes > 3 * 4 * step.num_params
  assert step.compile_s > 0 and step.flops > 0
  assert step.device_memory_bytes is None  # the CPU runtime does not say
  config.device_memory_gb = step.memory_bytes / 2e9
  with pytest.raises(InputError, match=(
      r"needs about .* GB per device, the device has .* GB; lower "
      r"data\.patch_size or batch_size .* planner\.vram_budget_gb")):
    compiled_step.report(compiled_step.compile_train_step(
        config, model, parallel_lib.DataParallel()), config)


def test_training_runs_the_preflight_executable(prepared, tmp_path,
                                                monkeypatch):
  """The step is compiled once, by preflight, and training calls it."""
  config, sources, _ = prepared
  compiled = train.preflight(config, sources)
  calls = []
  model, parallel, step = compiled

  def counted(*args):
    calls.append(1)
    return step.executable(*args)

  wrapped = (model, parallel, dataclasses.replace(step, executable=counted))
  lowered = []
  monkeypatch.setattr(parallel_lib.DataParallel, "jit",
                      lambda self, fn, donate_state=True: lowered.append(fn)
                      or jax.jit(fn))
  train.train(config, tmp_path / "run", sources, wrapped)
  assert len(calls) == config.num_steps
  assert len(lowered) == 1  # only the validation step is jitted in train


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "pvl_jax.main", *args],
                        cwd=cwd, capture_output=True, text=True, timeout=600)


def test_cli_preflight_reports_and_exits_without_training(
    tiny_cohort, prepared, tmp_path, request):
  common = ["--config=configs/joint.py:demo", f"--workdir={tmp_path / 'run'}",
            f"--config.data.cohort_dir={tiny_cohort}",
            f"--config.data.cache_dir={prepared[2]}",
            "--config.data.patch_size=(16,16,16)",
            "--config.model.features=(4,8,16)", "--preflight"]
  ok = _main(*common, cwd=request.config.rootpath)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "preflight: " in ok.stderr and "parameters" in ok.stderr
  assert "memory estimate" in ok.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
  too_small = _main(*common, "--config.device_memory_gb=0.001",
                    cwd=request.config.rootpath)
  assert too_small.returncode == 2
  error = too_small.stderr.strip().splitlines()[-1]
  assert error.startswith("error: config: the compiled train step needs")
  for key in ("data.patch_size", "batch_size", "planner.vram_budget_gb"):
    assert key in error


def test_requested_platform_must_be_there(tiny_cohort, tmp_path):
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.platform = "gpu"
  with pytest.raises(InputError, match=(
      r"config\.platform: 'gpu' requested but JAX found cpu devices only")):
    train.prepare_run(config, tmp_path / "run")
  assert not (tmp_path / "cache").exists()  # stopped before any data work
  config.platform = "cuda"
  with pytest.raises(InputError, match=r"config\.platform: must be one of"):
    train.prepare_run(config, tmp_path / "run")
