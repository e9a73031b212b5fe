"""A template the user brings: its files, checked before any work.

Kept apart from `template` (which loads templates into SimpleITK) so that
configs and the TFDS builder can name and check a template without
SimpleITK, which the accelerator machines' images lack.
"""

import dataclasses
import os
from pathlib import Path

from preprocessing.io import nifti
from preprocessing.io.errors import InputError


@dataclasses.dataclass(frozen=True)
class TemplateFiles:
  """A template the user brings (absolute NIfTI paths, see `check_files`).

  Attributes:
    image: the skull-stripped template image (any contrast: registration
      uses mutual information).
    mask: its brain mask (0/1) on the same grid.
  """
  image: str
  mask: str


def check_files(image: str | os.PathLike, mask: str | os.PathLike,
                image_key: str = "--template",
                mask_key: str = "--template_mask") -> TemplateFiles | None:
  """Checks a user's template before any work; None when none is given.

  Args:
    image: the template image path ("" for the MNI152 default).
    mask: the brain-mask path.
    image_key: the flag or config key of `image`, named in errors.
    mask_key: the same for `mask`.

  Returns:
    The files with absolute paths, or None for the default template.

  Raises:
    InputError: a mask without an image or the reverse, a file that does
      not load, a mask that is not 0/1 or empty, or a mask on another grid
      than the image.
  """
  if not image and not mask:
    return None
  if not image or not mask:
    missing, given = ((mask_key, image_key) if image else (image_key, mask_key))
    raise InputError(f"{missing}: not set, but {given} is; a template needs "
                     "both its image and its brain mask")
  image_path, mask_path = Path(image).absolute(), Path(mask).absolute()
  data, affine = nifti.load_volume(image_path, kind="template image")
  try:
    brain = nifti.load_mask(mask_path, reference_shape=data.shape,
                            reference_affine=affine, reference_path=image_path)
  except InputError as err:
    raise InputError(f"{mask_key}: {err} (the template's brain mask must be "
                     "a 0/1 mask on the template image's grid)") from None
  if not brain.any():
    raise InputError(f"{mask_path}: the template's brain mask is empty")
  return TemplateFiles(str(image_path), str(mask_path))
