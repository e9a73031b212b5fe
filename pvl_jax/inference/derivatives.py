"""`pvl_jax.predict`'s output for a BIDS dataset: a BIDS derivatives dataset.

Layout of the output folder (OUT):

  dataset_description.json   DatasetType "derivative"; GeneratedBy pvl_jax,
                             its version and the model run (workdir and
                             checkpoint step)
  lesions.tsv                one row per segmented scan: participant_id,
                             session_id, lesion_volume_ml, lesion_count,
                             p_bad_hand_function (n/a for a run with r = 0)
  qc_report.html             the visual QC report (`evaluation.qc_report`)
  sub-*/[ses-*/]anat/<scan entities>_space-orig_desc-lesion_mask.nii.gz
                             uint8 0/1, on the scan's grid (space-orig)
  .../<scan entities>_space-orig_label-lesion_probseg.nii.gz
                             float32 lesion probability, same grid
  .../<scan entities>_space-orig_desc-lesion_mask.json
                             Sources, Threshold, Postprocessing, ModelRun,
                             lesion volume and count, P(bad hand function),
                             QC warnings

where <scan entities> are the scan's file name up to its suffix (e.g.
`sub-001_ses-01_acq-3D_run-2`). A scan is complete when its mask, its
probability map and, written last, its sidecar exist: a rerun skips it. An
output folder holds one model's derivatives: one of another run (or another
checkpoint of it) is refused before any work.
"""

import dataclasses
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import qc_report
from pvl_jax.inference import native_space
from pvl_jax.inference import trained_run

DESCRIPTION_FILE = "dataset_description.json"
TABLE_FILE = "lesions.tsv"
PIPELINE = "pvl_jax"
THRESHOLD = 0.5
TABLE_COLUMNS = ("participant_id", "session_id", "lesion_volume_ml",
                 "lesion_count", "p_bad_hand_function")
_MASK = "_space-orig_desc-lesion_mask"
_PROBSEG = "_space-orig_label-lesion_probseg"
# Entities a derivative names itself; a scan's own values are dropped.
_OWN_ENTITIES = ("space-", "desc-", "label-")


def model_run(run: trained_run.TrainedRun, workdir: str | os.PathLike
              ) -> dict[str, Any]:
  """What identifies the model: its run directory and checkpoint step."""
  return {"Workdir": str(Path(workdir).resolve()), "CheckpointStep": run.step}


def description(run: trained_run.TrainedRun, workdir: str | os.PathLike,
                bids_dir: str | os.PathLike) -> dict[str, Any]:
  """dataset_description.json of the output (BIDS derivative)."""
  source = Path(bids_dir).resolve().as_uri()
  return {
      "Name": "PVL lesion segmentation",
      "BIDSVersion": "1.9.0",
      "DatasetType": "derivative",
      "GeneratedBy": [{
          "Name": PIPELINE,
          "Version": importlib.metadata.version(PIPELINE),
          "Description": "pvl_jax.predict with the model run "
                         f"{model_run(run, workdir)['Workdir']} (checkpoint "
                         f"step {run.step})",
          "ModelRun": model_run(run, workdir)}],
      "SourceDatasets": [{"URL": source}],
      "DatasetLinks": {"raw": source},
  }


def check_output(out: Path, wanted: dict[str, Any]) -> None:
  """Refuses an output folder that is not this model's derivatives.

  Raises:
    InputError: naming the folder or its dataset_description.json: it is a
      file, holds files but no description, or the description is another
      pipeline's or another model run's.
  """
  if out.exists() and not out.is_dir():
    raise InputError(f"{out}: exists and is not a folder (--input is a BIDS "
                     "dataset)")
  path = out / DESCRIPTION_FILE
  if not path.exists():
    if out.is_dir() and any(out.iterdir()):
      raise InputError(f"{out}: not empty and not a {PIPELINE} derivatives "
                       f"folder (no {DESCRIPTION_FILE}); choose an empty or "
                       "new --output")
    return
  try:
    found = json.loads(path.read_text())["GeneratedBy"][0]
  except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
    raise InputError(f"{path}: not a readable derivatives description "
                     f"({err}); choose another --output") from err
  ours = wanted["GeneratedBy"][0]
  if found.get("Name") != PIPELINE or found.get("ModelRun") != ours[
      "ModelRun"]:
    raise InputError(
        f"{path}: the folder holds the derivatives of another model "
        f"({found.get('Name')}: {found.get('ModelRun')}), not of "
        f"{ours['ModelRun']}; choose another --output")


@dataclasses.dataclass(frozen=True)
class ScanOutputs:
  """A scan and its output files.

  Attributes:
    scans: the participant's chosen scans (`bids.select_scans`).
    mask, probseg, sidecar: the output files.
  """
  scans: bids.Scans
  mask: Path
  probseg: Path
  sidecar: Path

  @property
  def reference(self) -> Path:
    """The scan the mask is drawn on (the first modality's)."""
    return next(iter(self.scans.image_paths.values()))

  def complete(self) -> bool:
    """Whether a previous run wrote all of them (the sidecar comes last)."""
    return all(p.exists() for p in (self.mask, self.probseg, self.sidecar))


def outputs_for(scans: bids.Scans, bids_dir: Path, out: Path) -> ScanOutputs:
  """The output files of a participant's scan, named after the scan."""
  reference = next(iter(scans.image_paths.values()))
  stem = "_".join(part for part in reference.name.split(".")[0].split("_")[:-1]
                  if not part.startswith(_OWN_ENTITIES))
  folder = out / reference.parent.relative_to(bids_dir)
  return ScanOutputs(scans=scans, mask=folder / f"{stem}{_MASK}.nii.gz",
                     probseg=folder / f"{stem}{_PROBSEG}.nii.gz",
                     sidecar=folder / f"{stem}{_MASK}.json")


def sidecar(outputs: ScanOutputs, bids_dir: Path,
            run: trained_run.TrainedRun, workdir: str | os.PathLike,
            prediction: native_space.Prediction,
            warnings: list[str]) -> dict[str, Any]:
  """The mask's JSON sidecar (see the module docstring)."""
  volume, count = qc_report.lesion_stats(prediction.mask, prediction.affine)
  content: dict[str, Any] = {
      "Sources": [f"bids:raw:{p.relative_to(bids_dir).as_posix()}"
                  for p in outputs.scans.image_paths.values()],
      "Threshold": THRESHOLD,
      "Postprocessing": {
          "MinComponentVoxels": run.min_component_voxels,
          "MinDepthMm": run.min_depth_mm,
          "ChosenOn": "validation" if (run.min_component_voxels
                                       or run.min_depth_mm) else "none"},
      "ModelRun": model_run(run, workdir),
      "LesionVolumeMl": round(volume, 4),
      "LesionCount": count,
      "BrainTemplateDice": prediction.brain_template_dice,
      "QCWarnings": warnings,
  }
  if run.classifies:
    content["HandFunction"] = {
        "ProbabilityBad": prediction.hand_function_prob,
        "DecisionThreshold": run.cls_threshold}
  return content


def write_scan(outputs: ScanOutputs, prediction: native_space.Prediction,
               content: dict[str, Any]) -> None:
  """Writes a scan's mask, probability map and sidecar (last), atomically.

  On failure none of them is left behind.

  Raises:
    InputError: an output cannot be written.
  """
  written = []
  try:
    for data, path, dtype in ((prediction.mask, outputs.mask, np.uint8),
                              (prediction.probabilities, outputs.probseg,
                               np.float32)):
      nifti.save_nifti(data, prediction.affine, path, dtype)
      written.append(path)
    atomic_write_text(outputs.sidecar, json.dumps(content, indent=2) + "\n")
  except BaseException as err:
    for path in written:
      path.unlink(missing_ok=True)
    if isinstance(err, OSError):
      raise InputError(f"{err.filename or outputs.mask}: cannot write "
                       f"({err.strerror or err})") from err
    raise


def write_description(out: Path, content: dict[str, Any]) -> None:
  """dataset_description.json, unless a previous run wrote it."""
  path = out / DESCRIPTION_FILE
  if not path.exists():
    atomic_write_text(path, json.dumps(content, indent=2) + "\n")


def write_table(out: Path, done: list[ScanOutputs]) -> Path:
  """lesions.tsv from the sidecars of the complete scans."""
  rows = ["\t".join(TABLE_COLUMNS)]
  for outputs in done:
    content = read_sidecar(outputs)
    prob = content.get("HandFunction", {}).get("ProbabilityBad")
    session = outputs.scans.session
    rows.append("\t".join((
        outputs.scans.participant_id,
        f"ses-{session}" if session else "n/a",
        f"{content['LesionVolumeMl']:.4f}", str(content["LesionCount"]),
        "n/a" if prob is None else f"{prob:.4f}")))
  path = out / TABLE_FILE
  atomic_write_text(path, "\n".join(rows) + "\n")
  return path


def read_sidecar(outputs: ScanOutputs) -> dict[str, Any]:
  return json.loads(outputs.sidecar.read_text())
