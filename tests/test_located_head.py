"""The located head: block statistics, memory, read-out, the baseline in it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from preprocessing.io.errors import InputError
from pvl_jax.data import decoded_subjects
from pvl_jax.data import template_blocks
from pvl_jax.data import template_position
from pvl_jax.handfunction import block_features
from pvl_jax.models import located_head

_TEMPLATE = (10, 13, 9)
_BLOCK = 4
_NUM_BLOCKS = int(np.prod(template_position.block_grid(_TEMPLATE, _BLOCK)))


def _whole_volume_blocks(count: int) -> jax.Array:
  position = template_position.cut_position((0, 0, 0), (0, 0, 0), 3, 2)
  return template_position.block_indices(
      jnp.asarray(np.repeat(position[None], count, 0)), _TEMPLATE,
      _TEMPLATE, _BLOCK)


def test_block_statistics_match_numpy():
  rng = np.random.default_rng(0)
  probability = rng.random((3, 5, 6, 7)).astype(np.float32)
  blocks = rng.integers(0, _NUM_BLOCKS + 1, size=probability.shape)
  sums, counts = located_head.block_statistics(
      jnp.asarray(probability), jnp.asarray(blocks), _NUM_BLOCKS)
  assert sums.shape == counts.shape == (3, _NUM_BLOCKS)
  for b in range(3):
    expected = np.bincount(blocks[b].ravel(), probability[b].ravel(),
                           _NUM_BLOCKS + 1)[:-1]
    np.testing.assert_allclose(sums[b], expected, rtol=1e-5)
    np.testing.assert_array_equal(
        counts[b], np.bincount(blocks[b].ravel(), minlength=_NUM_BLOCKS + 1
                               )[:-1])


def test_memory_update_and_read_out_match_numpy():
  rng = np.random.default_rng(1)
  num_subjects, patch = 5, (4, 8, 4)
  memory = located_head.LocatedMemory(
      jnp.asarray(rng.random((num_subjects, _NUM_BLOCKS)), jnp.float32),
      jnp.asarray(rng.random(_NUM_BLOCKS) > 0.3, jnp.float32),
      jnp.asarray(np.arange(num_subjects) % 2, jnp.float32))
  head = located_head.LocatedHead(_NUM_BLOCKS)
  params = {"kernel": jnp.asarray(rng.normal(size=_NUM_BLOCKS), jnp.float32),
            "bias": jnp.float32(0.3)}
  starts = [(0, 0, 0), (3, 5, 2)]
  position = jnp.asarray(np.stack([template_position.cut_position(
      (0, 0, 0), s, 3, 2) for s in starts]))
  blocks = template_position.block_indices(position, patch, _TEMPLATE, _BLOCK)
  probability = jnp.asarray(rng.random((2, *patch)), jnp.float32)
  subject_index = jnp.array([4, 1])
  volume = located_head.voxel_volumes(position)

  def logits_of(p):
    return located_head.patch_logits(head, params, memory, subject_index, p,
                                     blocks, volume, _BLOCK)

  logits, updated = logits_of(probability)
  grads = jax.grad(lambda p: logits_of(p)[0].sum())(probability)

  rows = np.asarray(memory.rows).copy()
  np_blocks, np_prob = np.asarray(blocks), np.asarray(probability)
  for b, s in enumerate([4, 1]):
    sums = np.bincount(np_blocks[b].ravel(), np_prob[b].ravel(),
                       _NUM_BLOCKS + 1)[:-1]
    counts = np.bincount(np_blocks[b].ravel(), minlength=_NUM_BLOCKS + 1)[:-1]
    share = np.minimum(counts / _BLOCK ** 3, 1)
    row = (1 - share) * rows[s] + share * sums / np.maximum(counts, 1)
    expected = row * np.asarray(memory.mask) @ np.asarray(params["kernel"])
    np.testing.assert_allclose(logits[b], expected + 0.3, rtol=1e-5)
    np.testing.assert_allclose(updated.rows[s], row, rtol=1e-6)
    # d logit / d voxel: the voxel's block weight, through its share.
    weight = (np.asarray(params["kernel"]) * np.asarray(memory.mask)
              * share / np.maximum(counts, 1))
    np.testing.assert_allclose(grads[b], weight[np_blocks[b]], rtol=1e-5)
  untouched = [0, 2, 3]
  np.testing.assert_array_equal(updated.rows[np.array(untouched)],
                                memory.rows[np.array(untouched)])
  # The patch at (3, 5, 2) covers blocks only partly: old rows count there.
  assert 0 < np.abs(np.asarray(updated.rows[1]) - rows[1]).max()


def _decoded(tmp_path, masks, origins):
  """Decoded subjects cropped out of template-grid masks at `origins`."""
  subjects = []
  for i, (mask, origin) in enumerate(zip(masks, origins)):
    crop = mask[origin[0]:, origin[1]:, origin[2]:].astype(np.uint8)
    directory = tmp_path / f"s{i}"
    directory.mkdir()
    image = np.ones(crop.shape + (1,), np.float32)
    for name, array in zip(decoded_subjects._DECODED_FILES,
                           (image, crop, np.flatnonzero(crop == 1))):
      np.save(directory / f"{name}.npy", array)
    subjects.append(decoded_subjects.Subject(i, i % 2, str(directory), origin))
  return subjects


def test_reference_masks_give_the_baselines_matrix_features(tmp_path):
  """Read-out of reference-mask blocks = the baseline's logistic regression."""
  rng = np.random.default_rng(2)
  masks = np.zeros((12, *_TEMPLATE), bool)
  for mask in masks:
    corner = rng.integers(0, np.array(_TEMPLATE) - 3)
    mask[tuple(slice(c, c + 3) for c in corner)] = rng.random((3, 3, 3)) > .4
  labels = np.arange(12) % 2
  flat = sparse.csr_matrix(masks.reshape(12, -1).astype(np.float32))

  fractions = np.asarray(located_head.whole_volume_fractions(
      jnp.asarray(masks, jnp.float32), _whole_volume_blocks(12), _NUM_BLOCKS,
      _BLOCK))
  average = block_features.BlockAverage(_TEMPLATE, _BLOCK).fit(flat)
  np.testing.assert_allclose(fractions, average.transform(flat).toarray(),
                             atol=1e-7)

  origins = [tuple(int(o) for o in rng.integers(0, 2, 3)) for _ in masks]
  # Lesions are where the crops keep them (inside every crop).
  for mask, origin in zip(masks, origins):
    mask[:origin[0]], mask[:, :origin[1]], mask[:, :, :origin[2]] = 0, 0, 0
  flat = sparse.csr_matrix(masks.reshape(12, -1).astype(np.float32))
  blocks = average.transform(flat)
  frequency = block_features.MinLesionFrequency(0.0).fit(blocks)
  reference_fractions = template_blocks.lesion_block_fractions(
      _decoded(tmp_path, masks, origins), _TEMPLATE, _BLOCK,
      [f"s{i}" for i in range(12)])
  np.testing.assert_allclose(reference_fractions, blocks.toarray(), atol=1e-7)
  mask = template_blocks.lesion_frequency_mask(reference_fractions)
  np.testing.assert_array_equal(np.flatnonzero(mask), frequency.kept_)

  features = frequency.transform(blocks)
  regression = LogisticRegression(C=10.0, max_iter=5000).fit(features,
                                                              labels)
  kernel = np.zeros(_NUM_BLOCKS, np.float32)
  kernel[frequency.kept_] = regression.coef_[0]
  logits = located_head.LocatedHead(_NUM_BLOCKS).apply(
      {"params": {"kernel": jnp.asarray(kernel),
                  "bias": jnp.float32(regression.intercept_[0])}},
      jnp.asarray(blocks.toarray() * mask))
  np.testing.assert_allclose(logits, regression.decision_function(features),
                             rtol=1e-5, atol=1e-5)


def test_a_subject_without_brain_is_refused_by_name(tmp_path):
  masks = np.zeros((2, *_TEMPLATE), bool)
  subjects = _decoded(tmp_path, masks, [(0, 0, 0)] * 2)
  np.save(tmp_path / "s1" / "image.npy",
          np.zeros(_TEMPLATE + (1,), np.float32))
  decoded_subjects._mapped.cache_clear()
  with pytest.raises(InputError, match="sub-b: no brain voxel"):
    template_blocks.lesion_block_fractions(subjects, _TEMPLATE, _BLOCK,
                                           ["sub-a", "sub-b"])


def test_fitted_read_out_is_scikit_learns_logistic_regression():
  """Newton steps in the subjects' span reach LogisticRegression(C)."""
  rng = np.random.default_rng(4)
  subjects, blocks = 30, 200
  fractions = (rng.random((subjects, blocks))
               * (rng.random((subjects, blocks)) < 0.2)).astype(np.float32)
  fractions[:, :50] = 0  # masked blocks: their weights stay 0
  labels = (fractions[:, 60] + fractions[:, 61] + rng.normal(0, 0.2, subjects)
            > 0.2).astype(np.float32)
  labels[:4] = -1  # unlabelled: out of the fit
  l2 = 1e-3
  kernel, bias = located_head.fit_readout(
      jnp.asarray(fractions), jnp.asarray(labels), l2,
      jnp.zeros(blocks), jnp.float32(0), iterations=30)
  known = labels >= 0
  sklearn = LogisticRegression(C=1 / (2 * l2 * known.sum()), tol=1e-10,
                               max_iter=10000).fit(fractions[known],
                                                   labels[known])
  np.testing.assert_allclose(kernel, sklearn.coef_[0], atol=2e-3)
  assert float(bias) == pytest.approx(sklearn.intercept_[0], abs=2e-3)
  assert np.all(np.asarray(kernel)[:50] == 0)
  # From that fit, more steps stay there (warm start).
  again, _ = located_head.fit_readout(jnp.asarray(fractions),
                                      jnp.asarray(labels), l2, kernel, bias,
                                      iterations=2)
  np.testing.assert_allclose(again, kernel, atol=1e-5)


def test_fitted_read_out_converges_from_far_away_on_separable_data():
  """Damped steps: no blow-up where plain Newton's would (saturated logits)."""
  rng = np.random.default_rng(5)
  fractions = (rng.random((36, 300))
               * (rng.random((36, 300)) < 0.1)).astype(np.float32)
  labels = (fractions[:, 7] > 0).astype(np.float32)  # separable
  l2 = 1.4e-3
  start = jnp.asarray(rng.normal(0, 5, 300), jnp.float32)
  kernel, bias = located_head.fit_readout(
      jnp.asarray(fractions), jnp.asarray(labels), l2, start,
      jnp.float32(-5), iterations=60)
  sklearn = LogisticRegression(C=1 / (2 * l2 * 36), tol=1e-10,
                               max_iter=10000).fit(fractions, labels)
  assert np.all(np.isfinite(kernel))
  np.testing.assert_allclose(kernel, sklearn.coef_[0], atol=5e-3)
  assert float(bias) == pytest.approx(sklearn.intercept_[0], abs=5e-3)
