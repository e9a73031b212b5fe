"""Lesions in periventricular white matter, and the hand-function label model.

Steps 3 and 5 of the model (see the package docstring). The motor ROI is two
ellipsoids of posterior periventricular white matter beside the
corticospinal tract; the lesion volume inside it drives the label.
"""

import numpy as np
from scipy import ndimage

from preprocessing.synthetic.anatomy import Anatomy
from preprocessing.synthetic.anatomy import Template
from preprocessing.synthetic.params import CohortParams

MOTOR_ROI_RADII_MM = (10.0, 16.0, 12.0)


def motor_roi(template: Template,
              centres_mm: tuple[tuple[float, float, float], ...] = (
                  CohortParams.label_roi_centres_mm)) -> np.ndarray:
  """The label's ROI (boolean, template grid): its ellipsoids, in the brain.

  The motor ROI unless `centres_mm` (`CohortParams.label_roi_centres_mm`)
  moves it.
  """
  roi = np.zeros(template.brain.shape, bool)
  for centre in centres_mm:
    roi |= (((template.mm - centre) / MOTOR_ROI_RADII_MM) ** 2).sum(-1) < 1
  return roi & template.brain


def place_lesions(rng: np.random.Generator, params: CohortParams,
                  template: Template, anatomy: Anatomy
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Draws the lesions; returns (mask, per-voxel lesion intensity).

  Args:
    rng: the subject's stream.
    params: the cohort's parameters.
    template: the template the anatomy was deformed from.
    anatomy: the subject's anatomy.

  Returns:
    (boolean lesion mask, float32 FLAIR intensity of each lesion voxel, 0
    elsewhere).
  """
  wm, brain, ventricles = anatomy.wm, anatomy.brain, anatomy.ventricles
  shape = brain.shape
  band = ((anatomy.wall_mm >= params.band_mm[0])
          & (anatomy.wall_mm <= params.band_mm[1])
          & (wm > 0.5) & brain & ~ventricles)
  candidates = np.flatnonzero(band)
  lesion = np.zeros(shape, bool)
  intensity = np.zeros(shape, np.float32)
  if rng.random() < params.lesion_free_fraction or candidates.size == 0:
    return lesion, intensity
  # Frontal horns always attract lesions; posterior involvement (trigones,
  # bodies beside the corticospinal tract) and the motor ROI itself vary a
  # lot between subjects, which is what makes hand function vary.
  y = template.mm[..., 1].reshape(-1)[candidates]
  in_motor = motor_roi(template, params.label_roi_centres_mm).reshape(-1)[
      candidates]
  posterior = rng.uniform(0.0, 3.0)
  affinity = (rng.uniform(*params.motor_affinity)
              if rng.random() < params.motor_involvement else 0.0)
  weights = 1.0 + 1.0 * (y > 5) + posterior * (y < -5) + affinity * in_motor
  weights /= weights.sum()
  count = max(1, rng.poisson(rng.uniform(*params.mean_lesions)))
  vox_mm = float(params.resolution_mm)
  for _ in range(count):
    centre = np.array(np.unravel_index(rng.choice(candidates, p=weights),
                                       shape))
    size_class = rng.choice(3, p=params.size_class_probs)
    if not lesion.any():
      # The subject's first lesion is medium or large: PVL is diagnosed on a
      # visible lesion, and at 2 mm a small one is a voxel or two.
      size_class = max(size_class, 1)
    radius = params.lesion_radius_mm[size_class] * rng.uniform(0.7, 1.3)
    # Large lesions are confluent: several blobs along a short random walk.
    pieces = 1 if size_class < 2 else rng.integers(2, 5)
    value = rng.uniform(*params.lesion_intensity)
    for _ in range(pieces):
      box, blob = _ellipsoid_blob(rng, centre, radius / vox_mm, shape)
      blob &= ~ventricles[box] & brain[box]
      lesion[box] |= blob
      intensity[box] = np.where(blob, value, intensity[box])
      step = rng.normal(0, radius / vox_mm, 3)
      centre = np.clip(np.round(centre + step).astype(int), 0,
                       np.array(shape) - 1)
  return lesion, intensity


def label_probability(motor_ml: np.ndarray, params: CohortParams
                      ) -> np.ndarray:
  """P(bad hand function | motor-ROI lesion volume) under the label model."""
  logit = params.label_slope * (np.log(np.asarray(motor_ml) + 0.01)
                                - np.log(params.label_threshold_ml))
  return 1.0 / (1.0 + np.exp(-logit))


def _ellipsoid_blob(rng: np.random.Generator, centre_vox: np.ndarray,
                    radius_vox: float, shape: tuple[int, ...]
                    ) -> tuple[tuple[slice, ...], np.ndarray]:
  """A randomly oriented, noise-perturbed ellipsoid around a voxel.

  Returns:
    (slices of the bounding box in the volume, boolean blob in that box).
  """
  radii = radius_vox * rng.uniform(0.6, 1.4, 3)
  extent = int(np.ceil(radii.max() * 1.5)) + 1
  lo = np.maximum(centre_vox - extent, 0)
  hi = np.minimum(centre_vox + extent + 1, shape)
  box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
  offsets = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in
                                   zip(lo, hi, centre_vox)], indexing="ij"),
                     -1).astype(np.float32)
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  local = offsets @ rotation
  distance = np.sqrt(((local / radii) ** 2).sum(-1))
  wobble = ndimage.gaussian_filter(rng.normal(size=distance.shape), 1.0)
  return box, distance + 0.35 * wobble / (wobble.std() + 1e-6) < 1.0
