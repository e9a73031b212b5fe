"""The MNI152 2009c template: the registration target and its grids.

The template is the MNI152 2009c nonlinear asymmetric T1 that nilearn ships
(skull-stripped, 1 or 2 mm), with its brain mask and white-matter map, as
SimpleITK images in LPS geometry (`geometry`).
"""

import dataclasses
import functools

import numpy as np
import SimpleITK as sitk

from preprocessing import geometry

# The template's name in BIDS file names (space-, from-, to- entities).
TEMPLATE_SPACE = "MNI152NLin2009cAsym"


@dataclasses.dataclass(frozen=True)
class Template:
  """The registration target and the maps propagated from it.

  Attributes:
    t1: the skull-stripped T1 (float32).
    brain_mask: brain mask (uint8, 0/1) on the T1's grid.
    white_matter: white-matter probability map (float32) on the same grid.
    resolution_mm: the grid's voxel size (1 or 2).
  """
  t1: sitk.Image
  brain_mask: sitk.Image
  white_matter: sitk.Image
  resolution_mm: int


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
def template_grid(spacing_mm: float) -> sitk.Image:
  """An empty uint8 image on the template's field of view at `spacing_mm`.

  The grid shares the 1 mm template's first voxel centre and direction, so
  at 1 and 2 mm it is exactly nilearn's 1 and 2 mm template grid.

  Args:
    spacing_mm: isotropic voxel size of the grid.

  Returns:
    A reference image for `sitk.Resample`.
  """
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  template = datasets.load_mni152_brain_mask(resolution=1)
  extent = (np.asarray(template.shape) - 1) * template.header.get_zooms()[:3]
  size = [int(n) for n in np.floor(extent / spacing_mm + 1e-6) + 1]
  affine = template.affine @ np.diag([spacing_mm / z for z in
                                      template.header.get_zooms()[:3]] + [1])
  return geometry.image_from_array(np.zeros(size, np.uint8), affine)
