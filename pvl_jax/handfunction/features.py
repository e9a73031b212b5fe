"""Features of lesion masks for the hand-function baseline.

Every mask's features are computed in one grid (template space, RAS
millimetres, `cohort_grid`): the grid the cohort's masks share, or for a
`preprocessing` output, which saves each subject on its brain's crop of the
template grid, the template's own grid, each mask placed at its origin in it
(zero outside). That grid and those origins are the located head's
(`dataset.cohort_template_grid`, `template_grid.TemplateGrid`), so the
matrix form's blocks start at template voxel 0, as the head's do. Two
feature sets come out of each mask:

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
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import sparse

from preprocessing import pipeline_output
from preprocessing.io import nifti
from pvl_jax.data import dataset
from pvl_jax.data import template_grid
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import regions

# The first lesion-load columns; the regions' follow.
FIXED_LOADS = ("total", "tract")


@dataclasses.dataclass(frozen=True)
class Grid:
  """The voxel grid the masks' features are computed in.

  Attributes:
    shape: voxels per axis.
    affine: the 4x4 voxel-to-world affine.
    path: the grid as errors name it: the mask it was read from, or a
      template grid's description.
    template: None: every mask must lie exactly in this grid. Else this grid
      as the located head's `TemplateGrid`: every mask must be a crop of it,
      and is placed at its origin in it.
  """
  shape: tuple[int, ...]
  affine: np.ndarray
  path: Path | str
  template: template_grid.TemplateGrid | None = None


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


def cohort_grid(cohort_dir: str | os.PathLike, first_mask: Path) -> Grid:
  """The grid a cohort's masks are read into.

  Args:
    cohort_dir: the cohort.
    first_mask: the mask of its first subject.

  Returns:
    For a `preprocessing` output, the template grid a located run on the
    cohort reads (`dataset.cohort_template_grid`), which every mask must be
    a crop of; for any other cohort, the grid of `first_mask`, which every
    mask must share.

  Raises:
    InputError: `first_mask` (or the template a preprocessing output
      names) is unreadable.
  """
  template = dataset.cohort_template_grid(cohort_dir)
  if template is None:
    return read_grid(first_mask)
  description = Path(cohort_dir) / pipeline_output.DESCRIPTION_FILE
  return Grid(template.shape, np.asarray(template.affine),
              f"the {template.shape} template grid the cohort was "
              f"preprocessed into (the template and spacing {description} "
              "names)", template)


def _placed(path: Path, grid: Grid,
            values: Callable[[Path, np.ndarray], np.ndarray]) -> np.ndarray:
  """A mask that is a crop of `grid.template`, in that grid (0 outside).

  Raises:
    InputError: naming the file: unreadable, not a crop of the grid
      (`TemplateGrid.crop_origin`), or values `values` refuses.
  """
  data, affine = nifti.load_volume(path, kind="mask")
  origin = grid.template.crop_origin(data.shape, affine, str(path),
                                     str(grid.path))
  placed = np.zeros(grid.shape, bool)
  placed[tuple(slice(o, o + n) for o, n in zip(origin, data.shape))] = (
      values(path, data))
  return placed


def load_features(paths: Sequence[Path], grid: Grid,
                  extract: FeatureExtractor,
                  reading: cohort_reading.CohortReading | None = None
                  ) -> dict[str, Any]:
  """Reads masks one at a time (a cohort of them need not fit in memory).

  Args:
    paths: mask files, one per subject.
    grid: the grid they must lie in (for a template grid: be crops of).
    extract: the features of a mask of that grid.
    reading: how the cohort's reference masks are read (ignore label,
      threshold); None: the masks are binary (predictions).

  Returns:
    Feature set name -> (subjects, features) array, sparse for "matrix"
    (flat masks).

  Raises:
    InputError: a mask is unreadable, not binary (as `reading` allows), in
      another grid or, for a template grid, not a crop of it.
  """
  def lesion(path: Path) -> np.ndarray:
    if grid.template is not None:
      # A prediction's error must not advise flags (`nifti.mask_values`).
      return _placed(path, grid, (nifti.mask_values if reading is None
                                  else reading.lesion_values))
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
