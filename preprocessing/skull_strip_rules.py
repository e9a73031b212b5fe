"""Brain masks for cohorts that bring none (the TFDS builder's choice).

Training needs a brain mask per scan: it z-scores inside it, crops to it and
discards predictions outside it. A cohort that is run through the
preprocessing pipeline gets one from skull stripping; any other cohort either
has them (`bids.Subject.brain_mask_path`) or gets one by a rule
(`data.brain_mask`):

* `files`: the cohort's own masks; a scan without one is an error.
* `nonzero`: for scans already skull stripped (zero outside the brain): the
  largest 26-connected component of the non-zero voxels, holes filled.
* `skull_strip`: the preprocessing pipeline's skull stripping on the scan's
  own grid: rigid registration to the template, its brain mask carried back
  (`template_space.native_brain_mask`; seconds per scan, and needs
  SimpleITK).
* `auto` (the default): the cohort's mask where there is one; otherwise
  `nonzero` when the scan looks skull stripped (`looks_skull_stripped`:
  every voxel within `_SHELL` voxels of the volume's faces is exactly 0, as
  stripping tools leave it), else `skull_strip`. A scan with a skull never
  passes as brain.

Which one a subject got is stored in its record (`brain_mask_source`) and
reported by every run.
"""

from pathlib import Path

import numpy as np
from scipy import ndimage

from preprocessing.io import nifti
from preprocessing.io.errors import InputError

RULES = ("auto", "files", "nonzero", "skull_strip")
# What `brain_mask` returns as the source, per rule.
FROM_FILE = "file"
NONZERO = "nonzero rule"
SKULL_STRIP = "template skull stripping"
# Thickness (voxels) of the border shell that must be 0 in a skull-stripped
# scan: a scan with a skull has noise or scalp there.
_SHELL = 2


def looks_skull_stripped(image: np.ndarray) -> bool:
  """Whether every voxel within `_SHELL` voxels of a face is exactly 0."""
  inner = tuple(slice(_SHELL, max(n - _SHELL, _SHELL)) for n in image.shape)
  shell = np.ones(image.shape, bool)
  shell[inner] = False
  return not np.any(image[shell])


def nonzero_mask(image: np.ndarray) -> np.ndarray:
  """The largest 26-connected component of non-zero voxels, holes filled."""
  components, count = ndimage.label(image != 0,
                                    structure=np.ones((3, 3, 3), bool))
  if not count:
    return np.zeros(image.shape, bool)
  sizes = np.bincount(components.ravel())[1:]
  return ndimage.binary_fill_holes(components == 1 + int(np.argmax(sizes)))


def brain_mask(rule: str, path: Path, image: np.ndarray, affine: np.ndarray,
               mask_path: Path | None, template_files=None
               ) -> tuple[np.ndarray, str]:
  """A scan's brain mask by `rule`, and which source it came from.

  Args:
    rule: one of `RULES`.
    path: the scan (named in errors).
    image: its voxels.
    affine: its affine.
    mask_path: the cohort's mask for it, or None.
    template_files: the user's template for `skull_strip`
      (`template.TemplateFiles`); None: MNI152.

  Returns:
    (bool mask on the scan's grid, FROM_FILE / NONZERO / SKULL_STRIP).

  Raises:
    InputError: naming the file: `files` without a mask, a mask on another
      grid, or a rule that finds no brain.
  """
  if rule not in RULES:
    raise InputError(f"data.brain_mask: {rule!r} is not one of "
                     f"{', '.join(RULES)}")
  if mask_path is not None and rule in ("auto", "files"):
    return nifti.load_mask(mask_path, reference_shape=image.shape,
                           reference_affine=affine,
                           reference_path=path), FROM_FILE
  if rule == "files":
    raise InputError(f"{path}: no brain mask for this scan "
                     "(data.brain_mask=files; see docs/preprocessing.md for "
                     "where masks are looked for)")
  if rule == "nonzero" or (rule == "auto" and looks_skull_stripped(image)):
    mask, source = nonzero_mask(image), NONZERO
  else:
    # Imported here: SimpleITK and nilearn are needed only for this rule.
    from preprocessing import template_space  # pylint: disable=g-import-not-at-top
    mask, source = template_space.native_brain_mask(
        path, image, affine, template_files), SKULL_STRIP
  if not mask.any():
    raise InputError(f"{path}: the {source} found no brain (every voxel 0)")
  return mask, source
