"""One synthetic subject on the template grid: anatomy, lesions, images.

Every draw comes from the subject's own stream, in a fixed order (anatomy,
lesions, contrast, the template-space scan's bias and noise, the label
draw), so that a subject is the same whatever the cohort's size, space and
modalities.
"""

import numpy as np
from scipy import ndimage

from preprocessing.synthetic import anatomy as anatomy_lib
from preprocessing.synthetic import contrast
from preprocessing.synthetic import lesions
from preprocessing.synthetic.params import CohortParams


def generate_subject(params: CohortParams, seed: np.random.SeedSequence,
                     modalities: tuple[str, ...] = ("FLAIR",)
                     ) -> dict[str, object]:
  """Generates one subject's images, lesion mask, brain mask and lesion loads.

  Args:
    params: the cohort's parameters.
    seed: this subject's seed sequence.
    modalities: the clean images wanted besides FLAIR (see
      `cohort.MODALITIES`).

  Returns:
    dict with clean (modality -> template-space image before bias field and
    noise, FLAIR always), flair (the template-space FLAIR scan: clean, bias,
    noise; float32), lesion (uint8), brain (uint8), lesion_ml, motor_ml,
    num_lesions and label_draw (uniform in [0, 1)).
  """
  rng = np.random.default_rng(seed)
  template = anatomy_lib.load_template(params.resolution_mm)
  voxel_ml = float(params.resolution_mm) ** 3 / 1000

  anatomy = anatomy_lib.deformed_anatomy(rng, params, template)
  lesion, lesion_value = lesions.place_lesions(rng, params, template,
                                               anatomy)
  clean = contrast.clean_images(rng, params, template, anatomy, lesion,
                                lesion_value, modalities)
  # Drawn in both spaces: the label draw below must not depend on the space.
  noisy = contrast.template_scan(rng, clean["FLAIR"], params,
                                 params.wm_intensity)

  brain = anatomy.brain
  lesion &= brain
  motor = lesions.motor_roi(template, params.label_roi_centres_mm)
  _, num_lesions = ndimage.label(lesion, np.ones((3, 3, 3)))
  return {
      "clean": clean,
      "flair": noisy.astype(np.float32),
      "lesion": lesion.astype(np.uint8),
      "brain": brain.astype(np.uint8),
      "lesion_ml": float(lesion.sum() * voxel_ml),
      "motor_ml": float((lesion & motor).sum() * voxel_ml),
      "num_lesions": int(num_lesions),  # 26-connected components
      # The subject's own draw for its label, so that a subject's label does
      # not depend on the cohort size.
      "label_draw": float(rng.random()),
  }
