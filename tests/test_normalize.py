"""Z-scoring inside the brain and bounding-box cropping."""

import numpy as np
import pytest

from preprocessing import normalize


def test_zscore_keeps_bright_lesions_and_ignores_outliers():
  rng = np.random.default_rng(0)
  image = rng.normal(100, 10, (20, 20, 20))
  mask = np.zeros(image.shape, bool)
  mask[2:18, 2:18, 2:18] = True
  image[5, 5, 5] = 1e6  # one absurd voxel
  image[8:10, 8:10, 8:10] = 200  # a bright lesion (0.2% of the brain)
  out = normalize.zscore_in_mask(image, mask)
  inside = out[mask & (image < 150)]
  assert abs(inside.mean()) < 0.1 and abs(inside.std() - 1) < 0.1
  # Not clipped: the lesion stays ~10 standard deviations above the mean.
  assert out[8, 8, 8] == pytest.approx((200 - 100) / 10, rel=0.1)
  assert np.all(out[~mask] == 0)


def test_empty_mask_is_an_error():
  with pytest.raises(ValueError, match="empty"):
    normalize.zscore_in_mask(np.ones((3, 3, 3)), np.zeros((3, 3, 3), bool))


def test_bounding_box_and_crop_affine():
  mask = np.zeros((10, 12, 8), bool)
  mask[3:5, 4:9, 2:3] = True
  start, stop = normalize.bounding_box(mask, margin=2)
  assert start == (1, 2, 0) and stop == (7, 11, 5)
  affine = np.diag([2.0, 3.0, 4.0, 1.0])
  affine[:3, 3] = [10, 20, 30]
  cropped = normalize.crop_affine(affine, start)
  np.testing.assert_allclose(cropped[:3, 3], [12, 26, 30])
