"""The pose read off a deformable fit (`registration.least_squares_pose`)."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation
import SimpleITK as sitk

from preprocessing import registration
from preprocessing import template


@pytest.fixture(scope="module")
def brain():
  return template.load_template(2).brain_mask


def _points(brain: sitk.Image, step: int = 1) -> np.ndarray:
  """Physical centres of every `step`-th brain voxel, by ITK's mapping."""
  index = np.argwhere(sitk.GetArrayFromImage(brain) > 0)[:, ::-1]
  return np.array([brain.TransformIndexToPhysicalPoint(i.tolist())
                   for i in index[::step]])


def _images(transform: sitk.Transform, points: np.ndarray) -> np.ndarray:
  return np.array([transform.TransformPoint(p.tolist()) for p in points])


def _smooth_field(brain: sitk.Image, amplitude_mm: float, seed: int
                  ) -> sitk.DisplacementFieldTransform:
  """A smooth random displacement (non-affine) on the template's grid."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(-amplitude_mm, amplitude_mm, (4, 4, 4, 3))
  size = brain.GetSize()[::-1]
  field = np.stack([ndimage.zoom(coarse[..., c],
                                 [s / 4 for s in size], order=3)
                    for c in range(3)], axis=-1)
  image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
  image.CopyInformation(brain)
  return sitk.DisplacementFieldTransform(image)


@pytest.mark.parametrize("kind", registration.KINDS)
def test_a_rigid_or_affine_mapping_is_its_own_pose(brain, kind):
  truth = sitk.AffineTransform(3)
  truth.SetCenter((0.0, -20.0, 10.0))
  matrix = Rotation.from_euler("xyz", [8, -12, 5], degrees=True).as_matrix()
  if kind == "affine":
    matrix = matrix @ np.array([[1.08, 0.03, 0], [0, 0.95, -0.02],
                                [0.01, 0, 1.02]])
  truth.SetMatrix(matrix.ravel().tolist())
  truth.SetTranslation((4.0, -17.5, 9.0))
  pose = registration.least_squares_pose(truth, brain, kind)
  points = _points(brain, step=7)
  np.testing.assert_allclose(_images(pose, points), _images(truth, points),
                             atol=1e-4)


def test_rigid_pose_of_a_deformed_mapping_is_the_kabsch_fit(brain):
  """A rigid pose followed by a smooth warp: the pose is the least-squares
  rigid fit, as scipy's Kabsch solver finds it on the same points."""
  rigid = sitk.Euler3DTransform((0.0, -18.0, 18.0), 0.1, -0.15, 0.2,
                                (6.0, 12.0, -3.0))
  mapping = sitk.CompositeTransform([rigid, _smooth_field(brain, 3.0, 0)])
  pose = registration.least_squares_pose(mapping, brain, "rigid")
  # The reference on the pose's own sample points (every brain voxel of the
  # grid shrunk to about 4 mm), with its own index-to-point mapping.
  points = _points(sitk.BinShrink(brain, [2, 2, 2]) > 0)
  mapped = _images(mapping, points)
  rotation, _ = Rotation.align_vectors(mapped - mapped.mean(0),
                                       points - points.mean(0))
  expected = (rotation.apply(points - points.mean(0)) + mapped.mean(0))
  np.testing.assert_allclose(_images(pose, points), expected, atol=1e-3)
  # The warp moved brain points by millimetres, yet the pose stays close to
  # the rigid part: the field's own average is small but not zero.
  warp = np.linalg.norm(mapped - _images(rigid, points), axis=1).mean()
  error = np.linalg.norm(_images(pose, points) - _images(rigid, points),
                         axis=1).mean()
  assert warp > 1.0 and error < warp
