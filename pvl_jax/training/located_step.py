"""The train step of the located head: joint loss, memory in the train state.

`model.cls_head = "located"` (`pvl_jax.models.located_head`). The train
state carries the per-subject memory of block fractions beside the
parameters, so checkpoints and exact resume keep it. Each patch's logit is
its subject's whole-brain read-out with the patch's blocks live; subjects
whose hand function is unlabelled (-1) update the memory but stay out of
L_cls (`losses.classification_loss`).
"""

from collections.abc import Callable
import dataclasses
import math
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pvl_jax.data import decoded_subjects
from pvl_jax.data import records
from pvl_jax.data import template_blocks
from pvl_jax.data import template_grid
from pvl_jax.data import template_position
from pvl_jax.models import located_head
from pvl_jax.models import unet
from pvl_jax.training import losses
from pvl_jax.training import readout_penalty
from pvl_jax.training import steps

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LocatedSettings:
  """The located head's static settings.

  Attributes:
    template_shape: the template grid's (`template_blocks.template_grid`).
    block: block edge in template voxels (`model.cls_block`).
    readout_l2: weight of |read-out weights|^2 in the read-out's fit
      (`model.cls_readout_l2`, `located_head.fit_readout`).
  """
  template_shape: tuple[int, ...]
  block: int
  readout_l2: float

  @property
  def num_blocks(self) -> int:
    return math.prod(template_position.block_grid(self.template_shape,
                                                  self.block))

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict
                  ) -> "LocatedSettings":
    """From `model.cls_template_shape` (`train.prepare_run` sets it).

    Raises:
      ValueError: `model.cls_readout_l2` still asks for its choice, which
        `train.prepare_run` makes (`head_recipe.with_readout_penalty`).
    """
    if readout_penalty.is_chosen(config.model.cls_readout_l2):
      raise ValueError("model.cls_readout_l2 = -1 is chosen by "
                       "train.prepare_run before the head is built")
    return cls(tuple(int(n) for n in config.model.cls_template_shape),
               int(config.model.cls_block),
               float(config.model.cls_readout_l2))


# Newton steps of the read-out's fit per training step, from the last fit:
# two patches' rows change per step, and logistic regression's Newton steps
# converge quadratically (`located_head.fit_readout`).
READOUT_NEWTON_STEPS = 2


class LocatedTrainState(train_state.TrainState):
  memory: located_head.LocatedMemory


def reference_fractions(source: Any, template_shape: tuple[int, ...],
                        block: int,
                        template: template_grid.TemplateGrid | None
                        ) -> tuple[np.ndarray, np.ndarray]:
  """The training split's reference-mask block fractions and labels.

  Args:
    source: the training split.
    template_shape: the template grid's (`model.cls_template_shape`).
    block: block edge in template voxels (`model.cls_block`).
    template: the grid of `template_shape` that the records lie
      in (`model.cls_template_affine`); None: the grid they were cropped
      from (`template_grid.record_origin`).

  Returns:
    ((subjects, blocks) `template_blocks.lesion_block_fractions`, (subjects,)
    hand function, -1 where unlabelled).

  Raises:
    InputError: a training subject without brain voxels.
  """
  subjects = decoded_subjects.decoded_subjects(source, template)
  fractions = template_blocks.lesion_block_fractions(
      subjects, template_shape, block, records.subject_ids(source))
  return fractions, np.array([s.hand_function for s in subjects])


def initial_memory(source: Any, settings: LocatedSettings,
                   template: template_grid.TemplateGrid | None
                   ) -> located_head.LocatedMemory:
  """An empty memory for the training split and its lesion-frequency mask.

  Arguments and errors as `reference_fractions`', the grid and block the
  head's `settings`.
  """
  fractions, labels = reference_fractions(source, settings.template_shape,
                                          settings.block, template)
  mask = template_blocks.lesion_frequency_mask(fractions)
  return located_head.LocatedMemory.create(jnp.asarray(mask),
                                           jnp.asarray(labels))


def create_train_state(config: ml_collections.ConfigDict, model: unet.UNet,
                       rng: jax.Array, num_channels: int,
                       memory: located_head.LocatedMemory,
                       tx: optax.GradientTransformation | None = None
                       ) -> LocatedTrainState:
  """`steps.create_train_state` with the memory beside the parameters."""
  base = steps.create_train_state(config, model, rng, num_channels, tx)
  return LocatedTrainState(step=base.step, apply_fn=base.apply_fn,
                           params=base.params, tx=base.tx,
                           opt_state=base.opt_state, memory=memory)


def make_train_step(model: unet.UNet, r: float, seg_loss: losses.SegLoss,
                    settings: LocatedSettings,
                    augment: Callable[[Batch, jax.Array], Batch] | None = None):
  """Returns train_step(state, batch) -> (state, metrics).

  `model` must read the same template blocks (`unet.unet_from_config` of
  the same config); the batch needs its template positions
  (`template_position.KEY`).
  """
  head = located_head.LocatedHead(settings.num_blocks)

  def train_step(state: LocatedTrainState, batch: Batch):
    if augment is not None:
      batch = augment(batch, state.step)
    position = batch[template_position.KEY]
    blocks = template_position.block_indices(
        position, batch["label"].shape[1:], settings.template_shape,
        settings.block)
    volume = located_head.voxel_volumes(position)

    readout = state.params["cls_head"]
    if r > 0:  # with r = 0 the head is not trained (its L2 is 0)
      memory = state.memory
      kernel, bias = located_head.fit_readout(
          memory.rows * memory.mask, memory.labels, settings.readout_l2,
          readout["kernel"], readout["bias"], READOUT_NEWTON_STEPS)
      readout = {"kernel": kernel, "bias": bias}

    def loss_fn(params):
      seg_logits, probability = model.apply({"params": params},
                                            batch["image"])
      logits, memory = located_head.patch_logits(
          head, readout, state.memory, batch["subject_index"], probability,
          blocks, volume, settings.block)
      loss, parts = losses.joint_loss(seg_logits, logits, batch["label"],
                                      batch["hand_function"], r, seg_loss)
      return loss, (parts, memory)

    (loss, (parts, memory)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    # The read-out is the fit, not an optimizer step (its gradient is 0).
    params = {**new_state.params, "cls_head": readout}
    new_state = new_state.replace(params=params, memory=memory)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       **parts}

  return train_step


def make_eval_step(model: unet.UNet, seg_loss: losses.SegLoss):
  """Returns eval_step(params, batch) -> segmentation losses and patch Dice.

  A patch has no hand-function logit of its own here: the head decides per
  subject, and validation scores it on whole scans
  (`whole_scan_validation`).
  """

  def eval_step(params, batch):
    seg_logits, _ = model.apply({"params": params}, batch["image"])
    seg = losses.segmentation_loss(seg_logits, batch["label"], seg_loss)
    # "loss" is L_seg until the whole scans' L_cls is added to it.
    return {"loss": seg, "seg_loss": seg,
            "patch_dice": steps.patch_dice(seg_logits, batch["label"])}

  return eval_step
