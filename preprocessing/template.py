"""The registration target and its grids: MNI152 2009c, or the user's own.

The default template is the MNI152 2009c nonlinear asymmetric T1 that nilearn
ships (skull-stripped, 1 or 2 mm), with its brain mask and white-matter map.
A user may bring another (`template_files.TemplateFiles`: an image and its
brain mask on one grid), e.g. an age-matched paediatric template for children
born preterm; registration, skull stripping and the template-space grid then
use it. All are SimpleITK images in LPS geometry (`geometry`).
"""

import dataclasses
import functools

import numpy as np
import SimpleITK as sitk

from preprocessing import geometry
from preprocessing import template_geometry
from preprocessing.io import nifti
from preprocessing.template_files import TemplateFiles

# The template's name in BIDS file names (space-, from-, to- entities).
TEMPLATE_SPACE = "MNI152NLin2009cAsym"


# eq=False: compared and hashed by identity (its images have no value
# equality), so per-template results can be cached (`registration`).
@dataclasses.dataclass(frozen=True, eq=False)
class Template:
  """The registration target and the maps propagated from it.

  Attributes:
    t1: the skull-stripped template image (float32).
    brain_mask: brain mask (uint8, 0/1) on the image's grid.
    white_matter: white-matter probability map (float32) on the same grid;
      None for a user's template (the pipeline's white-matter QC is then
      left out).
    resolution_mm: the grid's (finest) voxel size.
  """
  t1: sitk.Image
  brain_mask: sitk.Image
  white_matter: sitk.Image | None
  resolution_mm: float


@functools.lru_cache(maxsize=2)
def load_template(resolution_mm: int) -> Template:
  """Loads nilearn's MNI152 2009c template at 1 or 2 mm (cached per process).

  Args:
    resolution_mm: 1 or 2.

  Returns:
    The template images as SimpleITK images in LPS geometry.
  """
  # Imported here: nilearn takes seconds to import, and only the processes
  # that register scans need it.
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  images = {
      "t1": datasets.load_mni152_template(resolution=resolution_mm),
      "brain_mask": datasets.load_mni152_brain_mask(resolution=resolution_mm),
      "white_matter": datasets.load_mni152_wm_template(
          resolution=resolution_mm),
  }
  dtypes = {"t1": np.float32, "brain_mask": np.uint8,
            "white_matter": np.float32}
  return Template(
      resolution_mm=resolution_mm,
      **{name: geometry.image_from_array(
          np.asarray(img.get_fdata(), dtypes[name]), img.affine)
         for name, img in images.items()})


@functools.lru_cache(maxsize=2)
def load_user_template(files: TemplateFiles) -> Template:
  """The user's template (checked by `check_files`), cached per process."""
  data, affine = nifti.load_volume(files.image, kind="template image")
  brain = nifti.load_mask(files.mask)
  spacing = np.linalg.norm(affine[:3, :3], axis=0)
  return Template(
      t1=geometry.image_from_array(data, affine),
      brain_mask=geometry.image_from_array(brain.astype(np.uint8), affine),
      white_matter=None, resolution_mm=float(spacing.min()))


def registration_target(files: TemplateFiles | None,
                        default_mm: int) -> Template:
  """The user's template, else the MNI152 template at `default_mm`."""
  return (load_template(default_mm) if files is None
          else load_user_template(files))


@functools.lru_cache(maxsize=4)
def template_grid(spacing_mm: float, files: TemplateFiles | None = None
                  ) -> sitk.Image:
  """An empty uint8 image on the template's field of view at `spacing_mm`.

  The grid is `template_geometry.grid`'s (the template's first voxel centre
  and direction).

  Args:
    spacing_mm: isotropic voxel size of the grid.
    files: the user's template; None: the MNI152 template.

  Returns:
    A reference image for `sitk.Resample`.
  """
  shape, affine = template_geometry.grid(spacing_mm, files)
  return geometry.image_from_array(np.zeros(shape, np.uint8), affine)
