"""How the baseline reads a cohort: labels, scan choice and mask values.

A lab's cohort may take its labels from another column or a phenotype file,
hold several sessions and runs, and mark an ignore label in its lesion masks
(`configs/joint.py`'s `data.label_column`, `data.phenotype_file`,
`data.session`, `data.run`, `data.bids_filter`, `data.ignore_label`,
`data.mask_threshold`). The baseline must read it exactly as the training
runs did, or its subjects, labels and reference masks are not the ones the
joint model is compared with. So with training runs the reading comes from
their `config.json`; without, from the command line.
"""

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import ml_collections
import numpy as np

from preprocessing import bids
from preprocessing import lesion_labels
from preprocessing import pipeline_output
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json
from pvl_jax.data import dataset

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class CohortReading:
  """The options a cohort is read with (defaults: `configs/joint.py`'s).

  Attributes:
    label_column: the participants.tsv (or phenotype) column of the label.
    phenotype: a table the labels come from instead; "" for none.
    session, run, bids_filter: which scans are used (`bids.Selection`).
    ignore_label: lesion-mask value that is neither lesion nor background;
      None: none.
    mask_threshold: binarise reference masks with mask >= threshold; None:
      they must be binary.
    modality: the scan the lesion masks are drawn on (the runs' first
      `data.modalities`): the scan is chosen first, as training chooses it,
      then the lesion mask that covers it.
  """
  label_column: str = "hand_function"
  phenotype: str = ""
  session: str = "first"
  run: str = "last"
  bids_filter: str = ""
  ignore_label: int | None = None
  mask_threshold: float | None = None
  modality: str = "FLAIR"

  def load(self, cohort_dir: str | os.PathLike) -> list[bids.Subject]:
    """The cohort's subjects, labels and reference masks.

    Through `bids.load_cohort`, as training reads it: the session, run and
    entity rules choose each participant's scan, then the lesion mask
    covering that scan is the reference. A pipeline output holds one scan
    per subject, already chosen, so the rules are not applied to it (as in
    training).
    """
    selection = (bids.Selection()
                 if pipeline_output.is_preprocessed(cohort_dir)
                 else bids.Selection(self.session, self.run, self.bids_filter))
    return bids.load_cohort(cohort_dir, modalities=(self.modality,),
                            label_column=self.label_column,
                            selection=selection,
                            phenotype=self.phenotype or None)

  def lesion(self, path: Path, grid_shape: tuple[int, ...],
             grid_affine: np.ndarray, grid_path: Path) -> np.ndarray:
    """A mask file's lesion voxels (ignored voxels are not lesion)."""
    labels = lesion_labels.load_lesion_labels(
        path, reference_shape=grid_shape, reference_affine=grid_affine,
        reference_path=grid_path, threshold=self.mask_threshold,
        ignore_label=self.ignore_label)
    return labels == lesion_labels.LESION

  def lesion_values(self, path: Path, data: np.ndarray) -> np.ndarray:
    """The lesion voxels of a mask file's voxels `data`, on its own grid."""
    labels = lesion_labels.label_values(path, data,
                                        threshold=self.mask_threshold,
                                        ignore_label=self.ignore_label)
    return labels == lesion_labels.LESION


def of_config(config: ml_collections.ConfigDict) -> CohortReading:
  """The reading a training config gives its cohort."""
  modalities = config.data.get("modalities", (CohortReading.modality,))
  return CohortReading(**dataset.cohort_options(config),
                       modality=modalities[0])


def of_runs(run_dirs: Sequence[str | os.PathLike]) -> CohortReading:
  """The reading the training runs gave their cohort; they must agree.

  Raises:
    InputError: a run's config.json is missing or unreadable, or two runs
      read the cohort differently (naming both files and the option).
  """
  readings = []
  for run_dir in run_dirs:
    path = Path(run_dir) / CONFIG_FILE
    config = ml_collections.ConfigDict(read_json(path))
    readings.append((path, of_config(config)))
  first_path, first = readings[0]
  for path, reading in readings[1:]:
    for field in dataclasses.fields(CohortReading):
      ours, theirs = getattr(first, field.name), getattr(reading, field.name)
      if ours != theirs:
        raise InputError(
            f"{path}: read the cohort with {field.name} = {theirs!r}, but "
            f"{first_path} with {ours!r}; the runs of one comparison must "
            "read the cohort alike")
  return first


def check_flags_agree(reading: CohortReading, given: dict[str, object],
                      run_dir: str | os.PathLike) -> None:
  """Options given on the command line must match the runs' reading.

  Args:
    reading: the runs' reading (`of_runs`).
    given: option name -> the value given on the command line (only those
      the user set).
    run_dir: a run, named in the message.

  Raises:
    InputError: naming the flag, both values and the run's config.json.
  """
  for name, value in given.items():
    if getattr(reading, name) != value:
      raise InputError(
          f"--{name}={value}: the training runs read the cohort with "
          f"{name} = {getattr(reading, name)!r} "
          f"({Path(run_dir) / CONFIG_FILE}); leave --{name} out to use "
          "theirs")
