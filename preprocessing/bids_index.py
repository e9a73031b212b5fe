"""The files of a BIDS folder, indexed with pybids, and which mask is a scan's.

The raw folder and each derivatives folder are indexed on their own (so
neither needs a dataset_description.json), once per folder. A lesion or
brain mask belongs to a scan when each entity it has (but `label` and
`desc`, which name the mask) has the scan's value; the most specific one is
used, masks beside the scans before derivatives. Only derivatives/lesions is
the study's own: its masks must each cover a scan. Brain masks of any other
folder (another pipeline's) are used only for a scan whose entities, session
and grid they match, and otherwise left alone and counted (`log_ignored`).
`preprocessing.bids` chooses the scans.
"""

import collections
import dataclasses
import functools
import logging
from pathlib import Path
import re

import numpy as np

from preprocessing.io.errors import InputError

LESION_DERIVATIVE = "lesions"
_NIFTI = (".nii", ".nii.gz")
# Entities that say what a file is rather than which acquisition it is.
_NOT_ACQUISITION = ("subject", "suffix", "extension", "datatype")
# Entities that name a mask itself ("label-lesion", "desc-brain").
_MASK_NAMES = ("label", "desc")
# pybids' schema package logs at INFO which bundled schema it loads, on
# every first index: nothing a user can act on.
logging.getLogger("bidsschematools").setLevel(logging.WARNING)
log = logging.getLogger(__name__)


@functools.cache
def short_names() -> dict[str, str]:
  """BIDS short entity names (acq, rec, ...) -> pybids names, from pybids."""
  from bids.layout.models import Config  # pylint: disable=g-import-not-at-top
  names = {}
  for config in ("bids", "derivatives"):
    for name, entity in Config.load(config).entities.items():
      match = re.search(r"([a-z]+)-\(", entity.pattern)
      if match:
        names[match.group(1)] = name
  return names


@dataclasses.dataclass(frozen=True)
class File:
  """An indexed NIfTI file: its path, entities (as text) and folder.

  Attributes:
    path: the file.
    entities: pybids entity name -> value, e.g. {"session": "01"}.
    derivative: the derivatives folder it is in; "" for the raw folder.
  """
  path: Path
  entities: dict[str, str]
  derivative: str

  def get(self, entity: str) -> str:
    return self.entities.get(entity, "")

  @property
  def acquisition(self) -> dict[str, str]:
    """The entities that identify the acquisition."""
    return {k: v for k, v in self.entities.items()
            if k not in _NOT_ACQUISITION}


class Index:
  """pybids' index of the raw folder and of each derivatives folder."""

  def __init__(self, bids_dir: Path, derivatives: bool = True):
    """Indexes `bids_dir` and, with `derivatives`, its derivatives folders."""
    # Imported here: pybids (and its SQL index) is only needed while a
    # cohort is read, not by modules that merely name a Subject.
    from bids import BIDSLayout  # pylint: disable=g-import-not-at-top
    self.root = bids_dir.absolute()
    folders = {"": self.root}
    derived = self.root / "derivatives"
    if derivatives and derived.is_dir():
      folders.update((f.name, f) for f in sorted(derived.iterdir())
                     if f.is_dir())
    self.folders = folders
    # participant id -> its anat NIfTI files, in every folder.
    self.files: dict[str, list[File]] = {}
    # The folders whose participants need a participants.tsv row: the raw
    # one and the lesion masks (another pipeline may hold more people).
    self.subjects: dict[Path, set[str]] = {}
    for name, folder in folders.items():
      layout = BIDSLayout(folder, validate=False,
                          config=["bids", "derivatives"])
      if name in ("", LESION_DERIVATIVE):
        self.subjects[folder] = {f"sub-{s}" for s in layout.get_subjects()}
      # One query per folder: pybids' per-query cost (~7 ms) times the
      # queries of a participant would dominate a cohort's reading.
      for file in layout.get(datatype="anat", extension=list(_NIFTI)):
        entities = {k: str(v) for k, v in file.get_entities().items()}
        self.files.setdefault(f"sub-{entities['subject']}", []).append(
            File(Path(file.path), entities, name))

  def scans(self, participant_id: str, suffix: str | None = None,
            **filters: str) -> list[File]:
    """A participant's raw images (not masks), optionally filtered."""
    return [f for f in self.files.get(participant_id, [])
            if not f.derivative and f.get("suffix") != "mask"
            and (suffix is None or f.get("suffix") == suffix)
            and all(f.get(k) == v for k, v in filters.items())]

  def lesion_masks(self, participant_id: str) -> list[File]:
    """A participant's lesion masks (derivatives/lesions, label-lesion)."""
    return [f for f in self.files.get(participant_id, [])
            if f.get("suffix") == "mask"
            and f.derivative == LESION_DERIVATIVE
            and f.get("label") == "lesion"]

  def brain_masks(self, participant_id: str) -> list[File]:
    """A participant's brain masks (desc-brain, beside the scans or in any
    derivatives folder but the lesions')."""
    return [f for f in self.files.get(participant_id, [])
            if f.get("suffix") == "mask"
            and f.derivative != LESION_DERIVATIVE
            and f.get("desc") == "brain"]

  def check_masks_match_scans(self) -> None:
    """Rejects a lesion mask whose entities match none of its participant's
    scans (brain masks that match none are left alone, `brain_mask_for`)."""
    for participant in sorted(self.files):
      scans = self.scans(participant)
      for mask in self.lesion_masks(participant):
        if not any(covers(mask, scan) for scan in scans):
          raise InputError(
              f"{mask.path}: matches no scan of {participant} (its entities: "
              f"{_describe(mask)}; scans: "
              f"{', '.join(s.path.name for s in scans) or 'none'})")


def covers(mask: File, scan: File) -> bool:
  """Whether every acquisition entity of `mask` has `scan`'s value."""
  return all(scan.get(k) == v for k, v in mask.acquisition.items()
             if k not in _MASK_NAMES)


def _describe(file: File) -> str:
  entities = {k: v for k, v in file.acquisition.items()
              if k not in _MASK_NAMES}
  return ", ".join(f"{k}={v}" for k, v in sorted(entities.items())) or "none"


def mask_for(scan: File, masks: list[File], pid: str, kind: str) -> File:
  """The most specific of `masks` covering `scan`.

  Masks beside the scans (the raw folder) come before derivatives.

  Raises:
    InputError: naming the scan: no mask covers it, or two equally specific
      ones do.
  """
  covering = [m for m in masks if covers(m, scan)]
  if not covering:
    raise InputError(
        f"{scan.path}: {pid} has no {kind} for this scan (file not found; "
        f"{kind}s of {pid}: {', '.join(m.path.name for m in masks) or 'none'})")
  raw = [m for m in covering if not m.derivative]
  return _most_specific(raw or covering, f"{scan.path}: {kind}")


def brain_mask_for(scan: File, masks: list[File],
                    ignored: collections.Counter[str]) -> File | None:
  """The brain mask for `scan` among those that match it, or None.

  A mask is left out (and counted in `ignored` by reason) unless it covers
  the scan's entities (a `space-` other than the scan's is not the scan's),
  names the scan's session when the scan has one (a session-less mask of
  another pipeline is often an average over sessions), and is on the scan's
  grid.
  """
  usable = []
  for mask in masks:
    if not covers(mask, scan):
      reason = ("in another space" if mask.get("space") != scan.get("space")
                else "of another scan")
    elif scan.get("session") and not mask.get("session"):
      reason = "session-less in a sessioned dataset"
    elif not _same_grid(mask.path, scan.path):
      reason = "on another grid than its scan"
    else:
      usable.append(mask)
      continue
    ignored[f"{reason} ({_folder_name(mask)})"] += 1
  if not usable:
    return None
  raw = [m for m in usable if not m.derivative]
  return _most_specific(raw or usable, f"{scan.path}: brain mask")


def _folder_name(file: File) -> str:
  return f"derivatives/{file.derivative}" if file.derivative else "raw"


def _same_grid(a: Path, b: Path) -> bool:
  """Whether two NIfTI files' headers give one grid (shape and affine).

  An unreadable header is not this function's to report: the file is then
  taken as matching, and its reader names the problem.
  """
  import nibabel as nib  # pylint: disable=g-import-not-at-top
  try:
    first, second = nib.load(a), nib.load(b)
  except Exception:  # pylint: disable=broad-except
    return True
  return (first.shape[:3] == second.shape[:3]
          and np.allclose(first.affine, second.affine, atol=1e-3))


def log_ignored(ignored: collections.Counter[str]) -> None:
  """One line: the brain masks left out, by reason."""
  if ignored:
    log.info("brain masks left out: %s", ", ".join(
        f"{n} {reason}" for reason, n in sorted(ignored.items())))


def _most_specific(masks: list[File], what: str) -> File:
  """The mask naming the most entities; two such are ambiguous."""
  best = max(len(m.acquisition) for m in masks)
  top = [m for m in masks if len(m.acquisition) == best]
  if len(top) > 1:
    raise InputError(f"{what} is ambiguous: "
                     f"{', '.join(sorted(str(m.path) for m in top))}")
  return top[0]
