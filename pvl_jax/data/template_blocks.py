"""The template grid and blocks of a training split, for the located head.

Everything here is read from the training split's records alone (grids,
crop origins, lesion labels, the z-scored images' brain): nothing from the
synthetic generator's hidden parameters (its regions, label model).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from preprocessing.io.errors import InputError
from pvl_jax.data import input_pipeline
from pvl_jax.data import records
from pvl_jax.data import template_position


def template_shape(sources: dict[str, Any]) -> tuple[int, int, int]:
  """The grid every record was cropped from: the template's.

  A grid is a shape and an affine: scans of one shape placed differently in
  the world (a raw-space cohort of one protocol) are not in one template.

  Raises:
    InputError: records of different original grids, so the data are not
      in one template space (e.g. a raw-space cohort without preprocessing)
      and no patch has a template position.
  """
  grids = {}
  for source in sources.values():
    for header in records.headers(source):
      grids.setdefault(_original_grid(header), records.subject_id(header))
  if len(grids) != 1:
    found = ", ".join(f"{shape} ({subject})" for (shape, _), subject
                      in list(grids.items())[:4])
    problem = (
        "model.cls_head='located' needs every scan in one template grid, but "
        f"the records come from {len(grids)} grids (shape or position in "
        f"the world): {found}; ")
    if _one_lattice([affine for _, affine in grids]):
      # What preprocessing writes: each subject on its brain's crop of the
      # template grid. Its position in the template is known in principle
      # (the crop's origin), but the located head does not read it yet.
      raise InputError(
          problem + "they are crops of one template grid, saved on their "
          "own grids (as preprocessing writes them), which the located head "
          "cannot place in the template yet (issue 25); use a cohort on the "
          "whole template grid, or model.cls_head='patch' or 'subject'")
    raise InputError(
        problem + "register the cohort to a template first "
        "(data.preprocess.enabled=True or python -m preprocessing.run)")
  return next(iter(grids))[0]


def _one_lattice(affines: Sequence[Sequence[float]]) -> bool:
  """Whether grid affines share axes and spacing, origins whole voxels apart."""
  matrices = [np.reshape(a, (3, 4)) for a in affines]
  linear = matrices[0][:, :3]
  if any(not np.allclose(m[:, :3], linear, atol=1e-3) for m in matrices):
    return False
  steps = [np.linalg.solve(linear, m[:, 3] - matrices[0][:, 3])
           for m in matrices]
  return all(np.allclose(s, np.round(s), atol=1e-2) for s in steps)


def _original_grid(header: dict[str, Any]) -> tuple[tuple[int, ...],
                                                    tuple[float, ...]]:
  """(shape, affine rounded to 1e-3) of the grid a record was cropped from."""
  affine = np.asarray(header["affine"], np.float64)
  # The record's affine is its crop's (`normalize.crop_affine`); undo that.
  origin = affine[:3, 3] - affine[:3, :3] @ np.asarray(header["crop_start"],
                                                       np.float64)
  grid_affine = np.concatenate([affine[:3, :3], origin[:, None]], axis=1)
  return (tuple(int(n) for n in header["original_shape"]),
          tuple(np.round(grid_affine, 3).ravel().tolist()))


def _template_voxels(flat: np.ndarray, subject: input_pipeline.Subject,
                     cropped_shape: Sequence[int]) -> np.ndarray:
  """Template voxel coordinates (n, 3) of flat indices of a cropped volume."""
  return np.stack(np.unravel_index(flat, cropped_shape), axis=1) + np.asarray(
      subject.origin)


def _flat_blocks(voxels: np.ndarray, shape: Sequence[int],
                 block: int) -> np.ndarray:
  return np.ravel_multi_index(
      tuple((voxels // block).T), template_position.block_grid(shape, block))


def lesion_frequency_mask(subjects: Sequence[input_pipeline.Subject],
                          shape: Sequence[int], block: int,
                          subject_ids: Sequence[str]) -> np.ndarray:
  """1 for the blocks some training subject has a lesion voxel in, else 0.

  The baseline's `MinLesionFrequency(min_fraction=0)` on the same blocks: a
  block no training subject has a lesion in carries no information.

  Args:
    subjects: the training split's decoded subjects.
    shape: the template grid (`template_shape`).
    block: block edge in voxels.
    subject_ids: their ids, for the errors.

  Raises:
    InputError: a subject has no brain voxel (its image is zero
      everywhere), so its row could never hold anything.
  """
  mask = np.zeros(int(np.prod(template_position.block_grid(shape, block))),
                  np.float32)
  for subject, subject_id in zip(subjects, subject_ids):
    image, label, lesion = subject.volumes()
    if not np.any(image):
      raise InputError(
          f"{subject_id}: no brain voxel in any template block (its image is "
          "zero everywhere); model.cls_head='located' cannot read it")
    voxels = _template_voxels(lesion, subject, label.shape)
    mask[_flat_blocks(voxels, shape, block)] = 1
  return mask
