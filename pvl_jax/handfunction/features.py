"""Features of lesion masks for the hand-function baseline.

All masks lie in one common grid (template space, MNI152 RAS millimetres).
Two feature sets come out of each mask:

  * "matrix": the flat mask (the poster's "matrix form"), block-averaged and
    filtered later, inside the cross-validated model (`block_features`);
  * "lesion_load": the lesion volume (mm^3) of the whole mask, of the tract
    (the union of the tract regions) and of each region of a
    `regions.RegionSet` (built-in or a user's atlas), in the columns
    `lesion_load_names` gives.

Predicted masks must be cross-fitted (`crossfit`): each subject's mask comes
from the training run whose test split held it, so no network saw the
subject.
"""

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import sparse

from preprocessing.io import nifti
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import regions

# The first lesion-load columns; the regions' follow.
FIXED_LOADS = ("total", "tract")


@dataclasses.dataclass(frozen=True)
class Grid:
  """The voxel grid every mask must lie in (that of the first mask read)."""
  shape: tuple[int, ...]
  affine: np.ndarray
  path: Path


def lesion_load_names(region_set: regions.RegionSet) -> tuple[str, ...]:
  """The lesion-load columns: total, tract, then each region."""
  return FIXED_LOADS + region_set.names


class FeatureExtractor:
  """Computes both feature sets' inputs of masks that share one grid."""

  def __init__(self, grid: Grid, region_set: regions.RegionSet):
    # (voxels, columns) indicator matrix: one product gives every volume.
    self._regions = sparse.csc_matrix(np.stack(
        [np.ones(int(np.prod(grid.shape)), bool), region_set.tract_mask()]
        + list(region_set.masks.values()), axis=1))
    self._voxel_mm3 = abs(np.linalg.det(grid.affine[:3, :3]))

  def __call__(self, mask: np.ndarray) -> dict[str, Any]:
    """Feature set name -> features of one bool mask.

    Returns:
      matrix: the flat mask as a sparse (1, voxels) row; lesion_load: the
      volume in mm^3 per `lesion_load_names` column.
    """
    flat = sparse.csr_matrix(mask.reshape(1, -1), dtype=np.float32)
    volumes = (flat @ self._regions).toarray()[0] * self._voxel_mm3
    return {"matrix": flat, "lesion_load": volumes}


def read_grid(path: Path) -> Grid:
  """The grid of a mask file (the one every other mask must lie in)."""
  data, affine = nifti.load_volume(path, kind="mask")
  return Grid(data.shape, affine, Path(path))


def load_features(paths: Sequence[Path], grid: Grid,
                  extract: FeatureExtractor,
                  reading: cohort_reading.CohortReading | None = None
                  ) -> dict[str, Any]:
  """Reads masks one at a time (a cohort of them need not fit in memory).

  Args:
    paths: mask files, one per subject.
    grid: the grid they must lie in.
    extract: the features of a mask of that grid.
    reading: how the cohort's reference masks are read (ignore label,
      threshold); None: the masks are binary (predictions).

  Returns:
    Feature set name -> (subjects, features) array, sparse for "matrix"
    (flat masks).

  Raises:
    InputError: a mask is unreadable, not binary (as `reading` allows) or
      in another grid.
  """
  def lesion(path: Path) -> np.ndarray:
    if reading is None:  # a prediction: its error must not advise flags
      return nifti.load_mask(path, reference_shape=grid.shape,
                             reference_affine=grid.affine,
                             reference_path=grid.path)
    return reading.lesion(path, grid.shape, grid.affine, grid.path)

  return stack_features([extract(lesion(path)) for path in paths])


def stack_features(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """`FeatureExtractor` outputs -> feature set name -> (subjects, features)."""
  return {"matrix": sparse.vstack([row["matrix"] for row in rows],
                                  format="csr"),
          "lesion_load": np.stack([row["lesion_load"] for row in rows])}
