"""Sliding-window inference over whole volumes with Gaussian weighting.

Windows of the training patch size tile the volume with the requested overlap
(window starts spaced as nnU-Net's `compute_steps_for_sliding_window`); each
window's softmax is weighted by a Gaussian importance map (sigma = 1/8 of the
window, as nnU-Net) so that window borders, where the network sees less
context, count less. The network's hand-function output per window (a logit,
or the summaries a subject-level head reads) is averaged over the windows; a
`WindowFn.head` then maps that mean to the volume's logit (without one the
mean is the logit: the per-patch head's mean window logit). A
`WindowFn.volume_head` (the located head) instead reads the assembled
probability map once, placed in the template grid at the volume's `origin`.

The volume and the sums stay on the device. One jitted function per batch cuts
its windows out of the device-resident volume, runs the network and adds the
weighted probabilities and the weights into device-resident sums; batches are
dispatched without waiting for each other and only the normalised map comes
back to the host, once per volume. The network's variables are an argument of
that function, not constants of its compiled program (which would compile
slowly and hold a second copy of the parameters). The volume is zero-padded to
a bucketed shape (each axis a multiple of `BUCKET`, and at least the window)
so that subjects of slightly different crops share one compiled program; the
window starts are those of the real shape (an axis shorter than the window
padded evenly on both sides up to it: the volume centred in the window, as
training and nnU-Net centre it), so the bucket does not change the
prediction. Windows that
only fill the last batch up are masked out.

A 2D model (two patch entries) predicts a volume slice by slice along the last
spatial axis: its window is a (wx, wy, 1) slab of the volume, squeezed before
the network, so that the windows of all slices fill batches together.

Mirroring test-time augmentation (`mirror_axes`, as nnU-Net): each batch is
also predicted flipped along every non-empty subset of the mirror axes, each
softmax flipped back, and the 2^k softmaxes (and classification logits)
averaged, inside the same jitted function.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
import itertools
import math
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from pvl_jax.data import template_position

# Padded volume axes are multiples of this: few compiled shapes per cohort.
# Padding costs no windows (only memory and copying the sums), and each new
# shape a compile (~2 s for the CPU demo model): with 16 the 2 mm demo's test
# crops (77-82 voxels on one axis) fell into two buckets, with 32 one.
BUCKET = 32

# (variables, images (B, *window, C)) -> (foreground probability
# (B, *window), hand-function output per window: logit (B,) or (B, D)).
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
# (variables, mean hand-function output over the windows (D,)) -> logit ().
HeadFn = Callable[[Any, jax.Array], jax.Array]
# (variables, probability map (X, Y, Z), its template position (3, 4), as
# `template_position.cut_position`) -> logit ().
VolumeHeadFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
# The same without variables (a network with nothing to learn, in tests).
ImagesFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class WindowFn:
  """A window function and the variables it is applied with.

  Attributes:
    apply: traceable, (variables, images) -> (probability, logit) as
      `ApplyFn`; its identity keys the compiled sliding window, so build it
      once per model (`make_window_fn`).
    variables: the model's variables, passed to `apply` as arguments; on
      `inference_device()` (`make_window_fn` puts them there), as host arrays
      would be copied to the device for every batch.
    head: maps the windows' mean output to the volume's logit; None: the
      mean output is the logit.
    volume_head: maps the whole probability map to the logit instead (the
      windows' outputs are then ignored); `predict_volume` needs the
      volume's `origin`.
  """
  apply: ApplyFn
  variables: Any = None
  head: HeadFn | None = None
  volume_head: VolumeHeadFn | None = None


@dataclasses.dataclass(frozen=True)
class _WithoutVariables:
  """`ApplyFn` of an `ImagesFn`; equal for the same function (one compile)."""
  fn: ImagesFn

  def __call__(self, variables: Any, images: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    del variables
    return self.fn(images)


def inference_device() -> jax.Device:
  """The device that predicts: the first of this process's."""
  return jax.local_devices()[0]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
  """Evenly spaced window starts covering [0, size) with at least `overlap`."""
  if window >= size:
    return [0]
  target_step = window * (1.0 - overlap)
  num = int(np.ceil((size - window) / target_step)) + 1
  step = (size - window) / (num - 1)
  return [int(round(step * i)) for i in range(num)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = 1 / 8
                        ) -> np.ndarray:
  """Gaussian importance map, max 1, floored at its smallest positive value."""
  impulse = np.zeros(window, np.float32)
  impulse[tuple(w // 2 for w in window)] = 1.0
  weights = scipy.ndimage.gaussian_filter(
      impulse, [w * sigma_scale for w in window], mode="constant", cval=0)
  weights /= weights.max()
  # Zeros would make voxels covered only by window corners undefined.
  weights[weights == 0] = weights[weights > 0].min()
  return weights


def mirror_combinations(mirror_axes: Sequence[int], num_spatial: int
                        ) -> list[tuple[int, ...]]:
  """Every subset of the mirror axes that exist in `num_spatial` dimensions.

  Axes beyond the window's rank are dropped, so that (0, 1, 2) mirrors a 2D
  model's two in-plane axes: its slices are predicted independently, and
  flipping their order would change nothing.

  Args:
    mirror_axes: spatial axes to mirror (0 = first spatial axis).
    num_spatial: spatial dimensions of a window (2 or 3).

  Returns:
    The subsets, the empty one (no flip) first.
  """
  axes = sorted({a for a in mirror_axes if a < num_spatial})
  return [subset for k in range(len(axes) + 1)
          for subset in itertools.combinations(axes, k)]


def make_window_fn(apply_fn: Callable, variables,
                   mirror_axes: Sequence[int] = (),
                   head: HeadFn | None = None,
                   volume_head: VolumeHeadFn | None = None) -> WindowFn:
  """Foreground-probability function for batches of windows.

  Args:
    apply_fn: the model's apply, (variables, images) -> (list of
      segmentation logits, the full-resolution one first; hand-function
      output, (B,) or (B, D)).
    variables: the model's variables (host or device arrays).
    mirror_axes: spatial axes for mirroring test-time augmentation; () = off.
    head: see `WindowFn.head`.
    volume_head: see `WindowFn.volume_head`.

  Returns:
    The window function for `predict_volume`, its variables copied to
    `inference_device()` once.
  """

  def predict(variables, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    flips = [functools.partial(jnp.flip, axis=tuple(a + 1 for a in axes))
             for axes in mirror_combinations(mirror_axes, images.ndim - 2)]

    def run(flip):
      seg_logits, cls_output = apply_fn(variables,
                                        jax.lax.switch(flip, flips, images))
      probs = jax.nn.softmax(seg_logits[0], axis=-1)[..., 1]
      return (jax.lax.switch(flip, flips, probs),
              cls_output.reshape(len(images), -1).astype(jnp.float32))

    def add_flip(i, sums):
      return jax.tree.map(jnp.add, sums, run(i))

    # A loop rather than unrolled flips: the network is compiled once and
    # holds the memory of one forward pass, whatever the number of flips.
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(run, 0))
    prob_sum, output_sum = jax.lax.fori_loop(0, len(flips), add_flip, zeros)
    return prob_sum / len(flips), output_sum / len(flips)

  return WindowFn(predict, jax.device_put(variables, inference_device()),
                  head, volume_head)


# The sums are not donated: donating made each call ~3x slower on the CPU
# backend (measured), and copying them costs little next to the network.
@functools.partial(jax.jit, static_argnames=("apply", "window"))
def _add_batch(apply: ApplyFn, variables: Any, volume: jax.Array,
               weights: jax.Array, starts: jax.Array, valid: jax.Array,
               sums: tuple[jax.Array, jax.Array, jax.Array],
               window: tuple[int, ...]
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Adds one batch of windows to the sums.

  Args:
    apply: `WindowFn.apply`.
    variables: its variables.
    volume: (X, Y, Z, C), zero-padded to the bucket.
    weights: the Gaussian importance map of the slab (window, 1 appended for
      a 2D model).
    starts: (B, 3) window starts in the volume.
    valid: (B,) False for windows that only fill the batch up.
    sums: (weighted probability sum (X, Y, Z), weight sum (X, Y, Z),
      hand-function output sum (D,)).
    window: the network's window (2 or 3 entries).

  Returns:
    The updated sums.
  """
  slab = weights.shape
  channels = volume.shape[-1]
  images = jax.vmap(lambda start: jax.lax.dynamic_slice(
      volume, (*start, 0), (*slab, channels)))(starts)
  probs, outputs = apply(variables,
                         images.reshape(len(starts), *window, channels))
  weighted = probs.reshape(len(starts), *slab).astype(jnp.float32) * weights
  prob_sum, weight_sum, output_sum = sums

  # One window after the other, in order: overlapping windows of a batch
  # add up as they would one batch per window.
  def add_window(j, totals):
    start = tuple(starts[j])

    def add(total, value):
      region = jax.lax.dynamic_slice(total, start, slab)
      return jax.lax.dynamic_update_slice(
          total, region + jnp.where(valid[j], value, 0.0), start)

    return add(totals[0], weighted[j]), add(totals[1], weights)

  prob_sum, weight_sum = jax.lax.fori_loop(0, len(starts), add_window,
                                           (prob_sum, weight_sum))
  outputs = outputs.reshape(len(starts), -1).astype(jnp.float32)
  output_sum += jnp.sum(jnp.where(valid[:, None], outputs, 0.0), axis=0)
  return prob_sum, weight_sum, output_sum


@jax.jit
def _normalise(prob_sum: jax.Array, weight_sum: jax.Array) -> jax.Array:
  """Weighted mean probability; 0 in the bucket padding that no window saw."""
  return jnp.where(weight_sum > 0, prob_sum / weight_sum, 0.0)


@functools.cache
def _slab_weights(window: tuple[int, ...]) -> jax.Array:
  """The device-resident Gaussian map of a window's slab (2D: depth 1)."""
  return jnp.asarray(gaussian_importance(window).reshape(
      window + (1,) * (3 - len(window))))


def predict_volume(window_fn: WindowFn | ImagesFn, image: np.ndarray,
                   patch_size: Sequence[int], overlap: float,
                   batch_size: int, slice_axis: int = 2,
                   origin: Sequence[int] | None = None
                   ) -> tuple[np.ndarray, float]:
  """Lesion probabilities for a (X, Y, Z, C) volume and the mean cls logit.

  A 2D model (two patch entries) is applied slice by slice across
  `slice_axis` (the plan's `data.slice_axis`).

  Args:
    window_fn: from `make_window_fn`, or a function of the images alone.
    image: the volume.
    patch_size: the window (the training patch size), 2 or 3 entries.
    overlap: fraction of a window shared with its neighbour, in [0, 1).
    batch_size: windows per network call.
    slice_axis: the axis a 2D model's slices are cut across.
    origin: the template voxel of the volume's voxel 0 (a record's
      `template_grid.record_origin`); only a `WindowFn.volume_head` reads
      it.

  Returns:
    (probability map (X, Y, Z), hand-function logit: the volume head of the
    map, the head of the mean window output, or the mean window logit).

  Raises:
    ValueError: a volume head without `origin`.
  """
  if len(patch_size) == 2 and slice_axis != 2:
    # Slabs are cut across the last axis; the other two keep their order,
    # which is the order of the plan's 2D patch.
    probs, logit = predict_volume(window_fn, np.moveaxis(image, slice_axis, 2),
                                  patch_size, overlap, batch_size)
    return np.moveaxis(probs, 2, slice_axis), logit
  if not isinstance(window_fn, WindowFn):
    window_fn = WindowFn(_WithoutVariables(window_fn))
  if window_fn.volume_head is not None and origin is None:
    raise ValueError("the located head reads the map where it lies in the "
                     "template: predict_volume needs the volume's origin")
  window = tuple(int(w) for w in patch_size)
  weights = _slab_weights(window)
  spatial = image.shape[:3]
  # As if each axis shorter than the window were zero-padded up to it,
  # evenly on both sides: training centres such an axis in its patches
  # (`input_pipeline.sample_patch_start`), as nnU-Net's sampler and
  # predictor do.
  covered = [max(s, w) for s, w in zip(spatial, weights.shape)]
  before = [(c - s) // 2 for c, s in zip(covered, spatial)]
  # A 2D model's slab is one slice thick: every slice once, whatever overlap.
  starts = np.array(list(itertools.product(
      *(window_starts(c, w, overlap) for c, w in zip(covered, window)),
      *([range(spatial[2])] if len(window) == 2 else []))), np.int32)
  num_windows = len(starts)
  num_batches = -(-num_windows // batch_size)
  starts = np.pad(starts, [(0, num_batches * batch_size - num_windows), (0, 0)])
  valid = np.arange(len(starts)) < num_windows
  bucket = [-(-c // BUCKET) * BUCKET for c in covered]
  # Committed to the device, as the sums that `_add_batch` returns are:
  # uncommitted first sums would compile a second program.
  device = inference_device()
  volume = jax.device_put(np.pad(
      image, [(a, b - s - a) for a, b, s in zip(before, bucket, spatial)]
      + [(0, 0)]), device)
  sums = (jnp.zeros(bucket, device=device), jnp.zeros(bucket, device=device),
          jnp.zeros(_output_width(window_fn, (batch_size, *window,
                                              image.shape[-1])),
                    device=device))
  for i in range(0, len(starts), batch_size):
    sums = _add_batch(window_fn.apply, window_fn.variables, volume, weights,
                      starts[i:i + batch_size], valid[i:i + batch_size], sums,
                      window=window)
  mean_output = sums[2] / num_windows
  # A volume head's windows give placeholders; its logit is replaced below.
  logit = (mean_output[0] if window_fn.head is None
           else window_fn.head(window_fn.variables, mean_output))
  probs, logit = jax.device_get((_normalise(*sums[:2]), logit))
  # A copy: the host view of a device buffer is read-only.
  probs = np.array(probs[tuple(slice(a, a + s)
                               for a, s in zip(before, spatial))])
  if window_fn.volume_head is not None:
    logit = _volume_logit(window_fn, probs, origin, bucket)
  return probs, float(logit)


def _volume_logit(window_fn: WindowFn, probs: np.ndarray,
                  origin: Sequence[int], bucket: Sequence[int]) -> jax.Array:
  """The volume head's logit of the (unpadded) map at `origin`.

  The map is zero-padded at its far end to the bucket, so that the crops of
  a cohort share one compiled head: padded voxels hold no lesion
  probability and add nothing to any block.
  """
  padded = np.pad(probs, [(0, b - s) for b, s in zip(bucket, probs.shape)])
  position = template_position.cut_position(origin, (0, 0, 0), 3, 2)
  return _apply_volume_head(window_fn.volume_head, window_fn.variables,
                            jax.device_put(padded, inference_device()),
                            jax.device_put(position, inference_device()))


@functools.partial(jax.jit, static_argnames=("volume_head",))
def _apply_volume_head(volume_head: VolumeHeadFn, variables: Any,
                       probs: jax.Array, position: jax.Array) -> jax.Array:
  return volume_head(variables, probs, position)


# WindowFn -> {images shape: output width}. Weak keys: a cache entry must not
# keep a dropped model's device-resident variables alive.
_OUTPUT_WIDTHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _output_width(window_fn: WindowFn, images_shape: tuple[int, ...]) -> int:
  """D of the window function's (B, D) hand-function output (1 for (B,))."""
  widths = _OUTPUT_WIDTHS.setdefault(window_fn, {})
  if images_shape not in widths:
    _, outputs = jax.eval_shape(
        window_fn.apply, window_fn.variables,
        jax.ShapeDtypeStruct(images_shape, jnp.float32))
    widths[images_shape] = math.prod(outputs.shape[1:])
  return widths[images_shape]
