"""Reading a BIDS-style PVL cohort: participants.tsv plus per-subject files.

Layout (paths relative to the cohort directory):

  participants.tsv                                   participant_id, label
  sub-001/anat/sub-001_FLAIR.nii.gz                  one file per modality
  derivatives/lesions/sub-001/anat/sub-001_label-lesion_mask.nii.gz
  sub-001/anat/sub-001_desc-brain_mask.nii.gz        optional brain mask, or
  derivatives/synthetic/sub-001/anat/sub-001_desc-brain_mask.nii.gz

Every problem is reported as an `InputError` naming the file (and line) and
what is wrong, before any image is read.
"""

import csv
import dataclasses
import io
import os
import re
from pathlib import Path

from preprocessing.io.errors import InputError

PARTICIPANTS_FILE = "participants.tsv"
ID_COLUMN = "participant_id"
# BIDS labels are alphanumeric; anything else (dots, slashes, "..") could make
# the id escape the cohort directory when it is joined into a path.
_PARTICIPANT_ID = re.compile(r"sub-[A-Za-z0-9]+")
_LABELS = {"0": 0, "1": 1}
# BIDS spellings of a missing value.
_MISSING = ("", "n/a")
# Accepted NIfTI extensions, in order of preference.
_NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Subject:
  """One participant's label and files.

  Attributes:
    participant_id: e.g. "sub-001".
    hand_function: 0 good, 1 bad (or the value of the chosen label column).
    image_paths: modality -> scan, e.g. {"FLAIR": .../sub-001_FLAIR.nii.gz}.
    lesion_mask_path: the manual lesion segmentation.
    brain_mask_path: the brain mask, or None when the cohort has none: the
      subject's own `anat/<id>_desc-brain_mask` (preprocessed datasets, see
      `preprocessing.pipeline`), else the synthetic generator's
      `derivatives/synthetic/<id>/anat/<id>_desc-brain_mask`.
  """
  participant_id: str
  hand_function: int
  image_paths: dict[str, Path]
  lesion_mask_path: Path
  brain_mask_path: Path | None


def read_participants(path: str | os.PathLike,
                      label_column: str = "hand_function") -> dict[str, int]:
  """Reads and validates a BIDS participants.tsv.

  Args:
    path: the tab-separated file (UTF-8, optionally with a byte-order mark).
    label_column: the column holding the binary label.

  Returns:
    participant_id -> label (0 or 1), in file order.

  Raises:
    InputError: the file is missing, not UTF-8, empty, lacks a column, has
      malformed rows, invalid or duplicate ids, or labels other than 0/1.
  """
  path = Path(path)
  header, rows = _read_tsv(path)
  id_index = _column_index(path, header, ID_COLUMN)
  label_index = _column_index(path, header, label_column)
  labels: dict[str, int] = {}
  lines: dict[str, list[int]] = {}
  for line, row in rows:
    if len(row) != len(header):
      raise InputError(f"{path}: line {line}: {len(row)} fields but the "
                       f"header has {len(header)} (is the file tab-separated?)")
    participant_id = row[id_index]
    _check_participant_id(path, line, participant_id)
    labels[participant_id] = _parse_label(path, line, label_column,
                                          row[label_index])
    lines.setdefault(participant_id, []).append(line)
  duplicates = [f"{pid} (lines {', '.join(map(str, found))})"
                for pid, found in lines.items() if len(found) > 1]
  if duplicates:
    raise InputError(f"{path}: duplicate participant ids: "
                     f"{'; '.join(duplicates)}")
  return labels


def load_cohort(bids_dir: str | os.PathLike,
                modalities: tuple[str, ...] = ("FLAIR",),
                label_column: str = "hand_function") -> list[Subject]:
  """Finds every participant's files and label, checking nothing is missing.

  Args:
    bids_dir: the cohort directory.
    modalities: BIDS suffixes of the required scans, e.g. ("FLAIR", "T1w").
    label_column: participants.tsv column stored as `Subject.hand_function`.

  Returns:
    Subjects sorted by participant_id.

  Raises:
    InputError: bids_dir is missing, participants.tsv is invalid (see
      `read_participants`), a scan folder has no participants.tsv row, or a
      required scan or lesion mask is missing.
  """
  bids_dir = Path(bids_dir)
  if not bids_dir.is_dir():
    problem = "not a directory" if bids_dir.exists() else "not found"
    raise InputError(f"{bids_dir}: BIDS cohort directory {problem}")
  tsv = bids_dir / PARTICIPANTS_FILE
  labels = read_participants(tsv, label_column)
  _check_scan_folders(bids_dir, tsv, labels)
  return [_find_subject_files(bids_dir, participant_id, label, modalities)
          for participant_id, label in sorted(labels.items())]


def _read_tsv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """Returns the header and the non-blank (line number, cells) rows."""
  if not path.is_file():
    raise InputError(f"{path}: file not found")
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise InputError(f"{path}: cannot be read ({err.strerror})") from err
  try:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as err:
    line = raw[:err.start].count(b"\n") + 1
    raise InputError(
        f"{path}: line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}; "
        "perhaps Latin-1 or Windows-1252): re-save the file as UTF-8") from None
  # QUOTE_NONE: BIDS TSV has no quoting, so quotes are ordinary characters.
  reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                      quoting=csv.QUOTE_NONE)
  records = [(reader.line_num, [cell.strip() for cell in row])
             for row in reader]
  records = [(line, row) for line, row in records if any(row)]
  if not records:
    raise InputError(f"{path}: no participants (the file is empty)")
  (_, header), *rows = records
  if not rows:
    raise InputError(f"{path}: no participants (only a header line)")
  return header, rows


def _column_index(path: Path, header: list[str], column: str) -> int:
  if column not in header:
    raise InputError(f"{path}: line 1: no '{column}' column (columns present:"
                     f" {', '.join(map(repr, header))}; the file must be "
                     "tab-separated)")
  return header.index(column)


def _check_participant_id(path: Path, line: int, participant_id: str) -> None:
  if not _PARTICIPANT_ID.fullmatch(participant_id):
    raise InputError(f"{path}: line {line}: participant_id "
                     f"{participant_id!r} is not of the form sub-<label> "
                     "(label: letters and digits only)")


def _parse_label(path: Path, line: int, column: str, value: str) -> int:
  if value in _MISSING:
    raise InputError(f"{path}: line {line}: missing {column} value")
  if value not in _LABELS:
    raise InputError(f"{path}: line {line}: {column} is {value!r}, must be "
                     "0 or 1")
  return _LABELS[value]


def _check_scan_folders(bids_dir: Path, tsv: Path,
                        labels: dict[str, int]) -> None:
  """Rejects subject folders that participants.tsv does not list."""
  orphans = sorted(folder.name for folder in bids_dir.glob("sub-*")
                   if folder.is_dir() and folder.name not in labels)
  if orphans:
    raise InputError(f"{tsv}: no row for scan folder(s) {', '.join(orphans)}"
                     f" in {bids_dir}")


def _find_subject_files(bids_dir: Path, participant_id: str, label: int,
                        modalities: tuple[str, ...]) -> Subject:
  anat = Path(participant_id, "anat")
  image_paths = {
      modality: _require_nifti(
          bids_dir / anat / f"{participant_id}_{modality}",
          f"{participant_id} has no {modality} scan")
      for modality in modalities
  }
  lesion_mask = _require_nifti(
      bids_dir / "derivatives" / "lesions" / anat
      / f"{participant_id}_label-lesion_mask",
      f"{participant_id} has no lesion mask")
  brain_mask_name = f"{participant_id}_desc-brain_mask"
  brain_mask = (_find_nifti(bids_dir / anat / brain_mask_name)
                or _find_nifti(bids_dir / "derivatives" / "synthetic" / anat
                               / brain_mask_name))
  return Subject(participant_id=participant_id, hand_function=label,
                 image_paths=image_paths, lesion_mask_path=lesion_mask,
                 brain_mask_path=brain_mask)


def _find_nifti(stem: Path) -> Path | None:
  """The existing `stem`.nii.gz or `stem`.nii, None if neither exists."""
  found = [Path(f"{stem}{ext}") for ext in _NIFTI_EXTENSIONS
           if Path(f"{stem}{ext}").is_file()]
  if len(found) > 1:
    raise InputError(f"{found[0]}: ambiguous: {found[1].name} also exists")
  return found[0] if found else None


def _require_nifti(stem: Path, problem: str) -> Path:
  path = _find_nifti(stem)
  if path is None:
    raise InputError(f"{stem}{_NIFTI_EXTENSIONS[0]}: {problem} (file not "
                     "found)")
  return path
