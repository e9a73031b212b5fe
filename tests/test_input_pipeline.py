"""grain patch pipeline: shapes, foreground oversampling, determinism, 2D."""

import ml_collections
import numpy as np
import pytest

from configs import joint
from pvl_jax.data import input_pipeline


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


def test_at_least_a_third_of_patches_contain_lesion(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  # Small patches, so that random placement alone rarely hits a lesion.
  batches = _take(input_pipeline.train_dataset(
      source, _data_config(patch_size=(8, 8, 8)), 10, 0), 30)
  has_lesion = np.concatenate([b["label"].reshape(10, -1).any(1)
                               for b in batches])
  without = _take(input_pipeline.train_dataset(
      source, _data_config(patch_size=(8, 8, 8), fg=0.0), 10, 0), 30)
  random_rate = np.concatenate([b["label"].reshape(10, -1).any(1)
                                for b in without]).mean()
  assert has_lesion.mean() >= 1 / 3
  assert has_lesion.mean() > random_rate + 0.15


def test_deterministic_given_seed_and_workers(tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  a = _take(input_pipeline.train_dataset(source, _data_config(), 2, 7), 3)
  b = _take(input_pipeline.train_dataset(
      source, _data_config(num_workers=2), 2, 7), 3)
  c = _take(input_pipeline.train_dataset(source, _data_config(), 2, 8), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


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
    out_image, out_label = input_pipeline.augment_patch(
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
