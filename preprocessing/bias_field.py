"""N4 bias-field correction, estimated on a shrunk image.

N4 on a full 1 mm head takes tens of seconds; the bias field is smooth (a few
B-spline control points across the head), so it is estimated on the scan
shrunk to about `_ESTIMATION_SPACING_MM` voxels inside the brain mask; the
field is then evaluated at about `_EVALUATION_SPACING_MM`, interpolated to the
full-resolution grid and divided out.
"""

import dataclasses

import numpy as np
import SimpleITK as sitk

from preprocessing import geometry

# Voxel size (mm) of the shrunk image N4 works on.
_ESTIMATION_SPACING_MM = 8.0
# Voxel size (mm) the estimated field is evaluated at before it is
# interpolated to the scan's grid (see `correct`).
_EVALUATION_SPACING_MM = 2.0
# N4's B-spline fitting levels (each doubles the control-point resolution)
# and iterations per level. A fourth level took the white-matter coefficient
# of variation of two synthetic 1 mm scans from 0.106 to 0.090 (0.088 with
# the true field) for 0.5 s more.
_ITERATIONS = (50, 50, 50, 50)
# N4 takes logarithms: intensities are floored at this fraction of the
# brain's median (noise or interpolation can leave zeros inside the brain).
_FLOOR_FRACTION = 1e-3


@dataclasses.dataclass(frozen=True)
class Correction:
  """The result of `correct`.

  Attributes:
    corrected: image / bias field (float32, the input's grid).
    bias_field: the estimated multiplicative field (float32, same grid).
  """
  corrected: sitk.Image
  bias_field: sitk.Image


def correct(image: sitk.Image, mask: sitk.Image) -> Correction:
  """N4-corrects `image` with the field estimated inside `mask`.

  Args:
    image: the scan (any real pixel type).
    mask: uint8 0/1 brain mask on the same grid.

  Returns:
    The corrected image and the bias field. N4 fixes the field only up to a
    constant factor, so intensities keep their scale but not their exact
    level; normalisation comes later.
  """
  image = sitk.Cast(image, sitk.sitkFloat32)
  inside = sitk.GetArrayViewFromImage(image)[
      sitk.GetArrayViewFromImage(mask) > 0]
  floor = _FLOOR_FRACTION * float(np.median(inside))
  positive = sitk.Maximum(image, floor)
  shrink = geometry.shrink_factors(image, _ESTIMATION_SPACING_MM)
  n4 = sitk.N4BiasFieldCorrectionImageFilter()
  n4.SetMaximumNumberOfIterations(list(_ITERATIONS))
  n4.Execute(sitk.Shrink(positive, shrink), sitk.Shrink(mask, shrink))
  # The field is evaluated at about `_EVALUATION_SPACING_MM` and interpolated
  # linearly to the full grid: evaluating N4's B-spline at every voxel of a
  # 1 mm head took 1.3 s, this 0.4 s, within 0.7% of it anywhere in the head.
  coarse_grid = sitk.Shrink(
      image, geometry.shrink_factors(image, _EVALUATION_SPACING_MM))
  bias = sitk.Resample(sitk.Exp(n4.GetLogBiasFieldAsImage(coarse_grid)),
                       image, sitk.Transform(), sitk.sitkLinear, 1.0,
                       sitk.sitkFloat32, useNearestNeighborExtrapolator=True)
  # sitk.Divide keeps float32 (the `/` operator, DivideReal, gives float64).
  return Correction(corrected=sitk.Divide(image, bias), bias_field=bias)
