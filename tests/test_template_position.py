"""Template positions travel with patches through cutting and augmentation.

Each test pushes volumes whose values encode their own template voxel
coordinates through a recipe and checks the position the batch carries
against them: a flip must map a voxel to the mirrored block, never another.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import joint
from pvl_jax.data import decoded_subjects
from pvl_jax.data import input_pipeline
from pvl_jax.data import template_position
from pvl_jax.training import augmentation

# Added to encoded coordinates so that every voxel of the volume is nonzero
# (nnU-Net's recipe zeroes the image outside its nonzero region).
_OFFSET = 100.0
_ORIGIN = (5, 3, 7)
_CROPPED = (12, 14, 10)
_TEMPLATE = tuple(o + c + 3 for o, c in zip(_ORIGIN, _CROPPED))
_BLOCK = 4


def _coordinate_subject(tmp_path) -> decoded_subjects.Subject:
  """A decoded subject whose channel k is its voxels' template axis k."""
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in _CROPPED],
                              indexing="ij"), axis=-1)
  image = (grid + np.array(_ORIGIN) + _OFFSET).astype(np.float32)
  label = np.zeros(_CROPPED, np.uint8)
  for name, array in zip(decoded_subjects._DECODED_FILES,
                         (image, label, np.flatnonzero(label))):
    np.save(tmp_path / f"{name}.npy", array)
  return decoded_subjects.Subject(0, 1, str(tmp_path), _ORIGIN)


def _flat_block(coordinates: np.ndarray) -> np.ndarray:
  """The baseline's block of template voxels (..., 3), C order."""
  grid = template_position.block_grid(_TEMPLATE, _BLOCK)
  blocks = np.floor(coordinates + 0.5).astype(int) // _BLOCK
  return np.ravel_multi_index(np.moveaxis(blocks, -1, 0), grid)


def test_basic_recipe_flips_map_voxels_to_their_mirrored_blocks(tmp_path):
  subject = _coordinate_subject(tmp_path)
  options = {"flip": True, "intensity_scale": 0.0, "intensity_shift": 0.0,
             "noise_prob": 0.0}
  sampler = input_pipeline.PatchSampler((8, 8, 8), options)
  flipped_axes = set()
  for seed in range(12):
    patch = sampler.random_map(input_pipeline.PatchRequest(subject, False),
                               np.random.default_rng(seed))
    position = patch[template_position.KEY][None]
    flipped_axes |= set(np.flatnonzero(np.diag(position[0, :, :3]) < 0))
    found = np.asarray(template_position.template_coordinates(
        jnp.asarray(position), (8, 8, 8)))[0]
    np.testing.assert_array_equal(found, patch["image"] - _OFFSET)
    blocks = np.asarray(template_position.block_indices(
        jnp.asarray(position), (8, 8, 8), _TEMPLATE, _BLOCK))[0]
    np.testing.assert_array_equal(blocks,
                                  _flat_block(patch["image"] - _OFFSET))
  # Left-right (axis 0) and the others were each flipped in some patch.
  assert flipped_axes == {0, 1, 2}


def test_2d_slices_carry_their_slice_in_template_space(tmp_path):
  subject = _coordinate_subject(tmp_path)
  sampler = input_pipeline.PatchSampler((14, 10), None, slice_axis=0)
  patch = sampler.random_map(input_pipeline.PatchRequest(subject, False),
                             np.random.default_rng(4))
  position = jnp.asarray(patch[template_position.KEY][None])
  assert position.shape == (1, 3, 3)
  found = np.asarray(template_position.template_coordinates(position,
                                                            (14, 10)))[0]
  np.testing.assert_array_equal(found, patch["image"] - _OFFSET)


def test_patch_overhanging_the_template_gets_the_outside_index():
  position = jnp.asarray(template_position.cut_position(
      (0, 0, 0), (-2, 0, 0), 3, 2))[None]
  blocks = np.asarray(template_position.block_indices(
      position, (4, 4, 4), (8, 8, 8), 4))[0]
  outside = int(np.prod(template_position.block_grid((8, 8, 8), 4)))
  assert (blocks[:2] == outside).all() and (blocks[2:] < outside).all()


def _nnunet_recipe():
  """Rotation, scaling and mirroring always; no intensity transform."""
  config = joint.get_config("demo")
  config.data.patch_size = (16, 16, 16)
  config.data.augment.recipe = "nnunet"
  off = {name: 0.0 for name in (
      "noise_prob", "blur_prob", "brightness_prob", "contrast_prob",
      "low_res_prob", "gamma_inverted_prob", "gamma_prob")}
  config.data.augment.nnunet.update(rotation_prob=1.0, scaling_prob=1.0,
                                    mirror_axes=(0, 1, 2), **off)
  return augmentation.recipe_from_config(config)


def _nnunet_batch(recipe, label_axis: int, batch: int = 4):
  """Cuts at random template origins, encoding their coordinates.

  The label marks the odd template blocks along `label_axis`.
  """
  rng = np.random.default_rng(label_axis)
  starts = rng.integers(0, 40, size=(batch, 3))
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in recipe.input_size],
                              indexing="ij"), axis=-1)
  coordinates = grid[None] + starts[:, None, None, None]
  return {
      "image": jnp.asarray(coordinates + _OFFSET, jnp.float32),
      "label": jnp.asarray(
          (coordinates[..., label_axis] // _BLOCK) % 2, jnp.int32),
      "hand_function": jnp.zeros(batch, jnp.int32),
      template_position.KEY: jnp.asarray(np.stack([
          template_position.cut_position((0, 0, 0), s, 3, 2)
          for s in starts])),
  }, starts


@pytest.mark.parametrize("label_axis", [0, 1, 2])
def test_nnunet_resampling_keeps_image_label_and_position_together(
    label_axis):
  recipe = _nnunet_recipe()
  batch, starts = _nnunet_batch(recipe, label_axis)
  augment = jax.jit(lambda b, step: augmentation.augment_batch(
      b, augmentation.step_key(0, step), recipe))
  determinants = []
  for step in range(3):
    out = augment(batch, step)
    position = out[template_position.KEY]
    linear = np.asarray(position[:, :, :3])
    determinants.extend(np.linalg.det(linear))
    found = np.asarray(template_position.template_coordinates(
        position, recipe.patch_size))
    # Where all interpolation corners lie inside the cut, the linearly
    # interpolated coordinate image is the coordinate itself.
    in_cut = found - starts[:, None, None, None]
    inside = np.all((in_cut >= 0) & (in_cut <= np.array(
        recipe.input_size) - 1), axis=-1)
    assert inside.mean() > 0.8
    warped = np.asarray(out["image"]) - _OFFSET
    np.testing.assert_allclose(warped[inside], found[inside], atol=2e-3)
    # The block each voxel is read into: the encoded one, but for voxels
    # within interpolation error of a voxel boundary.
    fraction = found + 0.5 - np.floor(found + 0.5)
    clear = inside & np.all(np.minimum(fraction, 1 - fraction) > 5e-3,
                            axis=-1)
    blocks = np.asarray(template_position.block_indices(
        position, recipe.patch_size, (80, 80, 80), _BLOCK))
    grid = template_position.block_grid((80, 80, 80), _BLOCK)
    expected = np.ravel_multi_index(tuple(
        (np.floor(warped[clear] + 0.5).astype(int) // _BLOCK).T), grid)
    np.testing.assert_array_equal(blocks[clear], expected)
    # The label path (thresholded linear) switches exactly at the voxel
    # boundary, so the label agrees with the position's block exactly.
    axis_clear = inside & (np.minimum(fraction, 1 - fraction)[..., label_axis]
                           > 1e-4)
    block_along = np.floor(found[..., label_axis] + 0.5).astype(int) // _BLOCK
    np.testing.assert_array_equal(np.asarray(out["label"])[axis_clear],
                                  (block_along % 2)[axis_clear])
  # Some patches were mirrored (an odd number of flips), some not.
  assert min(determinants) < 0 < max(determinants)
