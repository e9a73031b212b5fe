"""Intensity normalisation and brain-bounding-box cropping."""

import numpy as np

# Voxels kept around the brain's bounding box when cropping. The pipeline and
# the TFDS builder both crop with it, so the builder's crop of a pipeline
# output keeps the pipeline's.
BRAIN_CROP_MARGIN = 2


def zscore_in_mask(image: np.ndarray, mask: np.ndarray,
                   stats_percentiles: tuple[float, float] = (0.5, 99.5)
                   ) -> np.ndarray:
  """Z-scores `image` with statistics from inside `mask`, robust to outliers.

  The mean and standard deviation come from the in-mask intensities between
  the given percentiles (bright vessels or residual skull would otherwise
  inflate the standard deviation). The image itself is not clipped: lesions
  are among the brightest voxels of a FLAIR scan, and clipping would flatten
  them onto the brightest normal tissue. Voxels outside the mask are set
  to 0.

  Args:
    image: a 3D volume.
    mask: boolean brain mask of the same shape; must not be empty.
    stats_percentiles: in-mask intensities between these percentiles give
      the statistics.

  Returns:
    float32 normalised volume.
  """
  mask = mask.astype(bool)
  if not mask.any():
    raise ValueError("brain mask is empty; cannot normalise intensities")
  values = image[mask]
  lo, hi = np.percentile(values, stats_percentiles)
  inside = values[(values >= lo) & (values <= hi)]
  std = inside.std()
  out = (image - inside.mean()) / (std if std > 0 else 1.0)
  return np.where(mask, out, 0.0).astype(np.float32)


def bounding_box(mask: np.ndarray, margin: int = 0
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Start (inclusive) and stop (exclusive) indices of `mask`'s nonzero voxels.

  Args:
    mask: boolean volume with at least one nonzero voxel.
    margin: voxels added on every side, clipped to the volume.

  Returns:
    (start, stop) tuples, one entry per axis.
  """
  coords = np.argwhere(mask)
  if coords.size == 0:
    raise ValueError("mask is empty; no bounding box")
  start = np.maximum(coords.min(axis=0) - margin, 0)
  stop = np.minimum(coords.max(axis=0) + 1 + margin, mask.shape)
  return tuple(int(s) for s in start), tuple(int(s) for s in stop)


def crop_affine(affine: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
  """Affine of a crop that starts at voxel `start` of a volume with `affine`."""
  shifted = affine.copy()
  shifted[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
  return shifted
