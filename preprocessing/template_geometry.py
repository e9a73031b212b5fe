"""The template-space grid at a spacing: its shape and affine.

Apart from `template` (which builds SimpleITK images) so that training can
place a pipeline output's scans in the template grid without SimpleITK,
which the accelerator machines' images lack.
"""

import nibabel as nib
from nibabel.filebasedimages import ImageFileError
import numpy as np

from preprocessing.io.errors import InputError
from preprocessing.template_files import TemplateFiles


def grid(spacing_mm: float, files: TemplateFiles | None = None
         ) -> tuple[tuple[int, int, int], np.ndarray]:
  """The template's field of view at `spacing_mm`: (shape, RAS affine).

  The grid shares the template's first voxel centre and direction (for the
  MNI152 default, the 1 mm template's, so at 1 and 2 mm it is exactly
  nilearn's 1 and 2 mm template grid).

  Args:
    spacing_mm: isotropic voxel size of the grid.
    files: the user's template; None: the MNI152 template.

  Returns:
    The grid's shape and its 4x4 voxel-to-RAS+ affine.

  Raises:
    InputError: the user's template mask is missing or unreadable.
  """
  if files is None:
    # Imported here: nilearn takes seconds to import, and only the runs on
    # the default template need it.
    from nilearn import datasets  # pylint: disable=g-import-not-at-top
    template = datasets.load_mni152_brain_mask(resolution=1)
  else:
    try:
      template = nib.load(files.mask)
    except (OSError, ImageFileError) as err:
      raise InputError(f"{files.mask}: cannot read the template brain mask "
                       f"({err})") from None
  zooms = np.asarray(template.header.get_zooms()[:3], float)
  extent = (np.asarray(template.shape[:3]) - 1) * zooms
  shape = tuple(int(n) for n in np.floor(extent / spacing_mm + 1e-6) + 1)
  affine = template.affine @ np.diag(list(spacing_mm / zooms) + [1])
  return shape, affine
