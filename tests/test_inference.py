"""Sliding-window inference: tiling, weighting, stitching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvl_jax import inference


@pytest.mark.parametrize("size,window,overlap", [
    (100, 32, 0.5), (64, 32, 0.5), (33, 32, 0.25), (20, 32, 0.5),
    (97, 16, 0.0)])
def test_window_starts_cover_with_requested_overlap(size, window, overlap):
  starts = inference.window_starts(size, window, overlap)
  assert starts[0] == 0
  assert starts[-1] == max(size - window, 0)
  steps = np.diff(starts)
  assert np.all(steps <= window * (1 - overlap) + 1)  # rounding
  assert np.all(steps > 0)


def test_gaussian_importance_peaks_in_the_centre_and_is_positive():
  weights = inference.gaussian_importance((8, 8, 8))
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
  (probs,), _ = inference.sliding_window_predict(
      jax.jit(_pointwise_window_fn), [image], window, 0.5, batch_size=3)
  assert probs.shape == shape
  np.testing.assert_allclose(probs, jax.nn.sigmoid(image[..., 0]), atol=1e-6)


def test_several_images_share_batches_and_logit_is_window_mean():
  images = [np.full((8, 8, 1), v, np.float32) for v in (1.0, 3.0)]
  maps, logit = inference.sliding_window_predict(
      jax.jit(_pointwise_window_fn), images, (8, 8), 0.5, batch_size=4)
  assert [m.shape for m in maps] == [(8, 8), (8, 8)]
  np.testing.assert_allclose(maps[1], jax.nn.sigmoid(3.0), atol=1e-6)
  assert logit == pytest.approx(2.0)  # one window each: mean of 1 and 3


def test_make_window_fn_returns_foreground_probability():
  def apply_fn(variables, x):
    del variables
    logits = jnp.stack([jnp.zeros_like(x[..., 0]), x[..., 0]], axis=-1)
    return [logits], jnp.zeros(x.shape[0])
  window_fn = inference.make_window_fn(apply_fn, {})
  probs, _ = window_fn(jnp.full((1, 4, 4, 1), 2.0))
  np.testing.assert_allclose(probs, jax.nn.sigmoid(2.0), atol=1e-6)
