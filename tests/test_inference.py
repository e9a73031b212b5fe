"""Sliding-window inference: tiling, weighting, stitching, mirroring."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvl_jax.inference import sliding_window
from pvl_jax.models import unet


@pytest.mark.parametrize("size,window,overlap", [
    (100, 32, 0.5), (64, 32, 0.5), (33, 32, 0.25), (20, 32, 0.5),
    (97, 16, 0.0)])
def test_window_starts_cover_with_requested_overlap(size, window, overlap):
  starts = sliding_window.window_starts(size, window, overlap)
  assert starts[0] == 0
  assert starts[-1] == max(size - window, 0)
  steps = np.diff(starts)
  assert np.all(steps <= window * (1 - overlap) + 1)  # rounding
  assert np.all(steps > 0)


def test_gaussian_importance_peaks_in_the_centre_and_is_positive():
  weights = sliding_window.gaussian_importance((8, 8, 8))
  assert weights.max() == 1.0 == weights[4, 4, 4]
  assert weights.min() > 0
  assert weights[0, 0, 0] < weights[2, 2, 2] < weights[4, 4, 4]


def _pointwise_window_fn(images):
  """A 'network' that is pointwise: probability = sigmoid(channel 0)."""
  return jax.nn.sigmoid(images[..., 0]), images[..., 0].mean(
      axis=tuple(range(1, images.ndim - 1)))


@pytest.mark.parametrize("shape,window", [
    ((20, 23, 17), (8, 8, 8)),     # several windows per axis
    ((5, 9, 6), (8, 8, 8)),        # smaller than the window: padded
    ((30, 11), (16, 16))])         # 2D
def test_stitching_reproduces_a_pointwise_function(shape, window):
  rng = np.random.default_rng(0)
  image = rng.normal(size=shape + (1,)).astype(np.float32)
  (probs,), _ = sliding_window.sliding_window_predict(
      jax.jit(_pointwise_window_fn), [image], window, 0.5, batch_size=3)
  assert probs.shape == shape
  np.testing.assert_allclose(probs, jax.nn.sigmoid(image[..., 0]), atol=1e-6)


def test_several_images_share_batches_and_logit_is_window_mean():
  images = [np.full((8, 8, 1), v, np.float32) for v in (1.0, 3.0)]
  maps, logit = sliding_window.sliding_window_predict(
      jax.jit(_pointwise_window_fn), images, (8, 8), 0.5, batch_size=4)
  assert [m.shape for m in maps] == [(8, 8), (8, 8)]
  np.testing.assert_allclose(maps[1], jax.nn.sigmoid(3.0), atol=1e-6)
  assert logit == pytest.approx(2.0)  # one window each: mean of 1 and 3


def test_make_window_fn_returns_foreground_probability():
  def apply_fn(variables, x):
    del variables
    logits = jnp.stack([jnp.zeros_like(x[..., 0]), x[..., 0]], axis=-1)
    return [logits], jnp.zeros(x.shape[0])
  window_fn = sliding_window.make_window_fn(apply_fn, {})
  probs, _ = window_fn(jnp.full((1, 4, 4, 1), 2.0))
  np.testing.assert_allclose(probs, jax.nn.sigmoid(2.0), atol=1e-6)


@functools.cache  # initialising takes seconds on CPU
def _random_unet(ndim: int):
  """A small randomly initialised U-Net (not flip-equivariant) and its vars."""
  model = unet.UNet(features=(4, 8), strides=((1,) * ndim, (2,) * ndim),
                    kernel_sizes=((3,) * ndim,) * 2, cls_hidden=4)
  sample = jnp.zeros((1,) + (8,) * ndim + (2,))
  return model, jax.jit(model.init)(unet.init_key(0), sample)


def _numpy_mirrored(model, variables, images, axes):
  """Softmax foreground and logit averaged over flips, computed in numpy."""
  apply_fn = jax.jit(model.apply)
  probs, logits = [], []
  for chosen in itertools.product((False, True), repeat=len(axes)):
    flip = tuple(a + 1 for a, c in zip(axes, chosen) if c)
    seg_logits, cls_logit = apply_fn(variables, np.flip(images, flip))
    seg = np.asarray(seg_logits[0], np.float64)
    softmax = np.exp(seg) / np.exp(seg).sum(-1, keepdims=True)
    probs.append(np.flip(softmax[..., 1], flip))
    logits.append(np.asarray(cls_logit))
  return np.mean(probs, axis=0), np.mean(logits, axis=0)


@pytest.mark.parametrize("ndim,mirror_axes,model_axes", [
    (3, (0, 1, 2), (0, 1, 2)),
    (3, (2, 0), (0, 2)),
    (2, (0, 1, 2), (0, 1)),   # a 2D model mirrors its in-plane axes only
])
def test_mirroring_averages_the_flipped_softmax(ndim, mirror_axes,
                                                model_axes):
  model, variables = _random_unet(ndim)
  images = np.random.default_rng(1).normal(
      size=(3,) + (8,) * ndim + (2,)).astype(np.float32)
  probs, logits = sliding_window.make_window_fn(model.apply, variables,
                                           mirror_axes)(jnp.asarray(images))
  expected_probs, expected_logits = _numpy_mirrored(model, variables, images,
                                                    model_axes)
  np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
  plain, _ = sliding_window.make_window_fn(model.apply, variables)(
      jnp.asarray(images))
  assert np.abs(np.asarray(plain) - expected_probs).max() > 1e-3  # not moot


def test_no_mirror_axes_is_the_plain_prediction():
  model, variables = _random_unet(3)
  images = jnp.asarray(np.random.default_rng(2).normal(
      size=(2, 8, 8, 8, 2)).astype(np.float32))

  @jax.jit
  def plain(x):
    seg_logits, cls_logit = model.apply(variables, x)
    return jax.nn.softmax(seg_logits[0], axis=-1)[..., 1], cls_logit

  probs, logits = sliding_window.make_window_fn(model.apply, variables, ())(images)
  expected_probs, expected_logits = plain(images)
  np.testing.assert_array_equal(probs, expected_probs)
  np.testing.assert_array_equal(logits, expected_logits)
