"""Tests of pvl_jax.evaluation.segmentation: hand counts and brute force."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from pvl_jax.evaluation import lesions
from pvl_jax.evaluation import segmentation as seg


def _cube(shape, start, size):
  mask = np.zeros(shape, dtype=bool)
  mask[tuple(slice(s, s + size) for s in start)] = True
  return mask


def _random_mask(rng, shape, density):
  """Blobby random mask: smoothed noise, thresholded, so lesions have bodies."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.0)
  return noise > np.quantile(noise, 1 - density)


# --- Dice and VOE -------------------------------------------------------------


def test_overlapping_cubes_by_hand():
  # Two 4^3 cubes (64 voxels each) offset by 2 along every axis share a 2^3 = 8
  # voxel corner; union 64 + 64 - 8 = 120.
  pred = _cube((10, 10, 10), (0, 0, 0), 4)
  ref = _cube((10, 10, 10), (2, 2, 2), 4)
  assert seg.dice(pred, ref) == pytest.approx(2 * 8 / 128, abs=1e-12)
  assert seg.voe(pred, ref) == pytest.approx(1 - 8 / 120, abs=1e-12)


def test_avd_by_hand():
  pred = _cube((10, 10, 10), (0, 0, 0), 4)  # 64 voxels.
  ref = _cube((10, 10, 10), (0, 0, 0), 5)  # 125 voxels.
  avd = seg.abs_volume_difference_pct
  assert avd(pred, ref) == pytest.approx(61 / 125 * 100)
  assert avd(ref, pred) == pytest.approx(61 / 64 * 100)


@pytest.mark.parametrize("seed", range(5))
def test_dice_voe_match_set_computation(seed):
  rng = np.random.default_rng(seed)
  shape = (9, 8, 7) if seed % 2 else (15, 13)
  pred = rng.random(shape) < rng.uniform(0.1, 0.6)
  ref = rng.random(shape) < rng.uniform(0.1, 0.6)
  p = set(map(tuple, np.argwhere(pred)))
  r = set(map(tuple, np.argwhere(ref)))
  expected_dice = 2 * len(p & r) / (len(p) + len(r))
  expected_voe = 1 - len(p & r) / len(p | r)
  assert seg.dice(pred, ref) == pytest.approx(expected_dice, abs=1e-6)
  assert seg.voe(pred, ref) == pytest.approx(expected_voe, abs=1e-6)
  # 0/1 integer and float volumes are accepted as well as bools.
  as_numbers = seg.dice(pred.astype(np.uint8), ref.astype(float))
  assert as_numbers == seg.dice(pred, ref)


# --- HD95 ---------------------------------------------------------------------


def _surface_points_brute_force(mask):
  """Surface voxel indices by explicit neighbour checks.

  A voxel is on the surface when any of its 3^ndim - 1 neighbours is
  background, counting positions outside the volume as background.
  """
  padded = np.pad(mask, 1, constant_values=False)
  points = []
  for index in np.argwhere(mask):
    for offset in itertools.product((-1, 0, 1), repeat=mask.ndim):
      if not padded[tuple(index + 1 + np.array(offset))]:
        points.append(index)
        break
  return np.array(points, dtype=float)


def _hd95_brute_force(pred, ref, spacing):
  p = _surface_points_brute_force(pred) * spacing
  r = _surface_points_brute_force(ref) * spacing
  distances = cdist(p, r)
  return max(np.percentile(distances.min(axis=1), 95),
             np.percentile(distances.min(axis=0), 95))


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force(seed):
  rng = np.random.default_rng(100 + seed)
  shape = (14, 12, 10) if seed % 3 else (30, 26)
  pred = _random_mask(rng, shape, rng.uniform(0.05, 0.3))
  ref = _random_mask(rng, shape, rng.uniform(0.05, 0.3))
  spacing = rng.uniform(0.5, 3.0, size=len(shape))
  expected = _hd95_brute_force(pred, ref, spacing)
  assert expected > 0
  assert seg.hd95(pred, ref, spacing) == pytest.approx(expected, abs=1e-6)


def test_hd95_masks_in_a_corner_of_a_large_volume():
  # Exercises the cropping: empty space around the masks changes nothing, as
  # the brute force counts positions outside the volume as background too.
  rng = np.random.default_rng(7)
  small_pred = _random_mask(rng, (10, 9, 8), 0.2)
  small_ref = _random_mask(rng, (10, 9, 8), 0.2)
  pred = np.zeros((40, 41, 42), dtype=bool)
  ref = np.zeros((40, 41, 42), dtype=bool)
  pred[20:30, 5:14, 30:38] = small_pred
  ref[20:30, 5:14, 30:38] = small_ref
  spacing = np.array([1.2, 0.8, 2.5])
  assert seg.hd95(pred, ref, spacing) == pytest.approx(
      _hd95_brute_force(small_pred, small_ref, spacing), abs=1e-6)


def test_hd95_single_voxels_along_an_anisotropic_axis():
  pred = np.zeros((8, 5, 5), dtype=bool)
  ref = np.zeros((8, 5, 5), dtype=bool)
  pred[1, 2, 2] = True
  ref[4, 2, 2] = True
  assert seg.hd95(pred, ref, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
  assert seg.hd95(pred, ref, (1.0, 2.0, 2.0)) == pytest.approx(3.0)


def test_hd95_is_max_of_directed_percentiles_not_pooled():
  # pred: one voxel at 0; ref: that voxel plus one 10 voxels away. Directed
  # distances: pred->ref [0]; ref->pred [0, 10], whose 95th percentile (linear)
  # is 9.5. Pooling [0, 0, 10] would give 9.0 instead.
  pred = np.zeros((12, 3), dtype=bool)
  ref = np.zeros((12, 3), dtype=bool)
  pred[0, 1] = True
  ref[0, 1] = ref[10, 1] = True
  assert seg.hd95(pred, ref, (1.0, 1.0)) == pytest.approx(9.5)


def test_hd95_identical_masks_is_zero():
  mask = _cube((6, 6, 6), (1, 1, 1), 3)
  assert seg.hd95(mask, mask, (1.0, 1.0, 1.0)) == 0.0


# --- Lesion detection ---------------------------------------------------------


def test_diagonal_voxels_are_one_lesion():
  ref = np.zeros((5, 5, 5), dtype=bool)
  ref[1, 1, 1] = ref[2, 2, 2] = True  # Touch at a corner only.
  pred = np.zeros_like(ref)
  pred[1, 1, 1] = True
  # Under 6-connectivity this would be two lesions and recall 0.5.
  assert ndimage.label(ref)[1] == 2
  result = lesions.lesion_detection(pred, ref)
  assert result["n_ref"] == 1
  assert result["n_ref_detected"] == 1
  assert result["recall"] == 1.0


def test_missed_small_lesion_and_false_positive():
  ref = _cube((12, 12, 12), (0, 0, 0), 4)
  ref[9, 9, 9] = True  # Small lesion, missed.
  pred = _cube((12, 12, 12), (1, 1, 1), 4)  # Overlaps the big lesion.
  pred[0, 10, 0] = True  # False positive.
  result = lesions.lesion_detection(pred, ref)
  assert result == {
      "recall": 0.5,
      "precision": 0.5,
      "f1": pytest.approx(0.5),
      "n_ref": 2,
      "n_pred": 2,
      "n_ref_detected": 1,
      "n_pred_correct": 1,
  }


def test_missed_lesion_only_lowers_recall():
  ref = _cube((12, 12, 12), (0, 0, 0), 4)
  ref[9, 9, 9] = True
  pred = _cube((12, 12, 12), (1, 1, 1), 4)
  result = lesions.lesion_detection(pred, ref)
  assert (result["recall"], result["precision"]) == (0.5, 1.0)
  assert result["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_lesion_recall_by_size_by_hand():
  # At 2 mm a voxel is 0.008 ml: a single voxel (0.008 ml) falls in the first
  # bin, a 4^3 cube (0.512 ml) in 0.5-2 ml, a 3^3 cube (0.216 ml) in 0.05-0.5.
  ref = np.zeros((20, 20, 20), dtype=bool)
  ref[0, 0, 0] = True  # Missed.
  ref[10, 10, 10] = True  # Detected.
  ref |= _cube(ref.shape, (3, 3, 3), 4)  # Detected.
  ref |= _cube(ref.shape, (14, 2, 14), 3)  # Missed.
  pred = np.zeros_like(ref)
  pred[10, 10, 10] = True
  pred[5, 5, 5] = True
  counts = lesions.lesion_recall_by_size(pred, ref, (2.0, 2.0, 2.0))
  assert counts == {
      "0-0.05ml": (2, 1),
      "0.05-0.5ml": (1, 0),
      "0.5-2ml": (1, 1),
      "2-infml": (0, 0),
  }
  # At 1 mm the 4^3 cube (0.064 ml) and the 3^3 cube (0.027 ml) move down a bin.
  counts = lesions.lesion_recall_by_size(pred, ref, (1.0, 1.0, 1.0))
  assert counts == {
      "0-0.05ml": (3, 1),
      "0.05-0.5ml": (1, 1),
      "0.5-2ml": (0, 0),
      "2-infml": (0, 0),
  }


# --- Empty cases --------------------------------------------------------------

_NAN = math.nan


@pytest.mark.parametrize(
    "pred_empty, ref_empty, expected",
    [
        (True, True, dict(dice=1.0, voe=0.0, hd95_mm=0.0, avd_pct=0.0,
                          lesion_recall=1.0, lesion_precision=1.0,
                          lesion_f1=1.0)),
        (False, True, dict(dice=0.0, voe=1.0, hd95_mm=_NAN, avd_pct=_NAN,
                           lesion_recall=_NAN, lesion_precision=0.0,
                           lesion_f1=0.0)),
        (True, False, dict(dice=0.0, voe=1.0, hd95_mm=_NAN, avd_pct=100.0,
                           lesion_recall=0.0, lesion_precision=_NAN,
                           lesion_f1=0.0)),
    ],
)
def test_empty_case_rule(pred_empty, ref_empty, expected):
  lesion = _cube((6, 6, 6), (1, 1, 1), 2)
  empty = np.zeros((6, 6, 6), dtype=bool)
  pred = empty if pred_empty else lesion
  ref = empty if ref_empty else lesion
  result = seg.evaluate_subject(pred, ref, (1.0, 1.0, 1.0))
  for key, value in expected.items():
    if math.isnan(value):
      assert math.isnan(result[key]), key
    else:
      assert result[key] == value, key


def test_evaluate_subject_keys_and_values():
  pred = _cube((10, 10, 10), (0, 0, 0), 4)
  ref = _cube((10, 10, 10), (2, 2, 2), 4)
  result = seg.evaluate_subject(pred, ref, (1.0, 1.0, 1.0))
  assert result["dice"] == seg.dice(pred, ref)
  assert result["hd95_mm"] == seg.hd95(pred, ref, (1.0, 1.0, 1.0))
  assert result["size_0.05-0.5ml_n_ref"] == 1
  assert result["size_0.05-0.5ml_n_detected"] == 1
  bins = ("0-0.05ml", "0.05-0.5ml", "0.5-2ml", "2-infml")
  assert set(result) == {
      "dice", "voe", "hd95_mm", "avd_pct",
      "lesion_recall", "lesion_precision", "lesion_f1",
      *(f"size_{b}_{count}" for b in bins for count in ("n_ref", "n_detected")),
  }


# --- Aggregation --------------------------------------------------------------


def test_aggregate_nan_aware_and_pooled_size_recall():
  subjects = [
      {"hd95_mm": 1.0, "size_0-1ml_n_ref": 1, "size_0-1ml_n_detected": 0},
      {"hd95_mm": 3.0, "size_0-1ml_n_ref": 3, "size_0-1ml_n_detected": 3},
      {"hd95_mm": math.nan, "size_0-1ml_n_ref": 0, "size_0-1ml_n_detected": 0},
  ]
  summary = seg.aggregate(subjects)
  assert summary["n_subjects"] == 3
  assert summary["hd95_mm_mean"] == 2.0
  assert summary["hd95_mm_median"] == 2.0
  assert summary["hd95_mm_std"] == pytest.approx(math.sqrt(2.0))  # Sample std.
  assert summary["hd95_mm_n"] == 2
  assert summary["size_0-1ml_n_ref"] == 4
  assert summary["size_0-1ml_n_detected"] == 3
  # Pooled over lesions (3/4), not the mean of per-subject recalls (0.5).
  assert summary["size_0-1ml_recall"] == 0.75


def test_aggregate_all_nan_metric():
  summary = seg.aggregate([{"hd95_mm": math.nan}, {"hd95_mm": math.nan}])
  assert summary["hd95_mm_n"] == 0
  for stat in ("mean", "std", "median"):
    assert math.isnan(summary[f"hd95_mm_{stat}"])


def test_aggregate_of_evaluated_subjects():
  rng = np.random.default_rng(3)
  per_subject = [
      seg.evaluate_subject(_random_mask(rng, (12, 12, 12), 0.1),
                           _random_mask(rng, (12, 12, 12), 0.1),
                           (1.0, 1.0, 2.0))
      for _ in range(3)
  ]
  summary = seg.aggregate(per_subject)
  dices = [s["dice"] for s in per_subject]
  assert summary["dice_mean"] == pytest.approx(np.mean(dices))
  assert summary["dice_n"] == 3
  n_ref = sum(s["size_0-0.05ml_n_ref"] for s in per_subject)
  n_detected = sum(s["size_0-0.05ml_n_detected"] for s in per_subject)
  assert summary["size_0-0.05ml_n_ref"] == n_ref
  if n_ref:
    assert summary["size_0-0.05ml_recall"] == pytest.approx(n_detected / n_ref)


# --- Bad input ----------------------------------------------------------------


def test_shape_mismatch_is_rejected():
  with pytest.raises(ValueError, match="shape mismatch"):
    seg.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


@pytest.mark.parametrize("bad", [2, 0.5, math.nan, -1])
def test_non_binary_values_are_rejected(bad):
  ref = np.zeros((4, 4, 4))
  pred = ref.copy()
  pred[0, 0, 0] = bad
  with pytest.raises(ValueError, match="pred is not binary"):
    seg.evaluate_subject(pred, ref, (1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match="ref is not binary"):
    seg.voe(ref, pred)


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, math.nan, 1.0)])
def test_bad_spacing_is_rejected(spacing):
  mask = _cube((5, 5, 5), (1, 1, 1), 2)
  with pytest.raises(ValueError, match="spacing"):
    seg.hd95(mask, mask, spacing)


def test_wrong_dimensionality_and_bad_bins_are_rejected():
  with pytest.raises(ValueError, match="2D or 3D"):
    seg.dice(np.zeros(5), np.zeros(5))
  mask = _cube((5, 5, 5), (1, 1, 1), 2)
  with pytest.raises(ValueError, match="bins_ml"):
    lesions.lesion_recall_by_size(mask, mask, (1.0, 1.0, 1.0),
                                  bins_ml=(0.0, 1.0, 0.5))


def test_aggregate_rejects_mismatched_keys_and_empty_input():
  with pytest.raises(ValueError, match="subject 1"):
    seg.aggregate([{"dice": 1.0}, {"voe": 0.0}])
  with pytest.raises(ValueError, match="at least one subject"):
    seg.aggregate([])


def _chosen_size(preds, refs, voxel_mm3, candidates_mm3=None):
  """The volume `choose` picks with the surface rule off."""
  from pvl_jax.evaluation import postprocess_choice  # pylint: disable=g-import-not-at-top
  deep = [np.full(p.shape, 100.0) for p in preds]
  sizes = candidates_mm3 or postprocess_choice.CANDIDATES_MM3
  return postprocess_choice.choose(preds, refs, deep, voxel_mm3, sizes,
                                   (0.0,)).min_mm3


def test_remove_small_components_and_choice_on_validation():
  from pvl_jax.evaluation import postprocess_choice  # pylint: disable=g-import-not-at-top
  from pvl_jax.inference import postprocess  # pylint: disable=g-import-not-at-top
  mask = np.zeros((12, 12, 12), bool)
  mask[1:4, 1:4, 1:4] = True          # 27 voxels
  mask[8, 8, 8] = True                 # 1 voxel
  mask[10, 10, 10] = mask[11, 11, 11] = True  # 2 voxels, 26-connected
  kept = postprocess.remove_small_components(mask, 2)
  assert kept.sum() == 29 and not kept[8, 8, 8]
  assert postprocess.remove_small_components(mask, 28).sum() == 0
  np.testing.assert_array_equal(postprocess.remove_small_components(mask, 0),
                                mask)
  # Reference = the big cube only: removing the 1- and 2-voxel specks is
  # best (2 mm voxels: the first candidate that does is 24 mm^3, 3 voxels).
  ref = np.zeros_like(mask)
  ref[1:4, 1:4, 1:4] = True
  assert _chosen_size([mask], [ref], 8.0) == 24.0
  # Reference includes the specks: no postprocessing is best.
  assert _chosen_size([mask], [ref | mask], 8.0) == 0.0
  # The same masks on a 1 mm grid: volumes, not voxels, are the rule.
  assert _chosen_size([mask], [ref], 1.0) == 8.0
  assert postprocess_choice.min_voxels(16.0, 8.0) == 2
  assert postprocess_choice.min_voxels(20.0, 8.0) == 3


def test_postprocessing_is_chosen_by_lesions_not_dice():
  # A big lesion found, plus two small true lesions of 2 voxels and one
  # false speck of 2 voxels. Removing 2-voxel components raises Dice (the
  # speck goes) but loses two true lesions: lesion F1 keeps them.
  ref = np.zeros((16, 16, 16), bool)
  ref[2:8, 2:8, 2:8] = True
  ref[12, 12, 12:14] = True
  ref[12, 2, 2:4] = True
  pred = ref.copy()
  pred[2, 12, 12:14] = True
  assert _chosen_size([pred], [ref], 8.0) == 0.0
  # A 2-voxel component is 16 mm^3: a 16 mm^3 minimum keeps it.
  assert _chosen_size([pred], [ref], 8.0, candidates_mm3=(48.0, 16.0)) == 16.0


def test_brain_depth_counts_the_outside_beyond_the_arrays_faces():
  from pvl_jax.inference import postprocess  # pylint: disable=g-import-not-at-top
  # A record is cropped to its brain: here the brain fills the array.
  brain = np.ones((5, 5, 7), bool)
  depth = postprocess.brain_depth(brain, (2.0, 2.0, 2.0))
  assert depth[0, 0, 0] == 2.0  # a corner voxel: one voxel from outside
  assert depth[2, 2, 3] == 6.0  # the centre: three voxels from each face
  assert postprocess.brain_depth(brain, (1.0, 1.0, 1.0))[2, 2, 3] == 3.0
  brain[2, 2, 3] = False
  assert postprocess.brain_depth(brain, (2.0, 2.0, 2.0))[2, 2, 4] == 2.0


def _surface_case():
  """A brain cube (2 mm voxels) with a surface speck and a deep lesion."""
  from pvl_jax.inference import postprocess  # pylint: disable=g-import-not-at-top
  brain = np.zeros((24, 24, 24), bool)
  brain[2:22, 2:22, 2:22] = True
  depth = postprocess.brain_depth(brain, (2.0, 2.0, 2.0))
  deep = np.zeros_like(brain)
  deep[10:13, 10:13, 10:13] = True
  surface = np.zeros_like(brain)
  surface[2:4, 10:14, 10:14] = True  # the outer two voxel layers
  return brain, depth, deep, surface


def test_surface_components_are_removed_unless_they_reach_deep():
  from pvl_jax.inference import postprocess  # pylint: disable=g-import-not-at-top
  _, depth, deep, surface = _surface_case()
  # The surface blob's deepest voxel is 4 mm in (second layer).
  kept = postprocess.remove_surface_components(deep | surface, depth, 6.0)
  np.testing.assert_array_equal(kept, deep)
  np.testing.assert_array_equal(
      postprocess.remove_surface_components(deep | surface, depth, 4.0),
      deep | surface)
  np.testing.assert_array_equal(
      postprocess.remove_surface_components(deep | surface, depth, 0.0),
      deep | surface)
  # One component that starts at the surface but reaches deep is kept whole.
  reaching = surface.copy()
  reaching[2:12, 11, 11] = True
  np.testing.assert_array_equal(
      postprocess.remove_surface_components(reaching, depth, 6.0), reaching)


def test_surface_shell_is_chosen_on_validation_only_when_it_helps():
  from pvl_jax.evaluation import postprocess_choice  # pylint: disable=g-import-not-at-top
  _, depth, deep, surface = _surface_case()
  # A false lesion at the surface: the 6 mm shell removes it (F1 1 vs 2/3).
  choice = postprocess_choice.choose([deep | surface], [deep], [depth], 8.0)
  assert choice == postprocess_choice.Choice(min_mm3=0.0, min_depth_mm=6.0)
  # A true lesion at the surface: nothing is removed.
  choice = postprocess_choice.choose([deep | surface], [deep | surface],
                                     [depth], 8.0)
  assert choice == postprocess_choice.Choice(min_mm3=0.0, min_depth_mm=0.0)
  kept = postprocess_choice.apply(deep | surface, depth,
                                  postprocess_choice.Choice(0.0, 6.0), 8.0)
  np.testing.assert_array_equal(kept, deep)


# Ignored voxels: the prediction there is masked out (WMH's label 2).


def _blob_case():
  ref = np.zeros((20, 20, 20), bool)
  ref[3:7, 3:7, 3:7] = True
  ignore = np.zeros_like(ref)
  ignore[12:17, 12:17, 12:17] = True
  pred = np.zeros_like(ref)
  pred[4:7, 3:7, 3:7] = True
  return pred, ref, ignore


def test_prediction_inside_ignored_voxels_is_not_held_against_the_model():
  pred, ref, ignore = _blob_case()
  clean = seg.evaluate_subject(pred, ref, (1, 1, 1), ignore=ignore)
  with_blob = seg.evaluate_subject(pred | ignore, ref, (1, 1, 1),
                                   ignore=ignore)
  assert with_blob == clean
  # Dice by hand: 48 predicted voxels inside the 64-voxel lesion.
  assert clean["dice"] == pytest.approx(2 * 48 / (48 + 64))
  assert clean["lesion_precision"] == 1.0
  # Without the ignore mask the blob is a false positive lesion.
  scored = seg.evaluate_subject(pred | ignore, ref, (1, 1, 1))
  assert scored["dice"] == pytest.approx(2 * 48 / (48 + 125 + 64))
  assert scored["lesion_precision"] == 0.5


def test_missing_ignored_voxels_costs_nothing_either():
  pred, ref, ignore = _blob_case()
  partly = pred.copy()
  partly[13:15, 13:15, 13:15] = True  # half the blob predicted
  assert (seg.evaluate_subject(partly, ref, (1, 1, 1), ignore=ignore)
          == seg.evaluate_subject(pred, ref, (1, 1, 1), ignore=ignore))


def test_ignore_overlapping_the_reference_is_refused():
  pred, ref, ignore = _blob_case()
  ignore[5, 5, 5] = True
  with pytest.raises(ValueError, match="ignore overlaps ref"):
    seg.evaluate_subject(pred, ref, (1, 1, 1), ignore=ignore)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postprocessing_choice_equals_scoring_every_postprocessed_mask(seed):
  # The choice scores candidates from component counts; here every
  # candidate's masks are postprocessed and scored by the metrics
  # themselves, and the best pair (F1, then Dice, then less postprocessing)
  # must be the same, on random specks and blobs in a brain with a rim.
  from pvl_jax.evaluation import postprocess_choice  # pylint: disable=g-import-not-at-top
  from pvl_jax.inference import postprocess  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  preds, refs, depths = [], [], []
  for _ in range(3):
    brain = np.zeros((20, 20, 20), bool)
    brain[1:19, 1:19, 1:19] = True
    depth = postprocess.brain_depth(brain, (2.0, 2.0, 2.0))
    ref = ndimage.binary_dilation(rng.random(brain.shape) < 0.004,
                                  iterations=int(rng.integers(0, 2)))
    pred = (ref & (rng.random(brain.shape) < 0.8)) | (
        rng.random(brain.shape) < 0.01)
    preds.append(pred & brain)
    refs.append(ref & brain)
    depths.append(depth)
  brute = []
  for depth_mm in postprocess_choice.DEPTH_CANDIDATES_MM:
    for size in postprocess_choice.CANDIDATES_MM3:
      choice = postprocess_choice.Choice(size, depth_mm)
      kept = [postprocess_choice.apply(p, d, choice, 8.0)
              for p, d in zip(preds, depths)]
      f1 = np.nanmean([lesions.lesion_detection(k, r)["f1"]
                       for k, r in zip(kept, refs)])
      dice = np.mean([seg.dice(k, r) for k, r in zip(kept, refs)])
      # Less postprocessing first among equals: max keeps the first.
      brute.append(((round(f1, 9), round(dice, 9)), -depth_mm, -size,
                    choice))
  expected = max(brute, key=lambda b: b[:3])[3]
  assert postprocess_choice.choose(preds, refs, depths, 8.0) == expected
