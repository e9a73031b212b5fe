"""Features of lesion masks for the hand-function baseline.

All masks lie in one common grid (template space, MNI152 RAS millimetres).
Two feature sets come out of each mask:

  * "matrix": the flat mask (the poster's "matrix form"), block-averaged and
    filtered later, inside the cross-validated model (`block_features`);
  * "lesion_load": the lesion volume (mm^3) of the whole mask and of each
    anatomical region of `regions`.

Predicted masks must be cross-fitted: each subject's mask comes from the
training run whose test fold held it, so no network saw the subject.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import sparse

from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import regions

# How `pvl_jax.evaluation.evaluate_run.save_predictions` names the masks.
PRED_SUFFIX = "_pred.nii.gz"
LESION_LOAD_NAMES = ("total",) + regions.REGIONS


@dataclasses.dataclass(frozen=True)
class Grid:
  """The voxel grid every mask must lie in (that of the first mask read)."""
  shape: tuple[int, ...]
  affine: np.ndarray
  path: Path


class FeatureExtractor:
  """Computes both feature sets' inputs of masks that share one grid."""

  def __init__(self, grid: Grid):
    masks = regions.region_masks(grid.shape, grid.affine)
    # (voxels, regions) indicator matrix: one product gives every volume.
    self._regions = sparse.csc_matrix(np.stack(
        [np.ones(int(np.prod(grid.shape)), bool)]
        + [masks[name] for name in regions.REGIONS], axis=1))
    self._voxel_mm3 = abs(np.linalg.det(grid.affine[:3, :3]))

  def __call__(self, mask: np.ndarray) -> dict[str, Any]:
    """Feature set name -> features of one bool mask.

    Returns:
      matrix: the flat mask as a sparse (1, voxels) row; lesion_load: the
      volume in mm^3 per `LESION_LOAD_NAMES`.
    """
    flat = sparse.csr_matrix(mask.reshape(1, -1), dtype=np.float32)
    volumes = (flat @ self._regions).toarray()[0] * self._voxel_mm3
    return {"matrix": flat, "lesion_load": volumes}


def load_features(paths: Sequence[Path], grid: Grid | None
                  ) -> tuple[dict[str, Any], Grid]:
  """Reads masks one at a time (a cohort of them need not fit in memory).

  Args:
    paths: binary mask files, one per subject.
    grid: the grid they must lie in; None: that of the first mask.

  Returns:
    (feature set name -> (subjects, features) array, sparse for "matrix"
    (flat masks), the grid).

  Raises:
    InputError: a mask is unreadable, not binary or in another grid.
  """
  if grid is None:
    data, affine = nifti.load_volume(paths[0], kind="mask")
    grid = Grid(data.shape, affine, Path(paths[0]))
  extract = FeatureExtractor(grid)
  return stack_features([
      extract(nifti.load_mask(path, reference_shape=grid.shape,
                                 reference_affine=grid.affine,
                                 reference_path=grid.path))
      for path in paths]), grid


def stack_features(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """`FeatureExtractor` outputs -> feature set name -> (subjects, features)."""
  return {"matrix": sparse.vstack([row["matrix"] for row in rows],
                                  format="csr"),
          "lesion_load": np.stack([row["lesion_load"] for row in rows])}


def collect_predictions(run_dirs: Sequence[str | os.PathLike],
                        subject_ids: Sequence[str]) -> dict[str, Path]:
  """Finds each subject's cross-fitted predicted mask among training runs.

  Args:
    run_dirs: training run workdirs (holding predictions/), or predictions
      folders themselves; together one per test fold.
    subject_ids: every subject of the cohort.

  Returns:
    Subject id -> its `<subject>_pred.nii.gz`.

  Raises:
    InputError: a folder holds no predictions, a prediction names a subject
      outside the cohort, or a subject has no prediction or several.
  """
  found: dict[str, list[Path]] = {}
  for run_dir in map(Path, run_dirs):
    folder = run_dir / "predictions"
    if not folder.is_dir():
      folder = run_dir
    files = sorted(folder.glob(f"sub-*{PRED_SUFFIX}"))
    if not files:
      raise InputError(f"{run_dir}: no predicted masks (expected "
                       f"predictions/sub-XXX{PRED_SUFFIX})")
    for path in files:
      found.setdefault(path.name[:-len(PRED_SUFFIX)], []).append(path)
  unknown = sorted(set(found) - set(subject_ids))
  if unknown:
    raise InputError(f"{found[unknown[0]][0]}: subject {unknown[0]} is not in "
                     f"participants.tsv ({len(unknown)} unknown subject(s): "
                     f"{', '.join(unknown)})")
  twice = [f"{s} ({', '.join(map(str, found[s]))})" for s in subject_ids
           if len(found.get(s, ())) > 1]
  if twice:
    raise InputError(f"{run_dirs[0]}: subjects predicted more than once (the "
                     "runs' test folds overlap; pass one run per fold): "
                     f"{'; '.join(twice)}")
  missing = [s for s in subject_ids if s not in found]
  if missing:
    raise InputError(f"{run_dirs[0]}: no predicted mask for {len(missing)} "
                     f"subject(s) (the runs must cover every test fold): "
                     f"{', '.join(missing)}")
  return {s: found[s][0] for s in subject_ids}
