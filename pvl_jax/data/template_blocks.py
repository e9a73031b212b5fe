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

  Raises:
    InputError: records of different original grids, so the data are not
      in one template space (e.g. a raw-space cohort without preprocessing)
      and no patch has a template position.
  """
  shapes = {}
  for source in sources.values():
    for header in records.headers(source):
      shapes.setdefault(tuple(int(n) for n in header["original_shape"]),
                        records.subject_id(header))
  if len(shapes) != 1:
    found = ", ".join(f"{shape} ({subject})" for shape, subject
                      in list(shapes.items())[:4])
    raise InputError(
        "model.cls_head='located' needs every scan in one template grid, but "
        f"the records come from {len(shapes)} grids: {found}; register the "
        "cohort to a template first (data.preprocess.enabled=True or "
        "python -m preprocessing.run)")
  return next(iter(shapes))


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
