"""Sliding-window inference: tiling, weighting, stitching, mirroring."""

from collections.abc import Iterator
import contextlib
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import joint
from pvl_jax.evaluation import evaluate_run
from pvl_jax.inference import sliding_window
from pvl_jax.inference import trained_run
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
    ((30, 11, 3), (16, 16))])      # 2D, slice by slice
def test_stitching_reproduces_a_pointwise_function(shape, window):
  rng = np.random.default_rng(0)
  image = rng.normal(size=shape + (1,)).astype(np.float32)
  probs, _ = sliding_window.predict_volume(
      jax.jit(_pointwise_window_fn), image, window, 0.5, batch_size=3)
  assert probs.shape == shape
  np.testing.assert_allclose(probs, jax.nn.sigmoid(image[..., 0]), atol=1e-6)


def test_logit_is_the_mean_over_windows_of_all_slices():
  image = np.stack([np.full((8, 8), v, np.float32) for v in (1.0, 3.0)],
                   axis=2)[..., None]
  probs, logit = sliding_window.predict_volume(
      jax.jit(_pointwise_window_fn), image, (8, 8), 0.5, batch_size=4)
  np.testing.assert_allclose(probs[:, :, 1], jax.nn.sigmoid(3.0), atol=1e-6)
  assert logit == pytest.approx(2.0)  # one window per slice: mean of 1 and 3


def test_2d_models_slice_across_the_planned_axis():
  """slice_axis 0: one window per (y, z) slice of every x, mean over them."""
  image = np.stack([np.full((5, 6), v, np.float32) for v in (1.0, 2.0, 6.0)],
                   axis=0)[..., None]  # (3, 5, 6, 1): constant per x
  probs, logit = sliding_window.predict_volume(
      jax.jit(_pointwise_window_fn), image, (5, 6), 0.5, batch_size=2,
      slice_axis=0)
  assert probs.shape == (3, 5, 6)
  np.testing.assert_allclose(probs, jax.nn.sigmoid(image[..., 0]), atol=1e-6)
  assert logit == pytest.approx(3.0)  # windows are whole x slices: 1, 2, 6


def test_subject_head_reads_every_window_as_one_bag():
  """Inference's head of the mean window summaries is the training model's
  logit for a bag made of exactly those windows."""
  model, variables = _random_unet(3)
  image = np.random.default_rng(5).normal(size=(16, 8, 12, 2))
  window = (8, 8, 8)
  apply_fn, head, _ = unet.window_functions(model, "subject")
  _, logit = sliding_window.predict_volume(
      sliding_window.make_window_fn(apply_fn, variables, (), head),
      image.astype(np.float32), window, 0.5, batch_size=4)
  windows = np.stack([
      image[x:x + 8, 0:8, z:z + 8]
      for x in sliding_window.window_starts(16, 8, 0.5)
      for z in sliding_window.window_starts(12, 8, 0.5)]).astype(np.float32)
  bag = model.clone(cls_bag_size=len(windows), cls_bag_pooled=len(windows))
  _, expected = bag.apply(variables, windows)
  assert expected.shape == (1,)
  assert logit == pytest.approx(float(expected[0]), rel=1e-5, abs=1e-6)


def test_make_window_fn_returns_foreground_probability():
  def apply_fn(variables, x):
    del variables
    logits = jnp.stack([jnp.zeros_like(x[..., 0]), x[..., 0]], axis=-1)
    return [logits], jnp.zeros(x.shape[0])
  window_fn = sliding_window.make_window_fn(apply_fn, {})
  probs, _ = window_fn.apply(window_fn.variables, jnp.full((1, 4, 4, 1), 2.0))
  np.testing.assert_allclose(probs, jax.nn.sigmoid(2.0), atol=1e-6)


@functools.cache  # initialising takes seconds on CPU
def _random_unet(ndim: int, seed: int = 0):
  """A small randomly initialised U-Net (not flip-equivariant) and its vars."""
  model = unet.UNet(features=(4, 8), strides=((1,) * ndim, (2,) * ndim),
                    kernel_sizes=((3,) * ndim,) * 2, cls_hidden=4)
  sample = jnp.zeros((1,) + (8,) * ndim + (2,))
  return model, jax.jit(model.init)(unet.init_key(seed), sample)


def _host_reference(window_fn, image, window, overlap, batch_size):
  """The accumulation on the host that device-resident sums replaced.

  Each image (the volume, or for a 2D window each slice) is zero-padded up to
  the window evenly on both sides, its windows batched (the last batch filled with zeros), and
  the weighted probabilities summed in numpy, window after window.
  """
  apply = jax.jit(window_fn.apply)
  images = ([image] if len(window) == 3
            else [image[:, :, z] for z in range(image.shape[2])])
  weights = sliding_window.gaussian_importance(window)
  padded, prob_sums, weight_sums, jobs = [], [], [], []
  for index, one in enumerate(images):
    # Centred, as training centres an axis shorter than the patch.
    pads = [(max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2)
            for s, w in zip(one.shape[:-1], window)]
    padded.append(np.pad(one, pads + [(0, 0)]))
    shape = padded[-1].shape[:-1]
    prob_sums.append(np.zeros(shape, np.float32))
    weight_sums.append(np.zeros(shape, np.float32))
    jobs += [(index, start) for start in itertools.product(
        *(sliding_window.window_starts(s, w, overlap)
          for s, w in zip(shape, window)))]
  outputs = []
  for i in range(0, len(jobs), batch_size):
    chunk = jobs[i:i + batch_size]
    regions = [tuple(slice(s, s + w) for s, w in zip(start, window))
               for _, start in chunk]
    batch = np.zeros((batch_size, *window, image.shape[-1]), np.float32)
    for j, ((index, _), region) in enumerate(zip(chunk, regions)):
      batch[j] = padded[index][region]
    probs, cls_output = jax.device_get(apply(window_fn.variables, batch))
    for j, ((index, _), region) in enumerate(zip(chunk, regions)):
      prob_sums[index][region] += probs[j] * weights
      weight_sums[index][region] += weights
      outputs.append(np.reshape(cls_output[j], -1))
  maps = [(p / w)[tuple(slice(max(n - s, 0) // 2, max(n - s, 0) // 2 + s)
                        for s, n in zip(one.shape[:-1], window))]
          for p, w, one in zip(prob_sums, weight_sums, images)]
  volume = maps[0] if len(window) == 3 else np.stack(maps, axis=2)
  mean_output = np.mean(outputs, axis=0)
  if window_fn.head is None:
    return volume, float(mean_output[0])
  return volume, float(window_fn.head(window_fn.variables, mean_output))


@pytest.mark.parametrize("ndim,mirror_axes,shape,batch_size,cls_head", [
    (3, (), (13, 7, 19), 5, "patch"),  # 12 windows; y shorter than the window
    (3, (), (13, 7, 19), 5, "subject"),
    (3, (0, 1, 2), (9, 6, 7), 3, "patch"),     # 2 windows, 8 flips
    (3, (0, 1, 2), (9, 6, 7), 3, "subject"),
    (2, (), (11, 6, 5), 4, "patch"),           # 10 slab windows
    (2, (0, 1, 2), (6, 13, 3), 4, "subject"),  # 9 slab windows, 4 flips
])
def test_predict_volume_matches_the_host_accumulation(ndim, mirror_axes,
                                                      shape, batch_size,
                                                      cls_head):
  model, variables = _random_unet(ndim)
  apply_fn, head, _ = unet.window_functions(model, cls_head)
  window_fn = sliding_window.make_window_fn(apply_fn, variables,
                                            mirror_axes, head)
  image = np.random.default_rng(3).normal(
      size=shape + (2,)).astype(np.float32)
  window = (8,) * ndim
  probs, logit = sliding_window.predict_volume(window_fn, image, window, 0.5,
                                               batch_size)
  expected, expected_logit = _host_reference(window_fn, image, window, 0.5,
                                             batch_size)
  assert probs.shape == shape
  np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(probs > 0.5, expected > 0.5)
  assert logit == pytest.approx(expected_logit, rel=1e-5, abs=1e-6)


@contextlib.contextmanager
def _counting_compiles() -> Iterator[list[str]]:
  """Collects an entry per XLA compilation while the context is open."""
  compiles = []

  def listener(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_parameters_are_arguments_not_compiled_constants():
  model, _ = _random_unet(3)
  window_fn = sliding_window.make_window_fn(model.apply, None)
  image = np.random.default_rng(4).normal(size=(9, 8, 8, 2)).astype(
      np.float32)

  def predict(variables) -> np.ndarray:
    return sliding_window.predict_volume(
        dataclasses.replace(window_fn, variables=variables), image,
        (8, 8, 8), 0.5, batch_size=2)[0]

  first = predict(_random_unet(3, 0)[1])
  other_variables = _random_unet(3, 1)[1]
  with _counting_compiles() as compiles:
    second = predict(other_variables)
  assert not compiles  # the same program ran with other parameters
  assert np.abs(first - second).max() > 1e-3


def test_volumes_in_one_bucket_share_the_compiled_programs():
  model, variables = _random_unet(3)
  window_fn = sliding_window.make_window_fn(model.apply, variables)
  rng = np.random.default_rng(5)

  def predict(shape: tuple[int, ...]) -> None:
    sliding_window.predict_volume(
        window_fn, rng.normal(size=shape + (2,)).astype(np.float32),
        (8, 8, 8), 0.5, batch_size=2)

  bucket = sliding_window.BUCKET
  predict((9, 8, 8))
  with _counting_compiles() as compiles:
    predict((bucket - 3, 16, 11))  # another shape in the same bucket
  assert not compiles
  with _counting_compiles() as compiles:
    predict((bucket + 1, 8, 8))  # a new bucket: the count does count
  assert compiles


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


def _apply_window_fn(model, variables, mirror_axes, images):
  window_fn = sliding_window.make_window_fn(model.apply, variables,
                                            mirror_axes)
  probs, outputs = jax.jit(window_fn.apply)(window_fn.variables,
                                           jnp.asarray(images))
  return probs, outputs[:, 0]  # the per-patch head: one logit per window


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
  probs, logits = _apply_window_fn(model, variables, mirror_axes, images)
  expected_probs, expected_logits = _numpy_mirrored(model, variables, images,
                                                    model_axes)
  np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
  np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
  plain, _ = _apply_window_fn(model, variables, (), images)
  assert np.abs(np.asarray(plain) - expected_probs).max() > 1e-3  # not moot


def test_no_mirror_axes_is_the_plain_prediction():
  model, variables = _random_unet(3)
  images = jnp.asarray(np.random.default_rng(2).normal(
      size=(2, 8, 8, 8, 2)).astype(np.float32))

  @jax.jit
  def plain(x):
    seg_logits, cls_logit = model.apply(variables, x)
    return jax.nn.softmax(seg_logits[0], axis=-1)[..., 1], cls_logit

  probs, logits = _apply_window_fn(model, variables, (), images)
  expected_probs, expected_logits = plain(images)
  np.testing.assert_array_equal(probs, expected_probs)
  np.testing.assert_array_equal(logits, expected_logits)


def test_predict_split_records_inference_seconds():
  rng = np.random.default_rng(6)
  records = [{"image": rng.normal(size=shape + (1,)).astype(np.float32),
              "lesion_mask": np.ones(shape, np.uint8),
              "brain_mask": np.ones(shape, np.uint8), "hand_function": 0,
              "subject_id": f"sub-{i}".encode(),
              "spacing": np.ones(3, np.float32),
          "crop_start": np.zeros(3, np.int32)}
             for i, shape in enumerate(((9, 8, 8), (8, 10, 9), (8, 8, 8)))]
  config = joint.get_config("demo")
  config.data.patch_size = (8, 8, 8)
  results = evaluate_run.segmentation_results(evaluate_run.predict_split(
      jax.jit(_pointwise_window_fn), records, config, "test"))
  seconds = [row["inference_s"] for row in results["per_subject"]]
  assert all(s > 0 for s in seconds)
  assert results["inference_s_mean"] == pytest.approx(np.mean(seconds))
  assert results["inference_s_mean_after_first"] == pytest.approx(
      np.mean(seconds[1:]))
  assert "inference_s_std" not in results  # not aggregated as a metric


def test_a_trained_run_applies_both_postprocessing_rules(monkeypatch):
  # The run's choices (results.json) act on new scans: a component at the
  # brain's rim and a 1-voxel speck go, a deep lesion stays; what goes gets
  # probability 0, so that mask = probability > 0.5 as written.
  brain = np.zeros((20, 20, 20), bool)
  brain[2:18, 2:18, 2:18] = True
  probs = np.zeros(brain.shape, np.float32)
  probs[9:12, 9:12, 9:12] = 0.9   # deep lesion
  probs[2, 9:12, 9:12] = 0.8      # the rim: the outermost brain layer
  probs[5, 14, 5] = 0.7           # a 1-voxel speck, 6 mm deep
  monkeypatch.setattr(sliding_window, "predict_volume",
                      lambda *args, **kwargs: (probs.copy(), 0.0))
  config = joint.get_config("demo")  # 2 mm template: the rim is 2 mm deep

  def run(voxels, depth_mm):
    return trained_run.TrainedRun(config=config, step=1, window_fn=None,
                                  min_component_voxels=voxels,
                                  min_depth_mm=depth_mm, cls_threshold=None)

  kept, _ = run(2, 4.0).predict(probs[..., None], brain, (0, 0, 0))
  np.testing.assert_array_equal(kept > 0.5, probs > 0.85)
  assert kept[10, 10, 10] == pytest.approx(0.9)
  kept, _ = run(0, 0.0).predict(probs[..., None], brain, (0, 0, 0))
  np.testing.assert_array_equal(kept, probs)
