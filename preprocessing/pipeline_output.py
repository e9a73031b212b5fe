"""What marks a folder as the preprocessing pipeline's output, and its params.

Apart from `pipeline` (which needs SimpleITK) so that training can recognise
a preprocessed cohort and read its parameters without SimpleITK, which the
accelerator machines' images lack.
"""

import dataclasses
import json
import os
from pathlib import Path

from preprocessing import bids
from preprocessing import template_files

GENERATED_BY = "pvl_jax preprocessing"
DESCRIPTION_FILE = "dataset_description.json"


@dataclasses.dataclass(frozen=True)
class Params:
  """Pipeline parameters (all part of each subject's cache key).

  Attributes:
    target_spacing: isotropic voxel size (mm) of the template-space output.
    mask_threshold: lesion masks are binarised with mask >= threshold; None
      means they must already contain only 0 and 1.
    modalities: BIDS suffixes of the scans; the first is the reference
      whose grid the lesion mask shares.
    registration: "rigid" (the pose) or "affine" (also head size and
      shear); see `registration.KINDS`.
    ignore_label: lesion-mask value of voxels that are neither lesion nor
      background (kept as this value in the outputs); None: no such value.
    template: the user's template image ("" for MNI152 2009c).
    template_mask: its brain mask ("" with the default template).
    session, run, bids_filter: which scans are used (`bids.Selection`).
  """
  target_spacing: float = 1.0
  mask_threshold: float | None = None
  modalities: tuple[str, ...] = ("FLAIR",)
  registration: str = "rigid"
  ignore_label: int | None = None
  template: str = ""
  template_mask: str = ""
  session: str = "first"
  run: str = "last"
  bids_filter: str = ""

  def user_template(self) -> template_files.TemplateFiles | None:
    """The user's template, checked; None for MNI152 2009c."""
    return template_files.check_files(self.template, self.template_mask)

  def selection(self) -> bids.Selection:
    return bids.Selection(self.session, self.run, self.bids_filter)


def is_preprocessed(directory: str | os.PathLike) -> bool:
  """Whether `directory` is an output of this pipeline."""
  path = Path(directory) / DESCRIPTION_FILE
  try:
    description = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  generated_by = description.get("GeneratedBy", [])
  return isinstance(generated_by, list) and any(
      isinstance(g, dict) and g.get("Name") == GENERATED_BY
      for g in generated_by)


def output_params(directory: str | os.PathLike) -> Params:
  """The parameters an output of this pipeline (`is_preprocessed`) used."""
  description = json.loads(
      (Path(directory) / DESCRIPTION_FILE).read_text(encoding="utf-8"))
  params = description["PipelineParameters"]
  return Params(**{**params, "modalities": tuple(params["modalities"])})


def output_template(directory: str | os.PathLike
                    ) -> template_files.TemplateFiles | None:
  """The template an output of this pipeline is in; None for MNI152."""
  params = output_params(directory)
  if not params.template:
    return None
  return template_files.TemplateFiles(params.template, params.template_mask)
