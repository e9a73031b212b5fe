"""grain patch pipeline: shapes, foreground oversampling, determinism, 2D."""

import numpy as np
import pytest

from configs import joint
from pvl_jax.data import decoded_subjects
from pvl_jax.data import input_pipeline
from pvl_jax.training import augmentation_basic


def _data_config(patch_size=(16, 16, 16), num_workers=0, fg=0.33):
  data = joint.get_config("demo").data
  data.patch_size = patch_size
  data.num_workers = num_workers
  data.foreground_fraction = fg
  return data


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def test_batch_shapes_and_dtypes(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  batch = _take(input_pipeline.train_dataset(source, _data_config(), 4, 0), 1)[0]
  assert batch["image"].shape == (4, 16, 16, 16, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (4, 16, 16, 16)
  assert set(np.unique(batch["label"])) <= {0, 1}
  assert batch["hand_function"].shape == (4,)
  assert batch["subject_index"].max() < 6


def test_the_last_third_of_every_batch_holds_a_lesion(tiny_builder):
  # nnU-Net's rule: places from round(B * (1 - 0.33)) on are forced, here
  # the last of 3; the others are placed at random.
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  # Small patches, so that random placement alone rarely hits a lesion.
  batches = _take(input_pipeline.train_dataset(
      source, _data_config(patch_size=(8, 8, 8)), 3, 0), 30)
  has_lesion = np.stack([b["label"].reshape(3, -1).any(1) for b in batches])
  assert has_lesion[:, 2].all()
  assert has_lesion[:, :2].mean() < 0.9
  without = _take(input_pipeline.train_dataset(
      source, _data_config(patch_size=(8, 8, 8), fg=0.0), 3, 0), 30)
  assert not np.stack([b["label"].reshape(3, -1).any(1)
                       for b in without])[:, 2].all()
  # Validation patches follow the same rule.
  fixed = input_pipeline.fixed_patches(
      tiny_builder.as_data_source("fold3"), _data_config(patch_size=(8, 8, 8)),
      12, 3, seed=1)
  assert all(b["label"][2].any() for b in fixed)


def _assert_same_batches(actual, expected):
  assert len(actual) == len(expected)
  for x, y in zip(actual, expected):
    assert set(x) == set(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
      assert x[key].dtype == y[key].dtype, key


def test_workers_build_the_same_batches_and_resume_with_any_count(
    tiny_builder, monkeypatch):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  in_process = _take(input_pipeline.train_dataset(source, _data_config(), 2,
                                                  7), 5)
  other_seed = _take(input_pipeline.train_dataset(source, _data_config(), 2,
                                                  8), 1)
  it = iter(input_pipeline.train_dataset(
      source, _data_config(num_workers=2), 2, 7))
  # The spawned workers import the module afresh; a patch cut here would
  # fail: the main process only receives finished batches.
  def not_here(*args):
    raise AssertionError("a patch was cut in the main process")
  monkeypatch.setattr(decoded_subjects, "_mapped", not_here)
  with_workers = [next(it) for _ in range(3)]
  state = it.get_state()
  it.close()
  monkeypatch.undo()
  _assert_same_batches(with_workers, in_process[:3])
  assert not np.array_equal(in_process[0]["image"], other_seed[0]["image"])
  # A run checkpointed with 2 workers resumes without any.
  resumed = iter(input_pipeline.train_dataset(source, _data_config(), 2, 7))
  resumed.set_state(state)
  _assert_same_batches([next(resumed) for _ in range(2)], in_process[3:])


def test_iterator_state_resumes_exactly(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  ds = input_pipeline.train_dataset(source, _data_config(), 2, 3)
  it = iter(ds)
  next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  for x in expected:
    np.testing.assert_array_equal(x["image"], next(resumed)["image"])


@pytest.mark.parametrize("state", [
    {"next_index": 3},  # no worker processes
    # Two workers that returned batches 0, 2 and 1 (slice positions 2 and 1).
    {"next_index_in_cycle": 1, "next_index_in_datasets": 2,
     "iterators_in_use_indices": [0, 1],
     "iterators_in_use_states": [{"next_index": 2}, {"next_index": 1}],
     "exhausted": [0, 0], "future_states": {}},
])
def test_resumes_from_states_of_the_previous_pipeline(tiny_builder, state):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  expected = _take(input_pipeline.train_dataset(source, _data_config(), 2,
                                                3), 4)[3]
  resumed = iter(input_pipeline.train_dataset(source, _data_config(), 2, 3))
  resumed.set_state(state)
  _assert_same_batches([next(resumed)], [expected])


def test_records_are_decoded_once(tiny_builder, monkeypatch):
  source = tiny_builder.as_data_source("fold0+fold1")
  subjects = decoded_subjects.decoded_subjects(source)
  assert [s.index for s in subjects] == list(range(len(source)))
  record = source[1]
  image, label, lesion = subjects[1].volumes()
  np.testing.assert_array_equal(image, record["image"])
  np.testing.assert_array_equal(label, record["lesion_mask"])
  np.testing.assert_array_equal(lesion, np.flatnonzero(record["lesion_mask"]))
  assert subjects[1].hand_function == record["hand_function"]
  # Neither later runs (other folds share subjects) nor patches decompress
  # a volume again.
  def no_decoding(*args):
    raise AssertionError("a record was decoded again")
  monkeypatch.setattr(decoded_subjects, "_decode", no_decoding)
  _take(input_pipeline.train_dataset(source, _data_config(), 4, 0), 3)
  input_pipeline.fixed_patches(source, _data_config(), 4, 2, seed=1)


def test_2d_patches_are_axial_slices(tiny_builder):
  source = tiny_builder.as_data_source("fold0")
  batch = _take(input_pipeline.train_dataset(
      source, _data_config(patch_size=(16, 16)), 3, 0), 1)[0]
  assert batch["image"].shape == (3, 16, 16, 1)
  assert batch["label"].shape == (3, 16, 16)


def test_process_slices_make_up_the_single_process_batch(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  single = _take(input_pipeline.train_dataset(source, _data_config(), 4, 0), 3)
  slices = [_take(input_pipeline.train_dataset(
      source, _data_config(), 2, 0, process_index=p, process_count=2), 3)
            for p in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(
        single[step]["image"],
        np.concatenate([slices[0][step]["image"], slices[1][step]["image"]]))


def test_augmentation_flips_image_and_label_together():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(6, 6, 6, 1)).astype(np.float32)
  label = (image[..., 0] > 1).astype(np.uint8)
  options = {"flip": True, "intensity_scale": 0.0, "intensity_shift": 0.0,
             "noise_prob": 0.0}
  flipped_any = False
  for seed in range(8):
    out_image, out_label, _ = augmentation_basic.augment_patch(
        image, label, options, np.random.default_rng(seed))
    np.testing.assert_array_equal(out_label, out_image[..., 0] > 1)
    flipped_any |= not np.array_equal(out_image, image)
  assert flipped_any


def test_fixed_patches_are_reproducible(tiny_builder):
  source = tiny_builder.as_data_source("fold3")
  a = input_pipeline.fixed_patches(source, _data_config(), 4, 2, seed=1)
  b = input_pipeline.fixed_patches(source, _data_config(), 4, 2, seed=1)
  assert len(a) == 2
  np.testing.assert_array_equal(a[1]["image"], b[1]["image"])


def test_patch_larger_than_the_volume_is_padded_around_it():
  volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
  rng = np.random.default_rng(0)
  for _ in range(20):
    start = input_pipeline.sample_patch_start(volume.shape, np.array([], int),
                                              (8, 5, 3), False, rng)
    # Too short along axis 0 (4 < 8): centred, 2 voxels of padding each side.
    assert start[0] == -2 and start[1] == 0 and 0 <= start[2] <= 3
    patch = input_pipeline.cut_window(volume, start, (8, 5, 3))
    assert patch.shape == (8, 5, 3)
    np.testing.assert_array_equal(patch[2:6], volume[:, :, start[2]:start[2] + 3])
    assert not patch[:2].any() and not patch[6:].any()


def test_2d_patches_are_cut_across_the_slice_axis(tmp_path):
  volume = np.random.default_rng(1).normal(size=(6, 7, 8, 1)).astype(
      np.float32)
  label = np.zeros((6, 7, 8), np.uint8)
  for name, array in zip(decoded_subjects._DECODED_FILES,
                         (volume, label, np.flatnonzero(label))):
    np.save(tmp_path / f"{name}.npy", array)
  subject = decoded_subjects.Subject(0, 1, str(tmp_path), (0, 0, 0))
  sampler = input_pipeline.PatchSampler((7, 8), None, slice_axis=0)
  patch = sampler.random_map(input_pipeline.PatchRequest(subject, False),
                             np.random.default_rng(2))
  assert patch["image"].shape == (7, 8, 1) and patch["label"].shape == (7, 8)
  # The patch is one whole slice across axis 0.
  assert any(np.array_equal(patch["image"], volume[i]) for i in range(6))


def test_nnunet_recipe_cuts_a_larger_window_around_the_same_patch(
    tiny_builder):
  """The host only cuts: the patch placed as without augmentation, centred."""
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  plain = _data_config()
  plain.augment.recipe = "none"
  nnunet = _data_config()
  nnunet.augment.recipe = "nnunet"
  big = _take(input_pipeline.train_dataset(source, nnunet, 3, 4), 2)
  small = _take(input_pipeline.train_dataset(source, plain, 3, 4), 2)
  # 16^3 patches, +-30 degrees: nnU-Net's 25, grown to an even margin.
  assert big[0]["image"].shape == (3, 26, 26, 26, 1)
  for b, s in zip(big, small):
    np.testing.assert_array_equal(b["image"][:, 5:21, 5:21, 5:21], s["image"])
    np.testing.assert_array_equal(b["label"][:, 5:21, 5:21, 5:21], s["label"])
  # Unaugmented on the host: the basic recipe changes the same patches.
  basic = _take(input_pipeline.train_dataset(source, _data_config(), 3, 4), 1)
  assert not np.array_equal(basic[0]["image"], small[0]["image"])


def test_max_train_subjects_keeps_the_first_subjects(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  config = _data_config()
  config.max_train_subjects = 2
  batches = _take(input_pipeline.train_dataset(source, config, 4, 0), 5)
  seen = np.concatenate([b["subject_index"] for b in batches])
  assert set(seen) == {0, 1}


def test_lesion_components_group_voxels_by_26_connected_lesion():
  mask = np.zeros((6, 6, 6), bool)
  mask[0, 0, 0] = mask[1, 1, 1] = True  # diagonal neighbours: one lesion
  mask[4, 4, 4:6] = True
  lesion = np.flatnonzero(mask)
  grouped, offsets = decoded_subjects.lesion_components(mask, lesion)
  np.testing.assert_array_equal(offsets, [0, 2, 4])
  assert sorted(grouped.tolist()) == lesion.tolist()
  first = {np.ravel_multi_index(v, mask.shape) for v in [(0, 0, 0), (1, 1, 1)]}
  assert set(grouped[:2].tolist()) == first


def test_lesion_sampling_centres_small_lesions_as_often_as_large_ones():
  # One 1-voxel lesion beside a 999-voxel one: drawn by voxel, the small
  # one is chosen about 1 time in 1000; drawn by lesion, half the time.
  shape = (40, 40, 40)
  mask = np.zeros(shape, bool)
  mask[2:12, 2:12, 2:12] = True
  mask[2, 2, 2] = False
  mask[35, 35, 35] = True
  lesion = np.flatnonzero(mask)
  grouped, offsets = decoded_subjects.lesion_components(mask, lesion)
  rng = np.random.default_rng(0)
  patch = (8, 8, 8)

  def holds_small(start):
    return all(s <= 35 < s + p for s, p in zip(start, patch))

  by_lesion = [holds_small(input_pipeline.sample_patch_start(
      shape, grouped, patch, True, rng, offsets)) for _ in range(400)]
  by_voxel = [holds_small(input_pipeline.sample_patch_start(
      shape, lesion, patch, True, rng)) for _ in range(400)]
  assert 0.4 < np.mean(by_lesion) < 0.6
  assert np.mean(by_voxel) < 0.02


def test_foreground_sampling_is_validated():
  from preprocessing.io.errors import InputError
  from pvl_jax.training import config_validation
  config = joint.get_config("demo")
  config.data.foreground_sampling = "component"
  with pytest.raises(InputError, match="config.data.foreground_sampling"):
    config_validation.validate_config(config)


def test_lesion_sampling_keeps_every_forced_patch_on_a_lesion(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  data = _data_config(patch_size=(8, 8, 8), fg=1.0)
  data.foreground_sampling = "lesion"
  batches = _take(input_pipeline.train_dataset(source, data, 3, 0), 8)
  assert all((b["label"] == 1).any(axis=(1, 2, 3)).all() for b in batches)
