"""The training and validation steps, the optimizer and the train state."""

from collections.abc import Callable

from clu import metrics as clu_metrics
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from preprocessing import lesion_labels
from pvl_jax.models import unet
from pvl_jax.training import losses

Batch = dict[str, jax.Array]


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
                       rng: jax.Array, num_channels: int,
                       tx: optax.GradientTransformation | None = None
                       ) -> train_state.TrainState:
  """Initialises parameters and optimizer state.

  Args:
    config: the training config.
    model: the U-Net.
    rng: initialisation key.
    num_channels: input channels.
    tx: the optimizer; None: `make_optimizer(config)`. A step compiled for
      one state accepts only states with the same optimizer object.
  """
  sample = jnp.zeros((1, *config.data.patch_size, num_channels), jnp.float32)
  params = jax.jit(model.init)(rng, sample)["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=tx or make_optimizer(config))


def make_train_step(model: unet.UNet, r: float, seg_loss: losses.SegLoss,
                    augment: Callable[[Batch, jax.Array], Batch] | None = None):
  """Returns train_step(state, batch) -> (state, metrics) for a global batch.

  `augment(batch, state.step)`, when given, augments the batch on the device
  first (`augmentation.make_augment_fn`: nnU-Net's recipe, from the larger
  patches the host cut).

  The model classifies bags of `model.cls_bag_size` consecutive patches (one
  subject each, `pvl_jax.data.bags`); 1: each patch.
  """

  def train_step(state: train_state.TrainState, batch: Batch):
    if augment is not None:
      batch = augment(batch, state.step)
    # One label per bag: its patches share their subject's.
    hand_function = batch["hand_function"][::model.cls_bag_size]

    def loss_fn(params):
      seg_logits, cls_logit = model.apply({"params": params}, batch["image"])
      return losses.joint_loss(seg_logits, cls_logit, batch["label"],
                               hand_function, r, seg_loss)

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                       **parts}

  return train_step


def make_eval_step(model: unet.UNet, r: float, seg_loss: losses.SegLoss):
  """Returns eval_step(params, batch) -> loss and hard patch Dice.

  The loss is the training loss: with bags (`model.cls_bag_size` > 1) the
  head classifies each bag of consecutive patches, one label per bag.
  """

  def eval_step(params, batch):
    seg_logits, cls_logit = model.apply({"params": params}, batch["image"])
    loss, parts = losses.joint_loss(
        seg_logits, cls_logit, batch["label"],
        batch["hand_function"][::model.cls_bag_size], r, seg_loss)
    return {"loss": loss, "patch_dice": patch_dice(seg_logits, batch["label"]),
            **parts}

  return eval_step


def patch_dice(seg_logits: list[jax.Array], labels: jax.Array) -> jax.Array:
  """Hard Dice of the finest output over a batch of patches."""
  # Ignored voxels (IGNORE) are neither: masked out of the prediction.
  pred = ((jnp.argmax(seg_logits[0], axis=-1) > 0)
          & (labels != lesion_labels.IGNORE))
  ref = labels == lesion_labels.LESION
  return 2 * jnp.sum(pred & ref) / jnp.maximum(jnp.sum(pred) + jnp.sum(ref),
                                               1)
