"""nnU-Net's augmentation on the device: transforms against numpy/scipy.

The golden numbers marked "nnU-Net 2.8.1" were computed with nnunetv2 2.8.1
and batchgeneratorsv2 0.3.6 (PyPI) in a scratch environment; the transforms
themselves are checked against independent numpy/scipy references here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from configs import joint
from preprocessing import lesion_labels
from preprocessing.io.errors import InputError
from pvl_jax.training import augmentation
from pvl_jax.training import augmentation_geometry as geometry
from pvl_jax.training import augmentation_intensity as intensity
from pvl_jax.training import augmentation_spatial as spatial
from pvl_jax.training import config_validation

_PROBS = ("rotation_prob", "scaling_prob", "noise_prob", "blur_prob",
          "brightness_prob", "contrast_prob", "low_res_prob",
          "gamma_inverted_prob", "gamma_prob")


def _config(patch=(16, 16, 16), **settings):
  config = joint.get_config("demo")
  config.data.patch_size = patch
  config.data.augment.recipe = "nnunet"
  config.data.augment.nnunet.update(settings)
  return config


def _volume(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("patch,degrees,expected", [
    # nnU-Net 2.8.1's get_patch_size(patch, rot, rot, rot, (0.85, 1.25)).
    ((32, 32, 32), 30, (51, 51, 51)),
    ((128, 128, 128), 30, (205, 205, 205)),
    ((40, 160, 160), 180, (188, 188, 188)),
    ((160, 160), 180, (188, 188)),
    ((100, 160), 15, (162, 188)),
])
def test_initial_patch_size_is_nnunets(patch, degrees, expected):
  np.testing.assert_array_equal(
      geometry.initial_patch_size(patch, np.radians(degrees)), expected)


@pytest.mark.parametrize("patch,expected", [
    ((32, 32, 32), (52, 52, 52)),  # 51, grown to an even margin
    ((40, 160, 160), (40, 188, 188)),  # slices along axis 0, not enlarged
    ((160, 160), (188, 188)),
    ((100, 160), (162, 188)),  # 2D, 1.6 times longer: 15 degrees
])
def test_input_patch_size_follows_nnunets_rules(patch, expected):
  assert geometry.input_patch_size(_config(patch).data) == expected
  off = _config(patch, rotation_prob=0.0, scaling_prob=0.0)
  assert geometry.input_patch_size(off.data) == patch
  basic = _config(patch)
  basic.data.augment.recipe = "basic"
  assert geometry.input_patch_size(basic.data) == patch


def test_rotation_rule_and_slice_axis():
  assert geometry.slice_axis((128, 128, 128)) is None
  assert geometry.slice_axis((160, 40, 160)) == 1
  assert geometry.default_rotation_deg((128, 128, 128)) == 30
  assert geometry.default_rotation_deg((160, 40, 160)) == 180
  assert geometry.default_rotation_deg((100, 160)) == 15
  assert geometry.default_rotation_deg((160, 160)) == 180


def test_affine_matrix_is_rotation_times_scale():
  angles = np.array([0.3, -0.2, 0.5])
  matrix = spatial.affine_matrix(jnp.asarray(angles), jnp.float32(1.2), 3,
                                 None)
  # batchgeneratorsv2's Rz @ Ry @ Rx: extrinsic x, y, z rotations.
  expected = Rotation.from_euler("xyz", angles).as_matrix() * 1.2
  np.testing.assert_allclose(matrix, expected, atol=1e-6)
  # Slice by slice along axis 1: the plane of axes 0 and 2 only.
  plane = spatial.affine_matrix(jnp.array([0.4]), jnp.float32(0.8), 3, 1)
  c, s = np.cos(0.4) * 0.8, np.sin(0.4) * 0.8
  np.testing.assert_allclose(plane, [[c, 0, -s], [0, 1, 0], [s, 0, c]],
                             atol=1e-6)


def _scipy_warp(volume, matrix, out_shape):
  """scipy's affine_transform about the centres, zeros outside."""
  in_centre = (np.array(volume.shape) - 1) / 2
  out_centre = (np.array(out_shape) - 1) / 2
  return ndimage.affine_transform(
      volume, matrix, offset=in_centre - matrix @ out_centre,
      output_shape=out_shape, order=1, mode="grid-constant", cval=0.0)


@pytest.mark.parametrize("angles,scale", [((0.3, -0.2, 0.5), 1.1),
                                          ((0.0, 0.0, 1.2), 0.7)])
def test_warp_matches_scipy(angles, scale):
  image = _volume((22, 24, 20, 2))
  label = (np.random.default_rng(1).random((22, 24, 20)) > 0.6).astype(
      np.int32)
  label[image[..., 0] > 1.5] = 2
  matrix = np.asarray(spatial.affine_matrix(jnp.asarray(angles),
                                            jnp.float32(scale), 3, None))
  out_image, out_label = spatial.warp(jnp.asarray(image), jnp.asarray(label),
                                      jnp.asarray(matrix), (16, 18, 14),
                                      (1, 2))
  for c in range(2):
    np.testing.assert_allclose(out_image[..., c],
                               _scipy_warp(image[..., c], matrix,
                                           (16, 18, 14)), atol=2e-5)
  # Thresholded linear: the label with the largest interpolated indicator,
  # outside the input a padding label that ends as background.
  scores = np.stack([_scipy_warp((label == v).astype(float), matrix,
                                 (16, 18, 14)) for v in (0, 1, 2)])
  scores = np.concatenate([1 - scores.sum(0, keepdims=True), scores])
  expected = np.array([0, 0, 1, 2])[np.argmax(scores, 0)]
  # Only where two scores tie within float32 rounding may they differ.
  top2 = np.sort(scores, 0)[-2:]
  clear = top2[1] - top2[0] > 1e-5
  np.testing.assert_array_equal(np.asarray(out_label)[clear],
                                expected[clear])
  assert clear.mean() > 0.99 and set(np.unique(out_label)) == {0, 1, 2}


def test_identity_and_mirror_are_exact_crops_and_flips():
  image = _volume((20, 22, 24, 1))
  label = (image[..., 0] > 0.5).astype(np.int32)
  crop = (slice(2, 18), slice(3, 19), slice(4, 20))
  out_image, out_label = spatial.warp(jnp.asarray(image), jnp.asarray(label),
                                      jnp.eye(3), (16, 16, 16), (1,))
  np.testing.assert_array_equal(out_image, image[crop])
  np.testing.assert_array_equal(out_label, label[crop])
  flips = jnp.diag(jnp.array([-1.0, 1.0, -1.0]))
  out_image, out_label = spatial.warp(jnp.asarray(image), jnp.asarray(label),
                                      flips, (16, 16, 16), (1,))
  np.testing.assert_array_equal(out_image, np.flip(image[crop], (0, 2)))
  np.testing.assert_array_equal(out_label, np.flip(label[crop], (0, 2)))


def test_blur_kernel_sizes_are_nnunets():
  # nnU-Net 2.8.1: _compute_kernel_size(sigma, truncate=6).
  for sigma, size in ((0.0, 1), (0.4, 3), (0.5, 3), (0.6, 5), (0.75, 5),
                      (1.0, 7), (1.25, 9), (2.0, 13)):
    assert int(intensity.blur_kernel_size(sigma)) == size
    assert int(intensity.blur_kernel_size(jnp.float32(sigma))) == size


def test_gaussian_blur_matches_scipy():
  image = _volume((14, 16, 18, 2))
  sigmas = np.array([[0.6, 0.8, 1.0], [0.5, 0.0, 0.75]], np.float32)
  out = intensity.gaussian_blur(jnp.asarray(image), jnp.asarray(sigmas), 3)
  for c in range(2):
    expected = image[..., c].astype(np.float64)
    for axis, sigma in enumerate(sigmas[c]):
      half = (int(intensity.blur_kernel_size(float(sigma))) - 1) // 2
      if half:  # torch's "reflect" is scipy's "mirror"
        expected = ndimage.gaussian_filter1d(expected, sigma, axis=axis,
                                             mode="mirror", radius=half)
    np.testing.assert_allclose(out[..., c], expected, atol=1e-5)
  np.testing.assert_array_equal(
      intensity.gaussian_blur(jnp.asarray(image), jnp.zeros((2, 3)), 3),
      image)


def _low_resolution_reference(line, scale):
  """torch's nearest-exact down, linear up (align_corners=False), in numpy."""
  n = line.shape[0]
  low = max(round(n * scale), 1)
  down = line[np.minimum(np.floor((np.arange(low) + 0.5) * n / low),
                         n - 1).astype(int)]
  centres = (np.arange(n) + 0.5) * low / n - 0.5
  return np.interp(centres, np.arange(low), down)


def test_low_resolution_matches_numpy():
  image = _volume((12, 20, 16, 2))
  scales = np.array([[0.63, 0.63, 1.0], [0.5, 0.8, 0.55]], np.float32)
  out = intensity.low_resolution(jnp.asarray(image), jnp.asarray(scales))
  for c in range(2):
    expected = image[..., c].astype(np.float64)
    for axis in range(3):
      expected = np.apply_along_axis(_low_resolution_reference, axis,
                                     expected, scales[c, axis])
    np.testing.assert_allclose(out[..., c], expected, atol=1e-5)
  np.testing.assert_array_equal(
      intensity.low_resolution(jnp.asarray(image), jnp.ones((2, 3))), image)


def test_contrast_and_gamma_match_numpy():
  image = _volume((10, 12, 14, 2))
  x = image[..., 0].astype(np.float64)
  out = intensity.contrast(jnp.asarray(image), jnp.array([1.2, 0.8]))
  np.testing.assert_allclose(
      out[..., 0], np.clip((x - x.mean()) * 1.2 + x.mean(), x.min(), x.max()),
      atol=1e-5)
  for invert, g in ((False, 1.3), (True, 0.8)):
    out = intensity.gamma(jnp.asarray(image), jnp.array([g, g]), invert)
    y = -x if invert else x
    z = ((y - y.min()) / (y.max() - y.min())) ** g * (y.max() - y.min()) + (
        y.min())
    z = (z - z.mean()) / z.std(ddof=1) * y.std(ddof=1) + y.mean()
    np.testing.assert_allclose(out[..., 0], -z if invert else z, atol=1e-5)
  for identity in (intensity.contrast(jnp.asarray(image), jnp.ones(2)),
                   intensity.gamma(jnp.asarray(image), jnp.ones(2), False)):
    np.testing.assert_allclose(identity, image, atol=1e-5)


def _identity_recipe(patch=(16, 16, 16), **settings):
  """Every probability 0 and no mirroring, but for `settings`."""
  zeros = {name: 0.0 for name in _PROBS}
  config = _config(patch, **{**zeros, "mirror_axes": (), **settings})
  return augmentation.recipe_from_config(config)


def _batch(recipe, seed=0, batch=2, shape=None):
  image = _volume((batch, *(shape or recipe.input_size), 1), seed)
  return {"image": jnp.asarray(image),
          "label": jnp.asarray((image[..., 0] > 1).astype(np.int32)),
          "hand_function": jnp.zeros(batch, jnp.int32)}


def test_all_probabilities_zero_give_the_centre_crop():
  recipe = _identity_recipe()
  batch = _batch(recipe, shape=(20, 20, 20))
  out = jax.jit(lambda b: augmentation.augment_batch(
      b, jax.random.key(3), recipe))(batch)
  np.testing.assert_array_equal(out["image"], batch["image"][:, 2:18, 2:18,
                                                            2:18])
  np.testing.assert_array_equal(out["label"], batch["label"][:, 2:18, 2:18,
                                                            2:18])


def test_each_intensity_transform_in_the_pipeline():
  recipe = _identity_recipe()
  image = _volume((16, 16, 16, 1))
  params = augmentation.sample_params(jax.random.key(0), recipe, 1)
  apply = jax.jit(lambda p: augmentation.apply(
      p, jnp.asarray(image), jnp.zeros((16,) * 3, jnp.int32), recipe)[0])

  def run(**changes):
    return np.asarray(apply({**params, **changes}))

  np.testing.assert_array_equal(run(), image)
  np.testing.assert_allclose(run(brightness=jnp.array([1.2])), image * 1.2,
                             rtol=1e-6)
  noise = np.asarray(params["noise"])
  np.testing.assert_allclose(run(noise_std=jnp.float32(0.05)),
                             image + 0.05 * noise, atol=1e-6)
  np.testing.assert_allclose(
      run(contrast_on=jnp.bool_(True), contrast=jnp.array([1.2])),
      intensity.contrast(jnp.asarray(image), jnp.array([1.2])), atol=1e-6)
  np.testing.assert_array_equal(run(blur_sigmas=jnp.full((1, 3), 0.9)),
                                image)  # drawn but not switched on


def test_background_outside_the_brain_stays_zero():
  # nnU-Net's MaskImageTransform: noise, brightness, contrast and gamma
  # change the brain, never the zeroed background.
  recipe = _identity_recipe(noise_prob=1.0, brightness_prob=1.0,
                            contrast_prob=1.0, gamma_prob=1.0)
  # Without a spatial transform the host cuts the patch itself (16^3).
  image = np.zeros((2, *recipe.input_size, 1), np.float32)
  image[:, 3:13, 1:15, 3:13] = _volume((2, 10, 14, 10, 1)) + 3.0
  batch = {"image": jnp.asarray(image),
           "label": jnp.zeros(image.shape[:-1], jnp.int32),
           "hand_function": jnp.zeros(2, jnp.int32)}
  out = np.asarray(jax.jit(lambda b: augmentation.augment_batch(
      b, jax.random.key(5), recipe))(batch)["image"][..., 0])
  brain = np.zeros(out.shape, bool)
  brain[:, 3:13, 1:15, 3:13] = True
  assert np.all(out[~brain] == 0)
  assert np.all(out[brain] != 0)


def test_image_equal_to_its_label_stays_equal_under_spatial_transforms():
  recipe = _identity_recipe(rotation_prob=1.0, scaling_prob=1.0,
                            mirror_axes=(0, 1, 2))
  label = np.zeros((4, *recipe.input_size), np.int32)  # 26^3
  # Away from the input's border, where the padding label competes with the
  # lesion (as in nnU-Net) while the image is padded with zeros.
  label[:, 6:20, 9:17, 8:21] = 1
  label[:, 12:15, 4:22, 12:14] = 1
  batch = {"image": jnp.asarray(label[..., None].astype(np.float32)),
           "label": jnp.asarray(label)}
  augment = jax.jit(lambda b, step: augmentation.augment_batch(
      b, augmentation.step_key(0, step), recipe))
  for step in range(3):
    out = augment(batch, step)
    image, warped = np.asarray(out["image"][..., 0]), np.asarray(out["label"])
    clear = np.abs(image - 0.5) > 1e-5
    np.testing.assert_array_equal((image > 0.5)[clear], warped[clear] == 1)
    assert clear.mean() > 0.999
    assert not np.array_equal(warped, label[:, 5:21, 5:21, 5:21])


def test_same_key_same_batch_other_step_other_batch():
  recipe = augmentation.recipe_from_config(_config(
      rotation_prob=0.5, scaling_prob=0.5, noise_prob=1.0))
  batch = _batch(recipe, batch=3)
  augment = jax.jit(augmentation.make_augment_fn(_config(
      rotation_prob=0.5, scaling_prob=0.5, noise_prob=1.0)))
  first, again = augment(batch, jnp.int32(7)), augment(batch, jnp.int32(7))
  for key in ("image", "label"):
    np.testing.assert_array_equal(first[key], again[key])
  other = augment(batch, jnp.int32(8))
  assert not np.array_equal(first["image"], other["image"])
  # Sample i draws from fold_in(key, i): not the same for every sample.
  assert not np.array_equal(first["image"][0], first["image"][1])
  assert first["image"].shape == (3, 16, 16, 16, 1)


def test_drawn_frequencies_and_factors_follow_the_settings():
  recipe = augmentation.recipe_from_config(_config())
  keys = jax.random.split(jax.random.key(0), 4000)
  params = jax.vmap(lambda k: augmentation.sample_params(k, recipe, 1))(keys)
  rotated = np.any(np.abs(np.asarray(params["matrix"]) - np.eye(3)) > 1e-6,
                   axis=(1, 2))
  # Rotation (0.2) or scaling (0.2): 1 - 0.8^2 = 0.36.
  assert abs(rotated.mean() - 0.36) < 0.03
  assert abs((np.asarray(params["noise_std"]) > 0).mean() - 0.1) < 0.02
  assert abs(np.asarray(params["blur"]).mean() - 0.1) < 0.02  # 0.2 x 0.5
  assert abs(np.asarray(params["gamma_on"]).mean() - 0.3) < 0.03
  assert abs(np.asarray(params["flips"]).mean() - 0.5) < 0.03
  factors = np.asarray(augmentation.sample_factor(
      jax.random.key(1), (4000,), (0.7, 1.5)))
  assert factors.min() >= 0.7 and factors.max() <= 1.5
  assert abs((factors < 1).mean() - 0.5) < 0.03  # BGContrast's even odds


@pytest.mark.parametrize("key,value,message", [
    ("recipe", "heavy", "data.augment.recipe: must be one of"),
    ("nnunet.rotation_prob", -0.1, "data.augment.nnunet.rotation_prob: is a "
     "probability"),
    ("nnunet.gamma_prob", 1.5, "data.augment.nnunet.gamma_prob"),
    ("nnunet.scaling_range", (1.4, 0.7), "data.augment.nnunet.scaling_range: "
     "must be (low, high) with 0 < low <= high"),
    ("nnunet.scaling_range", (0.0, 1.4), "data.augment.nnunet.scaling_range"),
    ("nnunet.rotation_max_deg", 190.0, "data.augment.nnunet.rotation_max_deg"
     ": must be in [0, 180]"),
    ("nnunet.gamma_range", (0.0, 1.5), "data.augment.nnunet.gamma_range"),
    ("nnunet.low_res_scale_range", (0.5, 1.2),
     "data.augment.nnunet.low_res_scale_range: scales must be <= 1"),
    ("nnunet.noise_std_range", (-0.1, 0.1),
     "data.augment.nnunet.noise_std_range"),
    ("nnunet.mirror_axes", (0, 3), "data.augment.nnunet.mirror_axes: axes"),
    ("basic.noise_prob", 2.0, "data.augment.basic.noise_prob"),
])
def test_out_of_domain_settings_name_the_key(key, value, message):
  config = joint.get_config("demo")
  node = config.data.augment
  *parents, leaf = key.split(".")
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(
      ")", r"\)").replace("[", r"\[").replace("]", r"\]")):
    config_validation.validate_config(config)


def test_anisotropic_patches_are_augmented_slice_by_slice():
  """A 3D patch 4x longer than thick: rotations stay within the slices."""
  recipe = _identity_recipe((4, 16, 16), rotation_prob=1.0, scaling_prob=1.0,
                            low_res_prob=1.0, low_res_channel_prob=1.0)
  # nnU-Net 2.8.1: get_patch_size((4, 16, 16), pi, pi, pi, (0.85, 1.25)) is
  # (18, 18, 18), the slice axis kept.
  assert recipe.slice_axis == 0 and recipe.input_size == (4, 18, 18)
  image = np.broadcast_to(np.arange(1, 5, dtype=np.float32)[:, None, None,
                                                            None],
                          (4, 18, 18, 1))
  batch = {"image": jnp.asarray(np.stack([image] * 2)),
           "label": jnp.zeros((2, 4, 18, 18), jnp.int32)}
  out = jax.jit(lambda b: augmentation.augment_batch(
      b, jax.random.key(5), recipe))(batch)["image"]
  # Each slice keeps its own value (up to the zeros rotated in at corners).
  for k in range(4):
    values = np.asarray(out[:, k])
    np.testing.assert_allclose(values.max(), k + 1, rtol=1e-6)
    assert values.min() >= 0


def test_2d_patches_rotate_in_plane_and_mirror_two_axes():
  recipe = augmentation.recipe_from_config(_config((16, 20)))
  assert recipe.input_size == (24, 24) and recipe.mirror_axes == (0, 1)
  batch = _batch(recipe, batch=4)
  out = jax.jit(lambda b: augmentation.augment_batch(
      b, jax.random.key(2), recipe))(batch)
  assert out["image"].shape == (4, 16, 20, 1)
  assert out["label"].shape == (4, 16, 20)


def test_ignored_voxels_are_warped_as_a_label_of_their_own():
  config = _config(**{name: 0.0 for name in _PROBS}, mirror_axes=(1,))
  config.data.ignore_label = 2
  recipe = augmentation.recipe_from_config(config)
  assert recipe.label_values == (1, lesion_labels.IGNORE)
  label = np.zeros((2, 16, 16, 16), np.int32)
  label[:, 2:6, 3:9, 4:7] = lesion_labels.IGNORE
  label[:, 9:12, 9:14, 1:5] = 1
  batch = {"image": jnp.zeros((2, 16, 16, 16, 1)), "label": jnp.asarray(label)}
  out = jax.jit(lambda b: augmentation.augment_batch(
      b, jax.random.key(0), recipe))(batch)["label"]
  for sample, warped in zip(label, np.asarray(out)):  # flipped or not
    assert any(np.array_equal(warped, np.flip(sample, axis))
               for axis in ((), 1))
