"""Loss values against hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from preprocessing.lesion_labels import IGNORE
from pvl_jax.training import losses

# Foreground probability 0.75 everywhere: logits (0, log 3).
LOGITS = jnp.tile(jnp.array([0.0, math.log(3.0)]), (1, 4, 1))  # (1, 4, 2)
LABELS = jnp.array([[1, 1, 0, 0]])


def test_soft_dice_hand_computed():
  # intersection = 0.75 * 2, denominator = 0.75 * 4 + 2.
  expected = 1 - (2 * 1.5 + 1e-5) / (5 + 1e-5)
  assert float(losses.soft_dice_loss(LOGITS, LABELS)) == pytest.approx(
      expected, abs=1e-6)


def test_cross_entropy_hand_computed():
  expected = (2 * -math.log(0.75) + 2 * -math.log(0.25)) / 4
  assert float(losses.cross_entropy_loss(LOGITS, LABELS)) == pytest.approx(
      expected, abs=1e-6)


def test_perfect_prediction_has_near_zero_dice_loss():
  logits = jnp.stack([jnp.where(LABELS == 0, 20.0, -20.0),
                      jnp.where(LABELS == 1, 20.0, -20.0)], axis=-1)
  assert float(losses.soft_dice_loss(logits, LABELS)) < 1e-6


def test_batch_dice_pools_voxels_over_the_batch():
  # Sample 0: p=0.75 on [1,1,0,0]; sample 1: same probs, no foreground.
  logits = jnp.concatenate([LOGITS, LOGITS])
  labels = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]])
  per_sample = 1 - ((3 + 1e-5) / (5 + 1e-5) + (0 + 1e-5) / (3 + 1e-5)) / 2
  pooled = 1 - (3 + 1e-5) / (8 + 1e-5)
  assert float(losses.soft_dice_loss(logits, labels)) == pytest.approx(
      per_sample, abs=1e-6)
  assert float(losses.soft_dice_loss(logits, labels, batch_dice=True)
               ) == pytest.approx(pooled, abs=1e-6)


def test_deep_supervision_weights():
  # 1, 1/2, 1/4 with the coarsest zeroed (nnU-Net v2): 1, 1/2, 0 -> / 1.5.
  np.testing.assert_allclose(losses.deep_supervision_weights(3),
                             [2 / 3, 1 / 3, 0], rtol=1e-6)
  # A single output (no deep supervision) keeps its weight.
  np.testing.assert_allclose(losses.deep_supervision_weights(1), [1.0])


def test_downsample_labels_is_nearest_neighbour():
  labels = jnp.arange(16).reshape(1, 4, 4)
  np.testing.assert_array_equal(losses.downsample_labels(labels, (2, 2)),
                                [[[0, 2], [8, 10]]])


def test_downsample_labels_nearest_exact_and_max():
  labels = jnp.arange(16).reshape(1, 4, 4)
  # nnU-Net's nearest-exact: the centre voxel f // 2 of each block.
  np.testing.assert_array_equal(
      losses.downsample_labels(labels, (2, 2), "nearest_exact"),
      [[[5, 7], [13, 15]]])
  # A one-voxel lesion off the sampled voxel: lost by nearest, kept by max.
  lesion = jnp.zeros((1, 4, 4, 4), jnp.int32).at[0, 1, 2, 3].set(1)
  assert not losses.downsample_labels(lesion, (2, 2, 2)).any()
  coarse = losses.downsample_labels(lesion, (2, 2, 2), "max")
  np.testing.assert_array_equal(np.argwhere(np.asarray(coarse)), [[0, 0, 1, 1]])
  # max: lesion beats IGNORE, IGNORE beats background, background stays.
  mixed = jnp.array([[1, IGNORE, IGNORE, 0, 0, 0]])
  np.testing.assert_array_equal(
      losses.downsample_labels(mixed, (3,), "max"), [[1, IGNORE, 0]])
  with pytest.raises(ValueError, match="unknown deep-supervision target"):
    losses.downsample_labels(labels, (2, 2), "mean")


def test_seg_loss_settings_weights():
  np.testing.assert_allclose(losses.SegLoss().weights(3), [2 / 3, 1 / 3, 0],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.SegLoss(ds_weights=(2, 1)).weights(2),
                             [2 / 3, 1 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match="2 entries for a network with 3"):
    losses.SegLoss(ds_weights=(2, 1)).weights(3)


def test_segmentation_loss_weights_outputs():
  # Weights 2/3, 1/3, 0: the coarsest output does not count.
  middle_logits, middle_labels = LOGITS[:, ::2], LABELS[:, ::2]
  coarsest_logits = jnp.full_like(LOGITS[:, ::4], jnp.nan)
  expected = (2 / 3 * losses.dice_ce_loss(LOGITS, LABELS)
              + 1 / 3 * losses.dice_ce_loss(middle_logits, middle_labels))
  got = losses.segmentation_loss([LOGITS, middle_logits, coarsest_logits],
                                 LABELS)
  assert float(got) == pytest.approx(float(expected), abs=1e-6)
  # Weights of one's own, and max-pooled targets for the coarse outputs.
  coarsest_logits = LOGITS[:, ::4]
  settings = losses.SegLoss(ds_weights=(1.0, 0.0, 1.0), ds_targets="max")
  expected = 0.5 * (losses.dice_ce_loss(LOGITS, LABELS)
                    + losses.dice_ce_loss(coarsest_logits, jnp.array([[1]])))
  got = losses.segmentation_loss([LOGITS, middle_logits, coarsest_logits],
                                 LABELS, settings)
  assert float(got) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("r", [0.0, 0.3, 10.0])
def test_joint_loss_is_r_times_cls_plus_seg(r):
  cls_logit = jnp.zeros((1,))  # BCE of logit 0 is log 2 for either label
  loss, parts = losses.joint_loss([LOGITS], cls_logit, LABELS,
                                  jnp.array([1]), r)
  seg = float(losses.dice_ce_loss(LOGITS, LABELS))
  assert float(parts["cls_loss"]) == pytest.approx(math.log(2), abs=1e-6)
  assert float(loss) == pytest.approx(r * math.log(2) + seg, abs=1e-5)


# Ignored voxels (lesion_labels.IGNORE) and unlabelled subjects (-1).


def _numpy_dice_ce(logits, labels):
  """Soft Dice (per sample, foreground) + CE over the non-ignored voxels."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  dice = []
  ce_sum, count = 0.0, 0
  for p, l in zip(probs, labels):
    keep = l != IGNORE
    fg, ref = p[..., 1][keep], (l[keep] == 1)
    dice.append((2 * (fg * ref).sum() + 1e-5)
                / (fg.sum() + ref.sum() + 1e-5))
    ce_sum -= np.log(p[keep][np.arange(keep.sum()), l[keep]]).sum()
    count += keep.sum()
  return 1 - np.mean(dice) + ce_sum / count


def test_ignored_voxels_count_in_neither_term():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 5, 2)).astype(np.float32)
  labels = (rng.random((2, 6, 5)) < 0.3).astype(np.int32)
  labels[0, :2] = IGNORE
  labels[1, 4, 1:3] = IGNORE
  got = losses.dice_ce_loss(jnp.asarray(logits), jnp.asarray(labels))
  assert float(got) == pytest.approx(_numpy_dice_ce(logits, labels),
                                     rel=1e-5)
  # Whatever the network says inside them changes nothing, nor its gradient.
  changed = np.where((labels == IGNORE)[..., None], 50.0 * logits, logits)
  assert float(losses.dice_ce_loss(jnp.asarray(changed), jnp.asarray(labels))
               ) == pytest.approx(float(got), rel=1e-6)
  grad = jax.grad(lambda x: losses.dice_ce_loss(x, jnp.asarray(labels)))(
      jnp.asarray(logits))
  assert not np.asarray(grad)[labels == IGNORE].any()
  assert np.asarray(grad)[labels != IGNORE].any()


def test_unlabelled_subjects_are_out_of_the_classification_loss():
  logits = jnp.array([0.3, -1.2, 2.0, 0.5])
  labels = jnp.array([1, -1, 0, -1])
  kept = np.array([0, 2])
  z, y = np.asarray(logits)[kept], np.array([1.0, 0.0])
  expected = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-abs(z))))
  assert float(losses.classification_loss(logits, labels)) == pytest.approx(
      expected, rel=1e-6)
  assert float(losses.classification_loss(logits, -jnp.ones(4, jnp.int32))
               ) == 0.0
  grad = jax.grad(losses.classification_loss)(logits, labels)
  assert np.asarray(grad)[[1, 3]].tolist() == [0.0, 0.0]


def _lesion_counts_by_hand(labels):
  """Lesion voxels in each voxel's 5^3 neighbourhood, by brute force."""
  lesion = (labels > 0) & (labels != IGNORE)
  counts = np.zeros(labels.shape)
  for index in np.ndindex(labels.shape):
    box = (index[0],) + tuple(slice(max(i - 2, 0), i + 3) for i in index[1:])
    counts[index] = lesion[box].sum()
  return lesion, counts


def test_small_lesion_weights_count_the_neighbourhood():
  labels = np.zeros((2, 12, 12, 12), np.int32)
  labels[0, 1, 1, 1] = 1  # an isolated voxel at the edge
  labels[0, 5:8, 5:8, 5:8] = 1  # a 27-voxel cube
  labels[1] = np.random.default_rng(0).random((12, 12, 12)) < 0.08
  labels[1, 0, :, :3] = IGNORE
  weights = np.asarray(losses.small_lesion_weights(jnp.asarray(labels), 4.0))
  assert weights[0, 1, 1, 1] == pytest.approx(5.0)
  assert weights[0, 6, 6, 6] == pytest.approx(1 + 4 / 27)
  assert weights[0, 5, 5, 5] == pytest.approx(1 + 4 / 27)
  lesion, counts = _lesion_counts_by_hand(labels)
  expected = np.where(lesion, 1 + 4.0 / np.maximum(counts, 1), 1.0)
  np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_weighted_cross_entropy_adds_the_small_lesions_weight():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 8, 8, 8, 2)).astype(np.float32)
  labels = (rng.random((2, 8, 8, 8)) < 0.05).astype(np.int32)
  labels[0, :2] = IGNORE
  plain = float(losses.cross_entropy_loss(jnp.asarray(logits),
                                          jnp.asarray(labels)))
  assert float(losses.cross_entropy_loss(jnp.asarray(logits),
                                         jnp.asarray(labels), 0.0)) == plain
  weighted = float(losses.cross_entropy_loss(jnp.asarray(logits),
                                             jnp.asarray(labels), 3.0))
  # By hand: -log softmax of the true class, weighted, over valid voxels.
  valid = labels != IGNORE
  target = np.where(valid, labels, 0)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per_voxel = -np.take_along_axis(log_p, target[..., None], -1)[..., 0]
  lesion, counts = _lesion_counts_by_hand(labels)
  weight = np.where(lesion, 1 + 3.0 / np.maximum(counts, 1), 1.0)
  assert plain == pytest.approx(per_voxel[valid].mean(), rel=1e-5)
  assert weighted == pytest.approx((per_voxel * weight)[valid].sum()
                                   / valid.sum(), rel=1e-5)
  assert weighted > plain
  # Through L_seg's settings.
  settings = losses.SegLoss(small_lesion_weight=3.0)
  seg = losses.segmentation_loss([jnp.asarray(logits)], jnp.asarray(labels),
                                 settings)
  dice = float(losses.soft_dice_loss(jnp.asarray(logits),
                                     jnp.asarray(labels)))
  assert float(seg) == pytest.approx(dice + weighted, rel=1e-5)
