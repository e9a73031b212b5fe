"""A configurable 2D/3D U-Net with deep supervision and a hand-function head.

The topology follows nnU-Net's PlainConvUNet: per stage two conv-norm-LeakyReLU
blocks, strided-conv downsampling, and one segmentation head per decoder stage
(deep supervision). Two deliberate departures, both measured
(docs/design.md, "Two deliberate departures, both measured"):

* Upsampling is a 1x1 conv to prod(stride) * C channels followed by
  depth-to-space. It computes the same family of functions as a stride-s,
  kernel-s transposed convolution, but XLA differentiates it ~10x faster in 3D.
* On the CPU backend 3D convolutions are computed as sums of 2D convolutions
  (`depth_sliced_conv`), ~5x faster there; the parameters are the same.

Convolutions feeding a normalisation carry no bias (the norm removes it).

The hand-function head maps two summaries of its input through a small MLP to
one logit (bad hand function): the global average of the bottleneck features
and the soft lesion volume (the summed foreground probability of the finest
segmentation output, in voxels per patch; the head takes its log). The second
one is there because instance normalisation sets each channel's spatial mean to
zero, so the pooled bottleneck carries lesion load only through the shape of
its distribution. Measured on a joint model trained on brain-sized patches
(docs/design.md, "The hand-function head"): logistic regression on its pooled
features reached a cross-validated AUC of 0.65-0.73, its soft lesion volume
alone 0.81, and its head on the pooled features alone did not lower its
training loss from ln 2. Joint training lets the classification loss reach the
segmentation through that volume; r sets how much. With r = 0 in the loss the
head is simply not trained, so the same module serves plain segmentation.

The head reads a patch (`cls_bag_size` 1: one logit per patch, today's
per-patch head) or a subject (`cls_bag_size` K > 1: the batch is made of bags
of K patches of one subject each, and the head reads the mean summaries of
the bag's first `cls_bag_pooled` patches, which the sampler draws uniformly
over the volume; see `pvl_jax.data.bags`). Either way its input is an average
of per-patch summaries, so at inference the same head reads the mean
summaries of every sliding window of a scan: the whole brain at once.
"""

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pvl_jax.data import template_position
from pvl_jax.models import located_head
from pvl_jax.models.depth_sliced_conv import depth_sliced_conv

Dtype = Any


def _conv_fn(depth_sliced: bool):
  """The convolution primitive flax's nn.Conv should call."""
  return depth_sliced_conv if depth_sliced else None


class ConvNormAct(nn.Module):
  """Convolution (no bias) -> instance norm -> LeakyReLU(0.01)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  dtype: Dtype = jnp.float32
  depth_sliced: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, tuple(self.kernel_size),
                strides=tuple(self.strides), padding="SAME", use_bias=False,
                dtype=self.dtype,
                conv_general_dilated=_conv_fn(self.depth_sliced))(x)
    x = nn.InstanceNorm(dtype=self.dtype)(x)
    return nn.leaky_relu(x, negative_slope=0.01)


class Stage(nn.Module):
  """Two ConvNormAct blocks; the first one may be strided (downsampling)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  dtype: Dtype = jnp.float32
  depth_sliced: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvNormAct(self.features, self.kernel_size, self.strides,
                    self.dtype, self.depth_sliced)(x)
    ones = (1,) * len(self.strides)
    return ConvNormAct(self.features, self.kernel_size, ones, self.dtype,
                       self.depth_sliced)(x)


def depth_to_space(x: jax.Array, factors: Sequence[int]) -> jax.Array:
  """Rearranges channel blocks into space: (..., C*prod(f)) -> (..., s*f, C).

  Args:
    x: array of shape (batch, *spatial, channels * prod(factors)).
    factors: upsampling factor per spatial axis.

  Returns:
    Array of shape (batch, *(s * f for s, f), channels).
  """
  batch, *spatial, channels = x.shape
  nd = len(spatial)
  out_channels = channels // math.prod(factors)
  x = x.reshape(batch, *spatial, *factors, out_channels)
  # Interleave each spatial axis with its factor axis: (s0, f0, s1, f1, ...).
  perm = [0]
  for i in range(nd):
    perm += [1 + i, 1 + nd + i]
  perm.append(1 + 2 * nd)
  x = x.transpose(perm)
  return x.reshape(batch, *(s * f for s, f in zip(spatial, factors)),
                   out_channels)


class Upsample(nn.Module):
  """1x1 conv to prod(factors) * features channels, then depth-to-space."""
  features: int
  factors: Sequence[int]
  dtype: Dtype = jnp.float32
  depth_sliced: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ones = (1,) * len(self.factors)
    x = nn.Conv(self.features * math.prod(self.factors), ones, use_bias=False,
                dtype=self.dtype,
                conv_general_dilated=_conv_fn(self.depth_sliced))(x)
    return depth_to_space(x, self.factors)


class HandFunctionHead(nn.Module):
  """[mean bottleneck, log(1 + soft lesion volume)] -> MLP -> one logit."""
  hidden: int = 64

  @nn.compact
  def __call__(self, summaries: jax.Array) -> jax.Array:
    """Maps (N, C + 1) summaries (see `patch_summaries`) to (N,) logits."""
    pooled, lesion_volume = summaries[:, :-1], summaries[:, -1:]
    # Voxels, as in the baseline's log lesion loads; log1p keeps it finite
    # for a lesion-free patch.
    h = nn.Dense(self.hidden, name="hidden")(
        jnp.concatenate([pooled, jnp.log1p(lesion_volume)], axis=-1))
    h = nn.leaky_relu(h, negative_slope=0.01)
    return nn.Dense(1, name="out")(h)[:, 0]


def lesion_probability(seg_logits: jax.Array) -> jax.Array:
  """Foreground probability of a logit map, (batch, *spatial)."""
  return jax.nn.softmax(seg_logits, axis=-1)[..., 1:].sum(axis=-1)


def patch_summaries(bottleneck: jax.Array, seg_logits: jax.Array
                    ) -> jax.Array:
  """Per patch: mean bottleneck features and soft lesion volume, (B, C + 1)."""
  spatial = tuple(range(1, bottleneck.ndim - 1))
  pooled = bottleneck.astype(jnp.float32).mean(axis=spatial)
  foreground = lesion_probability(seg_logits)
  return jnp.concatenate([pooled, foreground.sum(axis=spatial)[:, None]],
                         axis=-1)


def pool_bags(summaries: jax.Array, bag_size: int, pooled: int) -> jax.Array:
  """Mean of the first `pooled` summaries of each bag of `bag_size` rows."""
  bags = summaries.reshape(-1, bag_size, summaries.shape[-1])
  return bags[:, :pooled].mean(axis=1)


class UNet(nn.Module):
  """U-Net for 2D or 3D inputs (spatial dims = len(strides[0])).

  Attributes:
    features: feature maps per stage, e.g. (32, 64, 128, 256, 320, 320).
    strides: per stage and spatial axis; stage 0 is normally all ones.
    kernel_sizes: per stage and spatial axis (nnU-Net uses 1 along a coarse
      axis of anisotropic data).
    num_classes: segmentation classes including background.
    deep_supervision: return one logit map per decoder stage (finest first)
      instead of only the finest one.
    cls_hidden: width of the hand-function MLP hidden layer.
    cls_bag_size: patches per hand-function prediction: 1 classifies each
      patch; K > 1 classifies each bag of K consecutive patches of the batch
      (one subject's), so the batch size must be a multiple of K.
    cls_bag_pooled: how many of a bag's patches (its first ones, the
      uniformly drawn ones) the head reads.
    cls_template_shape: set (with `cls_block`): the located head
      (`located_head`) on the blocks of this template grid replaces the MLP
      head, and the network returns the finest output's lesion probability
      for it instead of a logit.
    cls_block: the located head's block edge in template voxels.
    dtype: computation dtype (parameters stay float32).
    depth_sliced: compute 3D convolutions as sums of 2D ones (fast on CPU).
  """
  features: Sequence[int]
  strides: Sequence[Sequence[int]]
  kernel_sizes: Sequence[Sequence[int]]
  num_classes: int = 2
  deep_supervision: bool = True
  cls_hidden: int = 64
  cls_bag_size: int = 1
  cls_bag_pooled: int = 1
  cls_template_shape: tuple[int, ...] = ()
  cls_block: int = 0
  dtype: Dtype = jnp.float32
  depth_sliced: bool = False

  @property
  def cls_num_blocks(self) -> int:
    """Template blocks the located head reads (0: another head)."""
    if not self.cls_template_shape:
      return 0
    return math.prod(template_position.block_grid(self.cls_template_shape,
                                                  self.cls_block))

  @nn.compact
  def __call__(self, x: jax.Array, summaries_only: bool = False
               ) -> tuple[list[jax.Array], jax.Array]:
    """Runs the network.

    Args:
      x: images, (batch, *spatial, channels).
      summaries_only: return the per-patch summaries the hand-function head
        reads (`patch_summaries`, float32 (batch, C + 1)) instead of its
        logits, for inference to average them over a scan's windows.

    Returns:
      (seg_logits, cls): seg_logits is a list of float32 logit maps
      (batch, *spatial_i, num_classes), finest resolution first (one entry
      unless deep_supervision); cls is the float32 hand-function logit per
      bag, (batch / cls_bag_size,), or the summaries; with the located head
      the finest lesion probability, (batch, *spatial), instead.
    """
    if not (len(self.features) == len(self.strides) == len(self.kernel_sizes)):
      raise ValueError("features, strides and kernel_sizes need one entry per "
                       f"stage; got {len(self.features)}, {len(self.strides)}, "
                       f"{len(self.kernel_sizes)}")
    skips = []
    for feats, stride, kernel in zip(self.features, self.strides,
                                     self.kernel_sizes):
      x = Stage(feats, kernel, stride, self.dtype, self.depth_sliced)(x)
      skips.append(x)
    bottleneck = x

    outputs = []
    for level in reversed(range(len(self.features) - 1)):
      x = Upsample(self.features[level], self.strides[level + 1],
                   self.dtype, self.depth_sliced)(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = Stage(self.features[level], self.kernel_sizes[level],
                (1,) * len(self.strides[level]), self.dtype,
                self.depth_sliced)(x)
      if self.deep_supervision or level == 0:
        head = nn.Conv(self.num_classes, (1,) * (x.ndim - 2),
                       dtype=self.dtype, name=f"seg_head_{level}",
                       conv_general_dilated=_conv_fn(self.depth_sliced))
        outputs.append(head(x).astype(jnp.float32))
    # outputs[-1] is the finest map (level 0), with or without supervision.
    if self.cls_template_shape:
      # The head reads the train state's memory too, so the step applies it
      # (`located_step`); here only its parameters are made.
      if self.is_initializing():
        located_head.LocatedHead(self.cls_num_blocks, name="cls_head")(
            jnp.zeros((1, self.cls_num_blocks)))
      return outputs[::-1], lesion_probability(outputs[-1])
    summaries = patch_summaries(bottleneck, outputs[-1])
    if summaries_only:
      return outputs[::-1], summaries
    bags = pool_bags(summaries, self.cls_bag_size, self.cls_bag_pooled)
    return outputs[::-1], HandFunctionHead(self.cls_hidden,
                                           name="cls_head")(bags)


def unet_from_config(model_config: Any) -> UNet:
  """Builds a UNet from an ml_collections `config.model` block.

  3D convolutions are depth-sliced when the default backend is the CPU.

  Raises:
    ValueError: the located head without its template grid
      (`model.cls_template_shape`, which `train.prepare_run` sets).
  """
  located = model_config.get("cls_head", "patch") == "located"
  if located and not model_config.cls_template_shape:
    raise ValueError("model.cls_head='located' needs model.cls_template_shape "
                     "(train.prepare_run sets it from the records)")
  return UNet(
      features=tuple(model_config.features),
      strides=tuple(tuple(s) for s in model_config.strides),
      kernel_sizes=tuple(tuple(k) for k in model_config.kernel_sizes),
      num_classes=model_config.num_classes,
      deep_supervision=model_config.deep_supervision,
      cls_hidden=model_config.cls_hidden,
      cls_template_shape=(tuple(int(n) for n in
                                model_config.cls_template_shape)
                          if located else ()),
      cls_block=int(model_config.cls_block) if located else 0,
      dtype=jnp.dtype(model_config.compute_dtype),
      depth_sliced=jax.default_backend() == "cpu",
  )


def init_key(seed: int) -> jax.Array:
  """PRNG key for parameter initialisation.

  Uses the "rbg" implementation: compiling the initialiser with the default
  threefry keys takes ~20 s on a 2-core CPU even for a tiny U-Net, with rbg
  ~4 s (measured). Initial values differ, their distribution does not.
  """
  return jax.random.key(seed, impl="rbg")


def window_functions(model: UNet, cls_head: str
                     ) -> tuple[Callable[..., Any],
                                Callable[[Any, jax.Array], jax.Array] | None,
                                Callable[[Any, jax.Array, jax.Array],
                                         jax.Array] | None]:
  """The sliding window's apply, head and volume head functions for `model`.

  Args:
    model: the U-Net.
    cls_head: "patch": each window's logit, averaged over the windows (the
      per-patch head); "subject": each window's summaries, averaged over the
      windows and read by the head once (the subject-level head);
      "located": the whole volume's probability map, placed in the template
      by its position, read once by the located head (`located_head`).

  Returns:
    (apply, head, volume_head) for `sliding_window.make_window_fn`.
  """
  if cls_head == "patch":
    return model.apply, None, None
  if cls_head == "located":
    return _located_window_functions(model)
  head_module = HandFunctionHead(model.cls_hidden)

  def head(variables: Any, mean_summaries: jax.Array) -> jax.Array:
    return head_module.apply({"params": variables["params"]["cls_head"]},
                             mean_summaries[None])[0]

  return functools.partial(model.apply, summaries_only=True), head, None


def _located_window_functions(model: UNet):
  """`window_functions` of the located head: it reads whole maps only."""
  head_module = located_head.LocatedHead(model.cls_num_blocks)

  def apply(variables: Any, images: jax.Array):
    seg_logits, _ = model.apply(variables, images)
    # A placeholder per window: the volume head reads the assembled map.
    return seg_logits, jnp.zeros((len(images),), jnp.float32)

  def volume_head(variables: Any, probability: jax.Array,
                  position: jax.Array) -> jax.Array:
    blocks = template_position.block_indices(
        position[None], probability.shape, model.cls_template_shape,
        model.cls_block)
    fractions = located_head.whole_volume_fractions(
        probability[None], blocks, model.cls_num_blocks, model.cls_block)
    return head_module.apply({"params": variables["params"]["cls_head"]},
                             fractions)[0]

  return apply, None, volume_head
