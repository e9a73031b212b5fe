"""Segmentation and joint losses: L_joint = r * L_cls + L_seg.

L_seg is nnU-Net's DC_and_CE_loss: soft Dice over the foreground classes plus
softmax cross-entropy, summed over deep-supervision outputs with weights
1/2^i (finest first) except 0 for the coarsest, normalised to sum to one
(nnU-Net v2's nnUNetTrainer._build_loss).

Voxels labelled `lesion_labels.IGNORE` (a cohort's ignore label) count in
neither term, as nnU-Net masks its ignore label out of both; subjects whose
hand function is negative (unlabelled) count nowhere in L_cls. Both are read
from the labels themselves, so callers pass batches as they come.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from preprocessing.lesion_labels import IGNORE


def soft_dice_loss(logits: jax.Array, labels: jax.Array,
                   smooth: float = 1e-5, batch_dice: bool = False) -> jax.Array:
  """1 - mean soft Dice of the foreground classes.

  Args:
    logits: (batch, *spatial, num_classes).
    labels: integer class map, (batch, *spatial); IGNORE voxels are left out
      of both sums.
    smooth: added to numerator and denominator (nnU-Net's 1e-5).
    batch_dice: pool voxels over the batch before the ratio (nnU-Net's
      batch_dice) instead of averaging per-sample Dice.

  Returns:
    Scalar loss.
  """
  num_classes = logits.shape[-1]
  valid = (labels != IGNORE)[..., None].astype(jnp.float32)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1:] * valid
  # one_hot of IGNORE (outside the classes) is all zeros already.
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)[..., 1:]
  axes = tuple(range(0 if batch_dice else 1, logits.ndim - 1))
  intersect = jnp.sum(probs * onehot, axis=axes)
  denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2 * intersect + smooth) / (denom + smooth)
  return 1.0 - dice.mean()


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the voxels that are not IGNORE."""
  valid = labels != IGNORE
  per_voxel = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  return jnp.sum(per_voxel * valid) / jnp.maximum(jnp.sum(valid), 1)


def dice_ce_loss(logits: jax.Array, labels: jax.Array,
                 batch_dice: bool = False) -> jax.Array:
  """Soft Dice loss + cross-entropy (equal weights, as nnU-Net)."""
  return (soft_dice_loss(logits, labels, batch_dice=batch_dice)
          + cross_entropy_loss(logits, labels))


def deep_supervision_weights(num_outputs: int) -> np.ndarray:
  """nnU-Net's weights: 1/2^i for output i (finest first), summing to one.

  The coarsest of several outputs gets 0, as in nnU-Net v2. The weights are
  static (numpy), so a zero-weight output's loss is never computed.
  """
  w = 0.5 ** np.arange(num_outputs, dtype=np.float32)
  if num_outputs > 1:
    w[-1] = 0.0
  return w / w.sum()


def downsample_labels(labels: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Nearest-neighbour downsampling of a label map to `shape` (spatial).

  Uses strided slicing, which is nearest neighbour for the integer factors
  a U-Net's strides produce.
  """
  factors = [full // small for full, small in zip(labels.shape[1:], shape)]
  index = (slice(None),) + tuple(slice(None, None, f) for f in factors)
  return labels[index]


def segmentation_loss(seg_logits: Sequence[jax.Array], labels: jax.Array,
                      batch_dice: bool = False) -> jax.Array:
  """Deep-supervised Dice + CE over a list of outputs, finest first."""
  weights = deep_supervision_weights(len(seg_logits))
  total = 0.0
  for w, logits in zip(weights, seg_logits):
    if w == 0:
      continue
    target = downsample_labels(labels, logits.shape[1:-1])
    total = total + w * dice_ce_loss(logits, target, batch_dice)
  return total


def classification_loss(cls_logit: jax.Array, hand_function: jax.Array
                        ) -> jax.Array:
  """Binary cross-entropy of the hand-function logit (1 = bad).

  The mean over the labelled entries (hand_function 0 or 1); 0 when none is.
  """
  labelled = hand_function >= 0
  per_subject = optax.sigmoid_binary_cross_entropy(
      cls_logit.astype(jnp.float32),
      jnp.where(labelled, hand_function, 0).astype(jnp.float32))
  return jnp.sum(per_subject * labelled) / jnp.maximum(jnp.sum(labelled), 1)


def joint_loss(seg_logits: Sequence[jax.Array], cls_logit: jax.Array,
               labels: jax.Array, hand_function: jax.Array, r: float,
               batch_dice: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_joint = r * L_cls + L_seg.

  Returns:
    (loss, parts) where parts holds 'seg_loss' and 'cls_loss' for logging.
  """
  seg = segmentation_loss(seg_logits, labels, batch_dice)
  cls = classification_loss(cls_logit, hand_function)
  return r * cls + seg, {"seg_loss": seg, "cls_loss": cls}
