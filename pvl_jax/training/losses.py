"""Segmentation and joint losses: L_joint = r * L_cls + L_seg.

L_seg is nnU-Net's DC_and_CE_loss: soft Dice over the foreground classes plus
softmax cross-entropy, summed over deep-supervision outputs with weights
1/2^i (finest first) except 0 for the coarsest, normalised to sum to one
(nnU-Net v2's nnUNetTrainer._build_loss), or weights of the config's own
(`SegLoss`); each output's target is the labels brought down to its grid by
one of `TARGET_RULES`.

Voxels labelled `lesion_labels.IGNORE` (a cohort's ignore label) count in
neither term, as nnU-Net masks its ignore label out of both; subjects whose
hand function is negative (unlabelled) count nowhere in L_cls. Both are read
from the labels themselves, so callers pass batches as they come.
"""

from collections.abc import Sequence
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
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


# Edge (voxels) of the neighbourhood whose lesion voxels count as a lesion
# voxel's local lesion size (`small_lesion_weights`): 5 voxels (10 mm at
# 2 mm) hold a whole lesion under 0.05 ml (one to six 2 mm voxels).
SMALL_LESION_WINDOW = 5


def small_lesion_weights(labels: jax.Array, weight: float) -> jax.Array:
  """Cross-entropy weight per voxel: 1 + weight / n on lesion voxels.

  n is the number of lesion voxels in the voxel's `SMALL_LESION_WINDOW`^3
  neighbourhood (itself included): about a small lesion's size, and
  saturating for large ones, so a one-voxel lesion's voxel weighs
  1 + weight, a voxel inside a large lesion about 1. Background and IGNORE
  voxels weigh 1. Read from the (augmented) labels on the device.

  Args:
    labels: integer class map, (batch, *spatial); classes > 0 are lesion.
    weight: the extra weight of an isolated lesion voxel (>= 0).

  Returns:
    (batch, *spatial) float32 weights.
  """
  lesion = ((labels > 0) & (labels != IGNORE)).astype(jnp.float32)
  count = lesion
  # A box sum, one axis at a time (5 + 5 + 5 adds per voxel, not 125).
  for axis in range(1, labels.ndim):
    window = [1] * labels.ndim
    window[axis] = SMALL_LESION_WINDOW
    count = jax.lax.reduce_window(count, 0.0, jax.lax.add, window,
                                  (1,) * labels.ndim, "SAME")
  return 1.0 + lesion * weight / jnp.maximum(count, 1.0)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       small_lesion_weight: float = 0.0) -> jax.Array:
  """Softmax cross-entropy summed over the voxels that are not IGNORE.

  Divided by their number; with `small_lesion_weight` > 0 each voxel's term
  is weighted by `small_lesion_weights` first (so small lesions add to the
  loss instead of sharing a fixed total).
  """
  valid = labels != IGNORE
  per_voxel = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(valid, labels, 0))
  if small_lesion_weight:
    per_voxel = per_voxel * small_lesion_weights(labels, small_lesion_weight)
  return jnp.sum(per_voxel * valid) / jnp.maximum(jnp.sum(valid), 1)


def dice_ce_loss(logits: jax.Array, labels: jax.Array,
                 batch_dice: bool = False,
                 small_lesion_weight: float = 0.0) -> jax.Array:
  """Soft Dice loss + cross-entropy (equal weights, as nnU-Net)."""
  return (soft_dice_loss(logits, labels, batch_dice=batch_dice)
          + cross_entropy_loss(logits, labels, small_lesion_weight))


# How a deep-supervision output's target is made from the full-resolution
# labels, per block of f voxels (f: the output's downsampling per axis):
# "nearest" takes the block's first voxel (labels[::f]); "nearest_exact" its
# centre voxel f // 2 (nnU-Net's DownsampleSegForDSTransform, torch's
# nearest-exact); "max" marks the block lesion if any voxel in it is, so a
# lesion smaller than the block is never lost from a coarse target.
TARGET_RULES = ("nearest", "nearest_exact", "max")


@dataclasses.dataclass(frozen=True)
class SegLoss:
  """The settings of L_seg (`segmentation_loss`).

  Attributes:
    batch_dice: pool the Dice over the batch (nnU-Net's batch_dice).
    ds_weights: one weight per deep-supervision output, finest first
      (normalised to sum to one); () for nnU-Net v2's rule
      (`deep_supervision_weights`).
    ds_targets: one of `TARGET_RULES`.
    small_lesion_weight: extra cross-entropy weight of an isolated lesion
      voxel (`small_lesion_weights`); 0: plain cross-entropy.
  """
  batch_dice: bool = False
  ds_weights: tuple[float, ...] = ()
  ds_targets: str = "nearest"
  small_lesion_weight: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "SegLoss":
    """The loss settings of a (planned) training config."""
    ds = config.deep_supervision
    return cls(batch_dice=bool(config.batch_dice),
               ds_weights=tuple(float(w) for w in ds.weights),
               ds_targets=str(ds.targets),
               small_lesion_weight=float(config.small_lesion_weight))

  def weights(self, num_outputs: int) -> np.ndarray:
    """The normalised weight of each of `num_outputs` outputs."""
    if not self.ds_weights:
      return deep_supervision_weights(num_outputs)
    if len(self.ds_weights) != num_outputs:
      raise ValueError(f"deep_supervision.weights has {len(self.ds_weights)} "
                       f"entries for a network with {num_outputs} outputs")
    w = np.asarray(self.ds_weights, np.float32)
    return w / w.sum()


def deep_supervision_weights(num_outputs: int) -> np.ndarray:
  """nnU-Net's weights: 1/2^i for output i (finest first), summing to one.

  The coarsest of several outputs gets 0, as in nnU-Net v2. The weights are
  static (numpy), so a zero-weight output's loss is never computed.
  """
  w = 0.5 ** np.arange(num_outputs, dtype=np.float32)
  if num_outputs > 1:
    w[-1] = 0.0
  return w / w.sum()


def downsample_labels(labels: jax.Array, shape: Sequence[int],
                      rule: str = "nearest") -> jax.Array:
  """A label map brought down to `shape` (spatial) by integer factors.

  Args:
    labels: integer class map, (batch, *spatial); may hold IGNORE.
    shape: the coarse spatial shape; each axis divides its full size.
    rule: one of `TARGET_RULES`. With "max" a block is the largest class in
      it, and IGNORE only where it holds no class above background and some
      IGNORE voxel.

  Returns:
    The coarse label map, (batch, *shape).
  """
  factors = [full // small for full, small in zip(labels.shape[1:], shape)]
  if rule in ("nearest", "nearest_exact"):
    offsets = [f // 2 if rule == "nearest_exact" else 0 for f in factors]
    index = (slice(None),) + tuple(slice(o, None, f)
                                   for o, f in zip(offsets, factors))
    return labels[index]
  if rule != "max":
    raise ValueError(f"unknown deep-supervision target rule {rule!r}; "
                     f"expected one of {TARGET_RULES}")
  blocks = (labels.shape[0],) + tuple(
      n for s, f in zip(shape, factors) for n in (s, f))
  block_axes = tuple(range(2, len(blocks), 2))
  ignored = labels == IGNORE
  classes = jnp.where(ignored, 0, labels).reshape(blocks).max(block_axes)
  any_ignored = ignored.reshape(blocks).any(block_axes)
  return jnp.where((classes == 0) & any_ignored, IGNORE, classes
                   ).astype(labels.dtype)


def segmentation_loss(seg_logits: Sequence[jax.Array], labels: jax.Array,
                      settings: SegLoss = SegLoss()) -> jax.Array:
  """Deep-supervised Dice + CE over a list of outputs, finest first."""
  weights = settings.weights(len(seg_logits))
  total = 0.0
  for w, logits in zip(weights, seg_logits):
    if w == 0:
      continue
    target = downsample_labels(labels, logits.shape[1:-1],
                               settings.ds_targets)
    total = total + w * dice_ce_loss(logits, target, settings.batch_dice,
                                     settings.small_lesion_weight)
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
               settings: SegLoss = SegLoss()
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_joint = r * L_cls + L_seg.

  Returns:
    (loss, parts) where parts holds 'seg_loss' and 'cls_loss' for logging.
  """
  seg = segmentation_loss(seg_logits, labels, settings)
  cls = classification_loss(cls_logit, hand_function)
  return r * cls + seg, {"seg_loss": seg, "cls_loss": cls}
