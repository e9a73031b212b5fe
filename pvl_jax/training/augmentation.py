"""nnU-Net v2's default training augmentation, on the device, in the step.

Read from nnU-Net v2.8.1 (`nnUNetTrainer.get_training_transforms`) and the
batchgeneratorsv2 0.3.6 transforms it composes (both from PyPI). Per
sample, in nnU-Net's order, each with its own probability
(`config.data.augment.nnunet`, nnU-Net's values by default):

1. spatial: rotation (p 0.2; +-30 degrees about each axis in 3D, see
   `augmentation_geometry` for 2D and anisotropic patches) and scaling
   (p 0.2, one factor in [0.7, 1.4] for all axes), resampled from the
   larger patch the host cut (`augmentation_geometry.input_patch_size`) to
   the training patch; label through the same transform
   (`augmentation_spatial`). Elastic deformation is off, as nnU-Net's
   default;
2. Gaussian noise (p 0.1; std in [0, 0.1], one for all channels);
3. Gaussian blur (p 0.2; each channel with p 0.5, sigma in [0.5, 1] per
   axis);
4. multiplicative brightness (p 0.15; factor in [0.75, 1.25] per channel);
5. contrast (p 0.15; factor in [0.75, 1.25] per channel, range kept);
6. simulated low resolution (p 0.25; each channel with p 0.5, scale in
   [0.5, 1]);
7. gamma on the inverted image (p 0.1), then gamma (p 0.3); gamma in
   [0.7, 1.5], mean and std retained;
8. mirroring: each axis of `mirror_axes` with p 0.5 (done by the
   resampling of 1, see `apply`);
9. the image set back to 0 outside the brain (nnU-Net's MaskImageTransform,
   which it applies with use_mask_for_norm, as the in-brain z-scoring here
   is): the brain is the warped nonzero region of the input patch, so the
   intensity transforms never leave a shifted background that inference
   does not see.
Factors in [a, b] around 1 are drawn as nnU-Net's `BGContrast` does: below
1 or above 1 with even odds, then uniformly on that side.

Everything is drawn from a key that is a function of `config.seed` and the
train state's step (`step_key`), per sample by its index in the global
batch, so the stream is deterministic, the same for any device count and
resumes with the step. Under `vmap` every transform is computed and kept
or discarded per sample (`jnp.where`), which costs little next to a U-Net
step and keeps the program static.
"""

from collections.abc import Callable, Sequence
import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from preprocessing import lesion_labels
from pvl_jax.data import template_position
from pvl_jax.training import augmentation_geometry as geometry
from pvl_jax.training import augmentation_intensity as intensity
from pvl_jax.training import augmentation_spatial as spatial

Batch = dict[str, jax.Array]
# Folded into the seed's key so that augmentation draws apart from any other
# use of the seed.
_STREAM = 0x41554721


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The static settings of the nnU-Net augmentation for one config.

  Attributes:
    patch_size: the training patch (the step's output).
    input_size: the patch the host cuts (the step's input).
    label_values: label values other than background (the classes and
      `lesion_labels.IGNORE` when the cohort has an ignore label), each
      warped as its own indicator.
    slice_axis: the axis a 3D patch is augmented across slice by slice.
    rotation_rad: the largest rotation.
    blur_radius: half-width of the widest blur kernel.
    mirror_axes: the spatial axes that may be flipped.
    settings: `config.data.augment.nnunet` as a dict.
  """
  patch_size: tuple[int, ...]
  input_size: tuple[int, ...]
  label_values: tuple[int, ...]
  slice_axis: int | None
  rotation_rad: float
  blur_radius: int
  mirror_axes: tuple[int, ...]
  settings: dict

  @property
  def ndim(self) -> int:
    return len(self.patch_size)


def recipe_from_config(config: ml_collections.ConfigDict) -> Recipe | None:
  """The nnU-Net recipe of a (planned) config; None for any other recipe."""
  data = config.data
  if data.augment.recipe != "nnunet":
    return None
  nnunet = data.augment.nnunet
  patch = tuple(int(p) for p in data.patch_size)
  # Ignored voxels (a cohort's ignore label) carry IGNORE in the batches and
  # are warped as a label of their own.
  ignored = ((lesion_labels.IGNORE,) if data.get("ignore_label", -1) >= 0
             else ())
  radius = (int(intensity.blur_kernel_size(
      float(nnunet.blur_sigma_range[1]))) - 1) // 2
  return Recipe(
      patch_size=patch, input_size=geometry.input_patch_size(data),
      label_values=tuple(range(1, config.model.num_classes)) + ignored,
      slice_axis=geometry.slice_axis(patch),
      rotation_rad=math.radians(geometry.rotation_deg(patch, nnunet)),
      blur_radius=max(radius, 0),
      mirror_axes=tuple(a for a in nnunet.mirror_axes if a < len(patch)),
      settings=nnunet.to_dict())


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The augmentation key of a training step (`state.step`, from 0)."""
  return jax.random.fold_in(
      jax.random.fold_in(jax.random.key(seed), _STREAM), step)


def _uniform(key: jax.Array, shape: Sequence[int], bounds) -> jax.Array:
  low, high = (float(b) for b in bounds)
  return jax.random.uniform(key, shape, minval=low, maxval=high)


def sample_factor(key: jax.Array, shape: Sequence[int], bounds) -> jax.Array:
  """batchgeneratorsv2's `BGContrast`: below or above 1 with even odds."""
  low, high = (float(b) for b in bounds)
  side, value = jax.random.split(key)
  below = (jax.random.uniform(side, shape) < 0.5) & (low < 1)
  start = jnp.where(below, low, max(low, 1.0))
  end = jnp.where(below, 1.0, high)
  return start + (end - start) * jax.random.uniform(value, shape)


def _happens(key: jax.Array, probability: float, shape=()) -> jax.Array:
  return jax.random.uniform(key, shape) < probability


def sample_params(key: jax.Array, recipe: Recipe, num_channels: int
                  ) -> dict[str, jax.Array]:
  """Draws one sample's parameters; a transform not drawn is its identity.

  Returns:
    matrix (A), noise_std and noise, blur (per channel) and blur_sigmas,
    brightness, contrast_on and contrast, low_res_scales (1 = off), and
    per gamma (`gamma_inverted`, `gamma`) its `_on` flag and exponents,
    flips.
  """
  s = recipe.settings
  keys = iter(jax.random.split(key, 24))
  channels = (num_channels,)
  angles = _uniform(next(keys), (3 if recipe.ndim == 3 and recipe.slice_axis
                                 is None else 1,),
                    (-recipe.rotation_rad, recipe.rotation_rad))
  angles = jnp.where(_happens(next(keys), s["rotation_prob"]), angles, 0.0)
  scale = jnp.where(_happens(next(keys), s["scaling_prob"]),
                    _uniform(next(keys), (), s["scaling_range"]), 1.0)
  params = {"matrix": spatial.affine_matrix(angles, scale, recipe.ndim,
                                            recipe.slice_axis)}
  params["noise_std"] = jnp.where(
      _happens(next(keys), s["noise_prob"]),
      _uniform(next(keys), (), s["noise_std_range"]), 0.0)
  params["noise"] = jax.random.normal(next(keys),
                                      (*recipe.patch_size, num_channels))
  params["blur"] = _happens(next(keys), s["blur_prob"]) & _happens(
      next(keys), s["blur_channel_prob"], channels)
  params["blur_sigmas"] = _uniform(next(keys), (num_channels, recipe.ndim),
                                   s["blur_sigma_range"])
  params["brightness"] = jnp.where(
      _happens(next(keys), s["brightness_prob"]),
      sample_factor(next(keys), channels, s["brightness_range"]), 1.0)
  params["contrast_on"] = _happens(next(keys), s["contrast_prob"])
  params["contrast"] = sample_factor(next(keys), channels,
                                     s["contrast_range"])
  low_res = _happens(next(keys), s["low_res_prob"]) & _happens(
      next(keys), s["low_res_channel_prob"], channels)
  # One scale per channel for all axes; never along the slice axis.
  scales = jnp.where(low_res, _uniform(next(keys), channels,
                                       s["low_res_scale_range"]), 1.0)
  axes_on = jnp.array([a != recipe.slice_axis for a in range(recipe.ndim)])
  params["low_res_scales"] = jnp.where(axes_on, scales[:, None], 1.0)
  for name in ("gamma_inverted", "gamma"):
    params[f"{name}_on"] = _happens(next(keys), s[f"{name}_prob"])
    params[name] = sample_factor(next(keys), channels, s["gamma_range"])
  allowed = jnp.array([a in recipe.mirror_axes for a in range(recipe.ndim)])
  params["flips"] = allowed & _happens(next(keys), 0.5, (recipe.ndim,))
  return params


def sampling_matrix(params: dict[str, jax.Array]) -> jax.Array:
  """A with the mirrored axes' columns negated: a flip reverses the grid."""
  return params["matrix"] * jnp.where(params["flips"], -1.0, 1.0)


def apply(params: dict[str, jax.Array], image: jax.Array, label: jax.Array,
          recipe: Recipe) -> tuple[jax.Array, jax.Array]:
  """Augments one sample: image (*input_size, C), label (*input_size).

  Mirroring is folded into the resampling (a flip reverses the sampling
  grid), so it costs nothing; nnU-Net flips last, after the intensity
  transforms, which all commute with a flip but for the phase of the
  simulated low-resolution grid.
  """
  # The brain: voxels the in-brain z-scoring did not set to 0 in some
  # channel (nnU-Net's nonzero mask), warped with the image as a channel of
  # its own.
  brain = jnp.any(image != 0, axis=-1, keepdims=True).astype(image.dtype)
  image, label = spatial.warp(jnp.concatenate([image, brain], axis=-1),
                              label, sampling_matrix(params),
                              recipe.patch_size, recipe.label_values)
  image, brain = image[..., :-1], image[..., -1:] > 0.5
  image = image + params["noise_std"] * params["noise"]
  image = jnp.where(params["blur"],
                    intensity.gaussian_blur(image, params["blur_sigmas"],
                                            recipe.blur_radius), image)
  image = image * params["brightness"]
  image = jnp.where(params["contrast_on"],
                    intensity.contrast(image, params["contrast"]), image)
  image = jnp.where(jnp.any(params["low_res_scales"] != 1, axis=1),
                    intensity.low_resolution(image, params["low_res_scales"]),
                    image)
  for name, invert in (("gamma_inverted", True), ("gamma", False)):
    image = jnp.where(params[f"{name}_on"],
                      intensity.gamma(image, params[name], invert), image)
  # nnU-Net's MaskImageTransform (with use_mask_for_norm, as this in-brain
  # z-scoring is): the background back to 0, as inference always sees it.
  return jnp.where(brain, image, 0.0), label


def augment_batch(batch: Batch, key: jax.Array, recipe: Recipe) -> Batch:
  """Augments a global batch; sample i draws from fold_in(key, i).

  A batch with template positions (`template_position.KEY`) gets those of
  its resampled patches.
  """
  num_channels = batch["image"].shape[-1]

  def one(index, image, label, position):
    params = sample_params(jax.random.fold_in(key, index), recipe,
                           num_channels)
    image, label = apply(params, image, label, recipe)
    if position is not None:
      position = template_position.resample_position(
          position, sampling_matrix(params), recipe.input_size,
          recipe.patch_size)
    return image, label, position

  indices = jnp.arange(batch["label"].shape[0])
  image, label, position = jax.vmap(one)(
      indices, batch["image"], batch["label"],
      batch.get(template_position.KEY))
  augmented = {**batch, "image": image, "label": label}
  if position is not None:
    augmented[template_position.KEY] = position
  return augmented


def make_augment_fn(config: ml_collections.ConfigDict
                    ) -> Callable[[Batch, jax.Array], Batch] | None:
  """augment(batch, step) for the train step; None unless recipe 'nnunet'."""
  recipe = recipe_from_config(config)
  if recipe is None:
    return None
  seed = int(config.seed)

  def augment(batch: Batch, step: jax.Array) -> Batch:
    return augment_batch(batch, step_key(seed, step), recipe)

  return augment
