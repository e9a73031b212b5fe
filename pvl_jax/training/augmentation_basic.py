"""The "basic" augmentation recipe: drawn on the host, per patch, in numpy.

pvl_jax's augmentation before nnU-Net's recipe (`augmentation`), kept to
compare the two (`config.data.augment.recipe`): random flips per axis,
intensity scale and shift, additive Gaussian noise. The input pipeline's
worker processes run it with each element's own generator.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np


def augment_patch(image: np.ndarray, label: np.ndarray,
                  options: Mapping[str, Any], rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
  """Random flips, intensity scale/shift and Gaussian noise.

  Args:
    image: (*spatial, channels) patch.
    label: (*spatial) patch.
    options: `config.data.augment.basic` as a dict: flip (bool),
      intensity_scale, intensity_shift, noise_std, noise_prob.
    rng: the element's generator.

  Returns:
    Augmented (image, label) and the spatial axes flipped (for the patch's
    template position, `template_position.flip_position`).
  """
  flipped = []
  if options.get("flip", False):
    for axis in range(label.ndim):
      if rng.random() < 0.5:
        image, label = np.flip(image, axis), np.flip(label, axis)
        flipped.append(axis)
  scale = 1.0 + rng.uniform(-1, 1) * options.get("intensity_scale", 0.0)
  shift = rng.uniform(-1, 1) * options.get("intensity_shift", 0.0)
  image = image * scale + shift
  if rng.random() < options.get("noise_prob", 0.0):
    std = rng.uniform(0, options.get("noise_std", 0.0))
    image = image + rng.normal(0, std, image.shape).astype(np.float32)
  return image, label, tuple(flipped)
