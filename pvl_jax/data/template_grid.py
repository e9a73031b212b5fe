"""The located head's template grid, and where a volume lies in it.

The located head (`model.cls_head="located"`) reads its blocks on one
template grid. A volume lies on that grid's lattice when its grid has the
same axes and spacing and its voxel 0 is a whole template voxel, its
*origin* (`TemplateGrid.origin`): a crop of the template grid, saved on its
own grid, as preprocessing writes each subject. Training records the grid
in `model.cls_template_shape` and `model.cls_template_affine`
(`template_blocks.template_grid` chooses it), so that validation,
evaluation and prediction place each volume where training placed its
records.
"""

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import ml_collections
import numpy as np

from preprocessing.io.errors import InputError
from pvl_jax.data import records

# Millimetres: NIfTI keeps affines in float32.
_AXES_ATOL = 1e-3
# Template voxels a lattice point may be off a whole voxel.
_ORIGIN_ATOL = 1e-2


@dataclasses.dataclass(frozen=True)
class TemplateGrid:
  """A template grid: its shape and voxel-to-world affine.

  Attributes:
    shape: voxels per axis.
    affine: the 4x4 voxel-to-RAS+ affine, as nested tuples (hashable, and
      what config.json keeps).
  """
  shape: tuple[int, int, int]
  affine: tuple[tuple[float, ...], ...]

  @classmethod
  def of(cls, shape: Sequence[int], affine: Any) -> "TemplateGrid":
    """From any sequence and array-like 4x4 affine."""
    return cls(tuple(int(n) for n in shape),
               tuple(tuple(float(v) for v in row)
                     for row in np.asarray(affine, np.float64)))

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict
                  ) -> "TemplateGrid | None":
    """The run's grid; None for another head.

    None as well for located runs older than `model.cls_template_affine`:
    they trained on records of one grid, which placed each record at its
    crop start (`record_origin`).
    """
    affine = model_config.get("cls_template_affine", ())
    if model_config.get("cls_head", "patch") != "located" or not affine:
      return None
    return cls.of(model_config.cls_template_shape, affine)

  def origin(self, affine: Any) -> tuple[int, int, int] | None:
    """The template voxel of voxel 0 of a grid with `affine`.

    None when that grid is not on this one's lattice (other axes or
    spacing, or voxel 0 between template voxels).
    """
    offset = lattice_offset(affine, self.affine)
    return None if offset is None else tuple(int(o) for o in offset)

  def holds(self, origin: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether a grid of `shape` at template voxel `origin` lies inside."""
    return all(0 <= o and o + n <= t
               for o, n, t in zip(origin, shape, self.shape))

  def crop_origin(self, shape: Sequence[int], affine: Any, name: str,
                  described: str) -> tuple[int, int, int]:
    """The origin of a grid that must be a crop of this one: checked.

    Args:
      shape: the crop's voxels per axis.
      affine: its 4x4 voxel-to-world affine.
      name: the file (or subject) it is of, named first in errors.
      described: how errors name this grid, e.g. "the (99, 117, 95)
        template grid the cohort was preprocessed into".

    Raises:
      InputError: naming `name` and the problem: its axes or spacing differ
        from this grid's, its voxel 0 lies between template voxels, or it
        reaches past the grid.
    """
    origin = self.origin(affine)
    if origin is not None and self.holds(origin, shape):
      return origin
    affine = np.asarray(affine, np.float64)
    linear = np.asarray(self.affine, np.float64)[:3, :3]
    if not np.allclose(affine[:3, :3], linear, atol=_AXES_ATOL):
      problem = ("its voxel axes or spacing differ from the grid's "
                 f"(voxel sizes {_voxel_sizes(affine)} mm against "
                 f"{_voxel_sizes(self.affine)} mm, or another orientation)")
    elif origin is None:
      position = np.linalg.solve(
          linear, affine[:3, 3] - np.asarray(self.affine)[:3, 3])
      problem = ("its voxel 0 lies between template voxels, at template "
                 f"voxel ({', '.join(f'{p:.3g}' for p in position)})")
    else:
      problem = (f"its {tuple(int(n) for n in shape)} voxels from template "
                 f"voxel {origin} reach past the grid")
    raise InputError(f"{name}: not a crop of {described}: {problem}")


def _voxel_sizes(affine: Any) -> tuple[float, ...]:
  """An affine's voxel sizes in mm, rounded for messages."""
  return tuple(round(float(v), 3) for v in np.linalg.norm(
      np.asarray(affine, np.float64)[:3, :3], axis=0))


def lattice_offset(affine: Any, reference: Any) -> np.ndarray | None:
  """Voxel 0 of the grid of `affine` in voxels of `reference`'s grid.

  Returns:
    The whole-voxel offset (3,) int, or None when the two grids are not on
    one lattice.
  """
  affine = np.asarray(affine, np.float64)
  reference = np.asarray(reference, np.float64)
  linear = reference[:3, :3]
  if not np.allclose(affine[:3, :3], linear, atol=_AXES_ATOL):
    return None
  step = np.linalg.solve(linear, affine[:3, 3] - reference[:3, 3])
  if not np.allclose(step, np.round(step), atol=_ORIGIN_ATOL):
    return None
  return np.round(step).astype(np.int64)


def record_origin(record: Mapping[str, Any], grid: TemplateGrid | None
                  ) -> tuple[int, int, int]:
  """The template voxel of a record's voxel 0.

  Args:
    record: a record, or its header (`affine`: the crop's, `crop_start`).
    grid: the located head's grid; None: the grid the record was cropped
      from (its crop start there), for the heads that read no template and
      for located runs older than `model.cls_template_affine`.

  Raises:
    InputError: naming the subject: its grid is not on `grid`'s lattice (a
      scan of another template or spacing than the run's).
  """
  if grid is None:
    return tuple(int(c) for c in record["crop_start"])
  origin = grid.origin(record["affine"])
  if origin is None:
    raise InputError(
        f"{records.subject_id(record)}: its grid is not a crop of the "
        f"located head's {grid.shape} template grid (other axes, spacing or "
        "a position between template voxels); the head reads only scans "
        "brought to the run's template and spacing")
  return origin
