"""The template grid and blocks of a training split, for the located head.

Everything here is read from the cohort alone (its records' grids and crop
origins, the template a preprocessing output names, the training split's
lesion labels and z-scored images' brain): nothing from the synthetic
generator's hidden parameters (its regions, label model).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from preprocessing import normalize
from preprocessing.io.errors import InputError
from pvl_jax.data import decoded_subjects
from pvl_jax.data import records
from pvl_jax.data import template_grid as template_grid_lib
from pvl_jax.data import template_position


def template_grid(sources: dict[str, Any],
                  template: template_grid_lib.TemplateGrid | None = None
                  ) -> template_grid_lib.TemplateGrid:
  """The grid the located head's blocks tile, every record a crop of it.

  Each record is cropped from a grid (the shape and affine of the volume
  it was read from). Records of several such grids are one template's when
  the grids are crops of one lattice (same axes and spacing, origins whole
  voxels apart), as preprocessing saves each subject on its brain's crop of
  the template grid.

  Args:
    sources: split name -> data source; every split's records are placed.
    template: the grid of the template the cohort was brought to, when the
      cohort says (a preprocessing output,
      `dataset.pipeline_template_grid`); it is the answer, and every record
      must lie on its lattice. None: the smallest box of the records'
      lattice that holds all their grids (for records of one grid, as the
      synthetic cohort's, that grid).

  Raises:
    InputError: the records' grids are not crops of one lattice, so the data
      are not in one template space (e.g. a raw-space cohort without
      preprocessing) and no patch has a template position; or a record is
      not on `template`'s lattice.
  """
  grids = {}
  for source in sources.values():
    for header in records.headers(source):
      shape, affine = _original_grid(header)
      key = (shape, tuple(np.round(affine, 3).ravel().tolist()))
      grids.setdefault(key, (records.subject_id(header), shape, affine))
  if template is not None:
    outside = [subject for subject, shape, affine in grids.values()
               if not _inside(template, shape, affine)]
    if outside:
      raise InputError(
          f"{', '.join(outside[:4])}: not crops of the {template.shape} "
          "template grid the cohort was preprocessed into (other axes or "
          "spacing, a position between template voxels, or reaching past "
          "it), so model.cls_head='located' cannot place them in it")
    return template
  (first, shape, reference), *_ = grids.values()
  offsets = {subject: template_grid_lib.lattice_offset(affine, reference)
             for subject, _, affine in grids.values()}
  off = [subject for subject, offset in offsets.items() if offset is None]
  if off:
    raise InputError(
        "model.cls_head='located' needs every scan on one template grid "
        f"(crops of it are fine), but the records come from {len(grids)} "
        f"grids (shape or position in the world), and those of "
        f"{', '.join(off[:4])} are not on the lattice of {first}'s {shape} "
        "grid (other axes, spacing or a position between its voxels); "
        "register the cohort to a template first "
        "(data.preprocess.enabled=True or python -m preprocessing.run)")
  low = np.min([offsets[s] for s, _, _ in grids.values()], axis=0)
  high = np.max([offsets[s] + shape for s, shape, _ in grids.values()],
                axis=0)
  box = reference.copy()
  box[:3, 3] += reference[:3, :3] @ low
  return template_grid_lib.TemplateGrid.of(high - low, box)


def _inside(template: template_grid_lib.TemplateGrid, shape: Sequence[int],
            affine: np.ndarray) -> bool:
  """Whether a grid is a crop of `template`: on its lattice and inside."""
  origin = template.origin(affine)
  return origin is not None and template.holds(origin, shape)


def _original_grid(header: dict[str, Any]) -> tuple[tuple[int, ...],
                                                    np.ndarray]:
  """(shape, 4x4 affine) of the grid a record was cropped from."""
  affine = np.asarray(header["affine"], np.float64)
  # The record's affine is its crop's (`normalize.crop_affine`); undo that.
  return (tuple(int(n) for n in header["original_shape"]),
          normalize.crop_affine(affine, tuple(-np.asarray(
              header["crop_start"], np.int64))))


def _template_voxels(flat: np.ndarray, subject: decoded_subjects.Subject,
                     cropped_shape: Sequence[int]) -> np.ndarray:
  """Template voxel coordinates (n, 3) of flat indices of a cropped volume."""
  return np.stack(np.unravel_index(flat, cropped_shape), axis=1) + np.asarray(
      subject.origin)


def _flat_blocks(voxels: np.ndarray, shape: Sequence[int],
                 block: int) -> np.ndarray:
  return np.ravel_multi_index(
      tuple((voxels // block).T), template_position.block_grid(shape, block))


def lesion_block_fractions(subjects: Sequence[decoded_subjects.Subject],
                           shape: Sequence[int], block: int,
                           subject_ids: Sequence[str]) -> np.ndarray:
  """Each subject's lesion fraction per template block, (subjects, blocks).

  The located head's input with the reference masks in place of the
  network's map (`located_head.whole_volume_fractions`): lesion voxels of
  the block over its `block`^3 voxels, template voxels outside the record
  counting as no lesion; the baseline's `BlockAverage` on the same blocks.

  Args:
    subjects: the training split's decoded subjects.
    shape: the template grid's (`template_grid`).
    block: block edge in voxels.
    subject_ids: their ids, for the errors.

  Raises:
    InputError: a subject has no brain voxel (its image is zero
      everywhere), so the head could never read anything of it.
  """
  num_blocks = int(np.prod(template_position.block_grid(shape, block)))
  fractions = np.zeros((len(subjects), num_blocks), np.float32)
  for row, subject, subject_id in zip(fractions, subjects, subject_ids):
    image, label, lesion = subject.volumes()
    if not np.any(image):
      raise InputError(
          f"{subject_id}: no brain voxel in any template block (its image is "
          "zero everywhere); model.cls_head='located' cannot read it")
    voxels = _template_voxels(lesion, subject, label.shape)
    row[:] = np.bincount(_flat_blocks(voxels, shape, block),
                         minlength=num_blocks) / block ** 3
  return fractions


def lesion_frequency_mask(fractions: np.ndarray) -> np.ndarray:
  """1 for the blocks some training subject has a lesion voxel in, else 0.

  The baseline's `MinLesionFrequency(min_fraction=0)` on the same blocks: a
  block no training subject has a lesion in carries no information.

  Args:
    fractions: the training split's `lesion_block_fractions`.
  """
  return np.any(fractions > 0, axis=0).astype(np.float32)
