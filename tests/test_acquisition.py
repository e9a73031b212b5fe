"""Simulated acquisition: the scanner's voxel sizes and what its grid keeps."""

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing import geometry
from preprocessing.synthetic import acquisition

# A 2 mm template grid: a 48 mm ball of brain, a 12 mm ball of lesion.
_TEMPLATE_MM = 2.0
_SHAPE = (40, 40, 40)


def _subject() -> acquisition.TemplateSubject:
  affine = np.diag([_TEMPLATE_MM] * 3 + [1.0])
  affine[:3, 3] = -_TEMPLATE_MM * np.asarray(_SHAPE) / 2
  radius_mm = np.linalg.norm(
      (np.indices(_SHAPE).T - np.asarray(_SHAPE) / 2).T, axis=0) * _TEMPLATE_MM
  brain = radius_mm < 24
  lesion = np.linalg.norm((np.indices(_SHAPE).T - (24, 20, 20)).T,
                          axis=0) * _TEMPLATE_MM < 6
  return acquisition.TemplateSubject(
      images={"FLAIR": np.where(lesion, 1.0, 0.5) * brain},
      white_matter={"FLAIR": 0.5}, brain=brain, lesion=lesion, affine=affine)


@pytest.mark.parametrize("scale, expected_mm", [
    (True, (1.8, 1.8, 6.0)),  # as coarse relative to 2 mm as 0.9x0.9x3 at 1
    (False, (0.9, 0.9, 3.0)),  # the scanner's sizes, whatever the template
])
def test_native_voxel_size_follows_scale_spacings(scale, expected_mm):
  params = acquisition.AcquisitionParams(
      spacings_mm=((0.9, 0.9, 3.0),), spacing_probs=(1.0,),
      scale_spacings=scale)
  scan = acquisition.acquire(np.random.default_rng(0), _subject(),
                             (0.05, 0.05), params)
  np.testing.assert_allclose(scan.record["spacing_mm"], expected_mm)
  np.testing.assert_allclose(np.linalg.norm(scan.affine[:3, :3], axis=0),
                             expected_mm, rtol=1e-5)
  assert scan.images["FLAIR"].shape == scan.lesion.shape == tuple(
      scan.record["shape"])


def test_finer_scanner_grid_keeps_more_of_the_lesion():
  """The lesion carried back by the true pose: a finer grid loses less."""
  subject = _subject()
  template = geometry.image_from_array(
      subject.lesion.astype(np.uint8), subject.affine)
  dice = {}
  for scale in (True, False):
    params = acquisition.AcquisitionParams(
        spacings_mm=((0.9, 0.9, 3.0),), spacing_probs=(1.0,),
        scale_spacings=scale)
    scan = acquisition.acquire(np.random.default_rng(0), subject,
                               (0.05, 0.05), params)
    back = sitk.GetArrayFromImage(geometry.resample_mask(
        geometry.image_from_array(scan.lesion, scan.affine), template,
        scan.to_native)).T > 0
    dice[scale] = 2 * (back & subject.lesion).sum() / (
        back.sum() + subject.lesion.sum())
  # 6 mm slices through a 12 mm lesion versus 3 mm ones.
  assert dice[False] > 0.9
  assert dice[False] > dice[True] + 0.08
