"""The located head trains end to end on the tiny cohort and resumes exactly."""

import jax
import numpy as np
import pytest

from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.data import input_pipeline
from pvl_jax.data import template_blocks
from pvl_jax.models import unet
from pvl_jax.training import augmentation
from pvl_jax.training import checkpointing
from pvl_jax.training import config_validation
from pvl_jax.training import located_step
from pvl_jax.training import losses

_TRAIN = "fold0+fold1+fold2"


def _config(recipe="basic"):
  config = joint.get_config("demo")
  config.r = 1.0
  config.model.cls_head = "located"
  config.model.cls_readout_l2 = 1e-3
  config.model.features = (4, 8)
  config.model.strides = ((1, 1, 1), (2, 2, 2))
  config.model.kernel_sizes = ((3, 3, 3),) * 2
  config.model.compute_dtype = "float32"
  config.data.patch_size = (16, 16, 16)
  config.data.num_workers = 0
  config.data.augment.recipe = recipe
  config.batch_size = 2
  config.num_steps = 6
  config.plan = False
  config.optimizer.warmup_steps = 0
  return config


def _setup(config, tiny_builder):
  source = tiny_builder.as_data_source(_TRAIN)
  grid = template_blocks.template_grid({"train": source})
  config.model.cls_template_shape = grid.shape
  config.model.cls_template_affine = grid.affine
  settings = located_step.LocatedSettings.from_config(config)
  model = unet.unet_from_config(config.model)
  assert model.cls_num_blocks == settings.num_blocks
  state = located_step.create_train_state(
      config, model, unet.init_key(0), 1,
      located_step.initial_memory(source, settings, grid))
  step = jax.jit(located_step.make_train_step(
      model, config.r, losses.SegLoss.from_config(config), settings,
      augmentation.make_augment_fn(config)))
  data = input_pipeline.train_dataset(source, config.data, 2, seed=0,
                                      template=grid)
  return state, step, iter(data)


@pytest.mark.parametrize("recipe", ["basic", "nnunet"])
def test_located_head_trains_its_memory_and_masked_read_out(tiny_builder,
                                                            recipe):
  config = _config(recipe)
  config_validation.validate_config(config)
  state, step, data = _setup(config, tiny_builder)
  mask = np.asarray(state.memory.mask)
  assert 0 < mask.sum() < mask.size
  seen = set()
  for _ in range(3):
    batch = next(data)
    seen |= set(batch["subject_index"].tolist())
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert float(metrics["cls_loss"]) > 0
  rows = np.asarray(state.memory.rows)
  for subject in range(rows.shape[0]):
    # Each patch wrote its blocks (the brain is never exactly 0 lesion
    # probability); subjects no patch came from are still empty.
    assert (rows[subject].any()) == (subject in seen)
  kernel = np.asarray(state.params["cls_head"]["kernel"])
  assert np.all(kernel[mask == 0] == 0)
  assert np.any(kernel[mask == 1] != 0)


def test_exact_resume_keeps_the_memory(tiny_builder, tmp_path):
  config = _config()
  state, step, data = _setup(config, tiny_builder)
  for _ in range(2):
    state, _ = step(state, next(data))
  manager = checkpointing.checkpoint_manager(tmp_path, config)
  checkpointing.save(manager, 2, state, data)
  manager.wait_until_finished()
  continued, _ = step(state, next(data))

  fresh, _, fresh_data = _setup(config, tiny_builder)
  restored = checkpointing.restore(manager, 2, fresh, fresh_data)
  np.testing.assert_array_equal(restored.memory.rows, state.memory.rows)
  resumed, _ = step(restored, next(fresh_data))
  for a, b in zip(jax.tree.leaves(continued), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_located_head_needs_a_3d_model():
  config = _config()
  config.data.patch_size = (16, 16)
  config.model.strides = ((1, 1), (2, 2))
  config.model.kernel_sizes = ((3, 3),) * 2
  with pytest.raises(InputError, match="model.cls_head.*2D"):
    config_validation.validate_config(config)
