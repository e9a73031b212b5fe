"""A subject's MR images: tissue contrast, partial volume, bias and noise.

Step 4 of the model (see the package docstring): FLAIR-like and T1w-like
clean images on the template grid, and the template-space scan that adds a
bias field and Rician noise to one of them (raw scans get theirs from
`acquisition`).
"""

import numpy as np
from scipy import ndimage

from preprocessing.synthetic import mr_signal
from preprocessing.synthetic import random_fields
from preprocessing.synthetic.anatomy import Anatomy
from preprocessing.synthetic.anatomy import Template
from preprocessing.synthetic.params import CohortParams

# T1w-like intensities: white matter brightest, CSF dark, PVL lesions dark
# (gliosis and cavitation lengthen T1). Constants, not CohortParams fields,
# which key the cached cohorts.
T1W_INTENSITY = {"csf": 0.15, "gm": 0.55, "wm": 0.8}
T1W_LESION_INTENSITY = (0.25, 0.45)


def clean_images(rng: np.random.Generator, params: CohortParams,
                 template: Template, anatomy: Anatomy, lesion: np.ndarray,
                 lesion_value: np.ndarray, modalities: tuple[str, ...]
                 ) -> dict[str, np.ndarray]:
  """The clean images (partial volume, no bias or noise) of a subject.

  Args:
    rng: the subject's stream (draws the caps' strength).
    params: the cohort's parameters.
    template: the template the anatomy was deformed from.
    anatomy: the subject's anatomy.
    lesion: boolean lesion mask.
    lesion_value: FLAIR intensity of each lesion voxel, 0 elsewhere.
    modalities: the images wanted besides FLAIR ("T1w").

  Returns:
    modality -> image on the template grid, FLAIR always.
  """
  gm, wm, brain = anatomy.gm, anatomy.wm, anatomy.brain
  lesion_fraction = np.clip(
      ndimage.gaussian_filter(lesion.astype(np.float32), 0.4), 0, 1)
  lesion_fraction = np.maximum(lesion_fraction, lesion)

  csf = np.clip(brain - gm - wm, 0, 1)
  tissue = (csf * params.csf_intensity + gm * params.gm_intensity
            + wm * params.wm_intensity)
  cap_strength = rng.uniform(*params.cap_intensity)
  frontal_or_posterior = (np.abs(template.mm[..., 1] + 15) > 18)
  cap = cap_strength * np.exp(-anatomy.wall_mm / 2.0) * np.where(
      frontal_or_posterior, 1.0, 0.5) * (~anatomy.ventricles)
  image = ((1 - lesion_fraction) * (tissue + cap)
           + lesion_fraction * lesion_value)
  image = ndimage.gaussian_filter(image * brain,
                                  params.partial_volume_sigma_vox)
  clean = {"FLAIR": image}
  if "T1w" in modalities:
    clean["T1w"] = _t1w_image(params, csf, gm, wm, lesion_fraction,
                              lesion_value, brain)
  return clean


def template_scan(rng: np.random.Generator, image: np.ndarray,
                  params: CohortParams, white_matter: float) -> np.ndarray:
  """`image` with a bias field and Rician noise drawn on its own grid."""
  bias = mr_signal.bias_field(
      random_fields.smooth_noise(rng, image.shape, 4), params.bias_strength)
  sigma = rng.uniform(*params.noise_level) * white_matter
  return mr_signal.rician(rng, image * bias, sigma)


def white_matter_intensity(modality: str, params: CohortParams) -> float:
  """The modality's white-matter intensity, which scales noise and shell."""
  return {"FLAIR": params.wm_intensity, "T1w": T1W_INTENSITY["wm"]}[modality]


def _t1w_image(params: CohortParams, csf: np.ndarray, gm: np.ndarray,
               wm: np.ndarray, lesion_fraction: np.ndarray,
               lesion_value: np.ndarray, brain: np.ndarray) -> np.ndarray:
  """The clean T1w-like image: white matter brightest, lesions dark.

  A lesion brighter on FLAIR (more gliosis and cavitation) is darker on T1w:
  its FLAIR intensity maps linearly, reversed, onto T1W_LESION_INTENSITY.
  """
  tissue = (csf * T1W_INTENSITY["csf"] + gm * T1W_INTENSITY["gm"]
            + wm * T1W_INTENSITY["wm"])
  lesion = np.interp(lesion_value, params.lesion_intensity,
                     T1W_LESION_INTENSITY[::-1])
  # The lesion fraction reaches a little past the lesion's voxels, which
  # alone carry a lesion value; there it blends with the tissue itself.
  lesion = np.where(lesion_value > 0, lesion, tissue)
  image = (1 - lesion_fraction) * tissue + lesion_fraction * lesion
  return ndimage.gaussian_filter(image * brain,
                                 params.partial_volume_sigma_vox)
