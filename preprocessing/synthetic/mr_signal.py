"""The MR signal model both spaces share: a smooth bias field, Rician noise."""

import numpy as np


def bias_field(noise: np.ndarray, strength: float) -> np.ndarray:
  """The multiplicative field exp(2 * strength * noise) of smooth noise."""
  return np.exp(strength * noise * 2)


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float
           ) -> np.ndarray:
  """The magnitude of `image` plus complex Gaussian noise of std `sigma`."""
  return np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2
                 + rng.normal(0, sigma, image.shape) ** 2)
