"""The pipeline's output dataset on disk: file names, caching, cleaning up.

Layout (a BIDS derivative dataset that `bids.load_cohort` and the TFDS
builder read as a cohort):

  dataset_description.json                      DatasetType derivative
  participants.tsv                              raw rows of processed subjects
  sub-X/anat/sub-X_<modality>.nii.gz            template space, float32
  sub-X/anat/sub-X_desc-brain_mask.nii.gz       same grid, uint8
  sub-X/xfm/sub-X_from-native_to-MNI152NLin2009cAsym_xfm.tfm
  sub-X/xfm/sub-X_from-<modality>_to-MNI152NLin2009cAsym_xfm.tfm  (2nd, ...)
  sub-X/native/sub-X_desc-brain_mask.nii.gz     the first modality's grid
  sub-X/native/sub-X_desc-biasfield.nii.gz      N4's field there (0 outside
                                                the brain)
  sub-X/sub-X_desc-preprocessing.json           inputs hash + QC figures
  derivatives/lesions/sub-X/anat/sub-X_label-lesion_mask.nii.gz
  qc/sub-X.png, qc/steps.csv
  qc/run.json                                   the last run that processed
                                                subjects: their number, the
                                                workers, its wall seconds

"Native" is the first modality's scan space (the lesion mask's space). Each
.tfm holds an ITK affine transform mapping TEMPLATE points to that scan's
NATIVE points (LPS mm); see `registration` for taking predictions back.

Atomicity: a subject's lesion folder and then its subject folder are each
written in a temporary folder and renamed into place; the subject folder,
renamed last, marks it complete, and a subject about to be (re)processed
first loses its old outputs (`remove_subject`), so a failed or killed run
never leaves a partial subject.
"""

import csv
import io
import json
from pathlib import Path
import shutil

from preprocessing import bids
from preprocessing.io.atomic import atomic_write_text
from preprocessing.template import TEMPLATE_SPACE


def transform_name(pid: str, modality: str, reference: str) -> str:
  """The file name of a scan's transform (under sub-X/xfm/)."""
  source = "native" if modality == reference else modality
  return f"{pid}_from-{source}_to-{TEMPLATE_SPACE}_xfm.tfm"


def record_name(pid: str) -> str:
  """The file name of a subject's record (inputs hash and QC row)."""
  return f"{pid}_desc-preprocessing.json"


def lesion_dir(out_dir: Path, pid: str) -> Path:
  """A subject's folder of the lesion-mask derivative."""
  return out_dir / "derivatives" / "lesions" / pid


def cached_record(out_dir: Path, pid: str, digest: str) -> dict | None:
  """The subject's stored record if its outputs match `digest`, else None."""
  try:
    record = json.loads((out_dir / pid / record_name(pid)).read_text())
  except (OSError, ValueError):
    return None
  if record.get("inputs_hash") != digest or not lesion_dir(out_dir,
                                                           pid).is_dir():
    return None
  return record


def remove_subject(out_dir: Path, pid: str) -> None:
  """Deletes a subject's outputs, the completion marker (its folder) first."""
  shutil.rmtree(out_dir / pid, ignore_errors=True)
  shutil.rmtree(lesion_dir(out_dir, pid), ignore_errors=True)
  (out_dir / "qc" / f"{pid}.png").unlink(missing_ok=True)


def prune(out_dir: Path, keep: list[str]) -> None:
  """Removes outputs of subjects not in `keep` (failed, or no longer raw)."""
  found = {p.name for p in out_dir.glob("sub-*") if p.is_dir()}
  found |= {p.name for p in (out_dir / "derivatives" / "lesions").glob("sub-*")}
  found |= {p.stem for p in (out_dir / "qc").glob("sub-*.png")}
  for pid in found - set(keep):
    remove_subject(out_dir, pid)


def participants_rows(tsv: Path, keep: list[str]) -> str:
  """participants.tsv restricted to `keep` (header and columns unchanged)."""
  text = tsv.read_text(encoding="utf-8-sig")
  rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                         quoting=csv.QUOTE_NONE))
  header = [cell.strip() for cell in rows[0]]
  id_index = header.index(bids.ID_COLUMN)
  kept = [rows[0]] + [row for row in rows[1:]
                      if len(row) > id_index and row[id_index].strip() in keep]
  return "".join("\t".join(row) + "\n" for row in kept)


def write_if_changed(path: Path, text: str) -> None:
  """Writes atomically, but leaves an identical file untouched.

  Training caches its TFDS records by the files' modification times; a rerun
  that changes nothing must not make them look new.
  """
  if path.is_file() and path.read_text(encoding="utf-8") == text:
    return
  atomic_write_text(path, text)
