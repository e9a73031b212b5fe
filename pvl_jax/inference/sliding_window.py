"""Sliding-window inference over whole volumes with Gaussian weighting.

Windows of the training patch size tile the volume with the requested overlap
(window starts spaced as nnU-Net's `compute_steps_for_sliding_window`); each
window's softmax is weighted by a Gaussian importance map (sigma = 1/8 of the
window, as nnU-Net) so that window borders, where the network sees less
context, count less. Windows are evaluated in fixed-size batches by one jitted
function (the last batch is padded, so nothing recompiles). The hand-function
logit of a volume is the mean of its windows' logits.

Mirroring test-time augmentation (`mirror_axes`, as nnU-Net): each batch is
also predicted flipped along every non-empty subset of the mirror axes, each
softmax flipped back, and the 2^k softmaxes (and classification logits)
averaged, inside the same jitted function.
"""

from collections.abc import Callable, Sequence
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

# (images (B, *window, C)) -> (foreground probability (B, *window), logit (B,))
WindowFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


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
                   mirror_axes: Sequence[int] = ()) -> WindowFn:
  """Jitted foreground-probability function for batches of windows.

  Args:
    apply_fn: the model's apply, (variables, images) -> (list of
      segmentation logits, the full-resolution one first; class logit).
    variables: the model's variables.
    mirror_axes: spatial axes for mirroring test-time augmentation; () = off.

  Returns:
    The window function for `sliding_window_predict`.
  """

  @jax.jit
  def predict(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    flips = [functools.partial(jnp.flip, axis=tuple(a + 1 for a in axes))
             for axes in mirror_combinations(mirror_axes, images.ndim - 2)]

    # A loop rather than unrolled flips: the network is compiled once and
    # holds the memory of one forward pass, whatever the number of flips.
    def add_flip(i, sums):
      prob_sum, logit_sum = sums
      seg_logits, cls_logit = apply_fn(variables,
                                       jax.lax.switch(i, flips, images))
      probs = jax.nn.softmax(seg_logits[0], axis=-1)[..., 1]
      return (prob_sum + jax.lax.switch(i, flips, probs),
              logit_sum + cls_logit)

    zeros = (jnp.zeros(images.shape[:-1]), jnp.zeros(images.shape[:1]))
    prob_sum, logit_sum = jax.lax.fori_loop(0, len(flips), add_flip, zeros)
    return prob_sum / len(flips), logit_sum / len(flips)

  return predict


def sliding_window_predict(window_fn: WindowFn, images: Sequence[np.ndarray],
                           window: Sequence[int], overlap: float,
                           batch_size: int) -> tuple[list[np.ndarray], float]:
  """Predicts lesion probability maps for one or more same-rank images.

  Windows of all images share the batches (a 2D model predicts a volume as
  the stack of its slices, so slices fill batches together).

  Args:
    window_fn: from `make_window_fn`.
    images: (*spatial, channels) arrays with len(window) spatial axes.
    window: window shape (the training patch size).
    overlap: fraction of a window shared with its neighbour, in [0, 1).
    batch_size: windows per call.

  Returns:
    (probability map per image, with its spatial shape; mean hand-function
    logit over all windows).
  """
  weights = gaussian_importance(window)
  padded, prob_sums, weight_sums, jobs = [], [], [], []
  for index, image in enumerate(images):
    pads = [(0, max(w - s, 0)) for s, w in zip(image.shape[:-1], window)]
    padded.append(np.pad(image, pads + [(0, 0)]))
    shape = padded[-1].shape[:-1]
    prob_sums.append(np.zeros(shape, np.float32))
    weight_sums.append(np.zeros(shape, np.float32))
    jobs += [(index, start) for start in itertools.product(
        *(window_starts(s, w, overlap) for s, w in zip(shape, window)))]
  logits = []
  for i in range(0, len(jobs), batch_size):
    chunk = jobs[i:i + batch_size]
    regions = [tuple(slice(s, s + w) for s, w in zip(start, window))
               for _, start in chunk]
    batch = np.stack([padded[index][region]
                      for (index, _), region in zip(chunk, regions)])
    if len(chunk) < batch_size:  # keep one compiled shape
      filler = np.zeros((batch_size - len(chunk),) + batch.shape[1:],
                        batch.dtype)
      batch = np.concatenate([batch, filler])
    probs, cls_logit = jax.device_get(window_fn(jnp.asarray(batch)))
    for j, ((index, _), region) in enumerate(zip(chunk, regions)):
      prob_sums[index][region] += probs[j] * weights
      weight_sums[index][region] += weights
      logits.append(float(cls_logit[j]))
  maps = [(p / w)[tuple(slice(0, s) for s in image.shape[:-1])]
          for p, w, image in zip(prob_sums, weight_sums, images)]
  return maps, float(np.mean(logits))


def predict_volume(window_fn: WindowFn, image: np.ndarray,
                   patch_size: Sequence[int], overlap: float,
                   batch_size: int) -> tuple[np.ndarray, float]:
  """Lesion probabilities for a (*spatial, C) volume and the mean cls logit.

  A 2D model (two patch entries) is applied slice by slice along the last
  spatial axis and its slices stacked back into a volume.
  """
  if len(patch_size) == 3:
    maps, logit = sliding_window_predict(
        window_fn, [image], patch_size, overlap, batch_size)
    return maps[0], logit
  maps, logit = sliding_window_predict(
      window_fn, [image[:, :, z] for z in range(image.shape[2])], patch_size,
      overlap, batch_size)
  return np.stack(maps, axis=2), logit
