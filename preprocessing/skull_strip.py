"""Skull stripping: the template's brain mask carried into native space.

The brain mask of the MNI152 template is resampled through the inverse of the
native -> template registration (`geometry.resample_mask`), then cleaned
up: only the largest connected component is kept and holes are filled, so
that no island outside the brain and no hole inside it comes from the
interpolation.
"""

import SimpleITK as sitk

from preprocessing import geometry
from preprocessing.template import Template


def brain_mask(image: sitk.Image, to_native: sitk.Transform,
               template: Template) -> sitk.Image:
  """The brain mask of a native scan.

  Args:
    image: the native scan (its grid is the mask's grid).
    to_native: the registration's transform (template -> native points).
    template: the template whose brain mask is propagated.

  Returns:
    uint8 0/1 mask on `image`'s grid.

  Raises:
    ValueError: the propagated mask is empty (the scan does not overlap the
      registered template brain).
  """
  # Resampling onto the native grid needs native -> template points.
  mask = geometry.resample_mask(template.brain_mask, image,
                                to_native.GetInverse())
  components = sitk.ConnectedComponent(mask)
  if sitk.GetArrayViewFromImage(components).max() == 0:
    raise ValueError("the registered template brain does not overlap the "
                     "scan (empty brain mask)")
  largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
  return sitk.Cast(sitk.BinaryFillhole(largest), sitk.sitkUInt8)
