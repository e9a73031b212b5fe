"""What the hand-function head changes in training: its state, steps, checks.

The per-patch and subject heads train `steps.make_train_step` (the subject
head on bags, `bags.training_model`) on a state of parameters and optimizer
state. The located head (`located_step`) adds the per-subject memory of
block fractions to the state, and is validated on whole scans
(`whole_scan_validation`). The training loop, the preflight's compiled step
and checkpointing take what these functions make, so the loop is one for
every head.
"""

from collections.abc import Callable
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pvl_jax.data import bags
from pvl_jax.data import template_grid
from pvl_jax.models import located_head
from pvl_jax.models import unet
from pvl_jax.training import augmentation
from pvl_jax.training import located_step
from pvl_jax.training import losses
from pvl_jax.training import readout_penalty
from pvl_jax.training import steps
from pvl_jax.training import whole_scan_validation

log = logging.getLogger(__name__)


def is_located(config: ml_collections.ConfigDict) -> bool:
  return config.model.cls_head == "located"


def make_train_step(config: ml_collections.ConfigDict, model: unet.UNet
                    ) -> Callable:
  """train_step(state, batch) -> (state, metrics) of the configured head."""
  seg_loss = losses.SegLoss.from_config(config)
  augment = augmentation.make_augment_fn(config)
  if is_located(config):
    return located_step.make_train_step(
        model, config.r, seg_loss,
        located_step.LocatedSettings.from_config(config), augment)
  return steps.make_train_step(bags.training_model(model, config), config.r,
                               seg_loss, augment)


def make_eval_step(config: ml_collections.ConfigDict, model: unet.UNet
                   ) -> Callable:
  """eval_step(params, batch) -> metrics of the fixed validation patches.

  It scores what training optimises: bags for a subject head; for the
  located head only the segmentation (its loss is `whole_scans`').
  """
  seg_loss = losses.SegLoss.from_config(config)
  if is_located(config):
    return located_step.make_eval_step(model, seg_loss)
  return steps.make_eval_step(bags.training_model(model, config), config.r,
                              seg_loss)


def whole_scans(config: ml_collections.ConfigDict, model: unet.UNet,
                validation: Any
                ) -> whole_scan_validation.WholeScanValidation | None:
  """The located head's validation on whole scans.

  None for the other heads, and with r = 0, where the head is not trained.
  """
  if not is_located(config) or config.r == 0:
    return None
  return whole_scan_validation.WholeScanValidation(model, validation, config)


def with_readout_penalty(config: ml_collections.ConfigDict, train_source: Any
                         ) -> ml_collections.ConfigDict:
  """The config with the located head's read-out L2 chosen, if asked.

  `model.cls_readout_l2 = -1` (`readout_penalty.CHOOSE`) is replaced by the
  value chosen on the training split's reference masks
  (`readout_penalty.choose`); with r = 0 the head is not trained, so 0.
  `config` must hold the template grid (`model.cls_template_shape`).

  Raises:
    InputError: too few labelled training subjects to choose.
  """
  if not (is_located(config) and
          readout_penalty.is_chosen(config.model.cls_readout_l2)):
    return config
  config = config.copy_and_resolve_references()
  if config.r == 0:
    config.model.cls_readout_l2 = 0.0
    return config
  fractions, labels = located_step.reference_fractions(
      train_source, tuple(int(n) for n in config.model.cls_template_shape),
      int(config.model.cls_block),
      template_grid.TemplateGrid.from_config(config.model))
  penalty = readout_penalty.choose(fractions, labels, config.seed)
  log.info("%s", readout_penalty.describe(penalty))
  config.model.cls_readout_l2 = penalty.l2
  return config


def initial_train_state(config: ml_collections.ConfigDict, model: unet.UNet,
                        train_source: Any, tx: optax.GradientTransformation
                        ) -> Any:
  """The state at step 0 (the located head's memory from `train_source`).

  Raises:
    InputError: a training subject the located head cannot read.
  """
  rng, channels = unet.init_key(config.seed), len(config.data.modalities)
  if not is_located(config):
    return steps.create_train_state(config, model, rng, channels, tx)
  memory = located_step.initial_memory(
      train_source, located_step.LocatedSettings.from_config(config),
      template_grid.TemplateGrid.from_config(config.model))
  return located_step.create_train_state(config, model, rng, channels, memory,
                                         tx)


def abstract_train_state(config: ml_collections.ConfigDict, model: unet.UNet,
                         tx: optax.GradientTransformation,
                         num_train_subjects: int) -> Any:
  """The train state's shapes, without initialising or reading anything.

  Args:
    num_train_subjects: rows of the located head's memory.
  """
  rng, channels = unet.init_key(config.seed), len(config.data.modalities)
  if not is_located(config):
    return jax.eval_shape(lambda: steps.create_train_state(
        config, model, rng, channels, tx))
  blocks = model.cls_num_blocks
  memory = located_head.LocatedMemory(
      rows=jax.ShapeDtypeStruct((num_train_subjects, blocks), jnp.float32),
      mask=jax.ShapeDtypeStruct((blocks,), jnp.float32),
      labels=jax.ShapeDtypeStruct((num_train_subjects,), jnp.float32))
  return jax.eval_shape(lambda m: located_step.create_train_state(
      config, model, rng, channels, m, tx), memory)
