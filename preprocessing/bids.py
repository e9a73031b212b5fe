"""Reading a BIDS cohort: which scans and masks each participant uses.

Layout (paths relative to the cohort directory; `ses-`, `acq-`, `run-`,
`rec-`, `space-`, `desc-` and the other BIDS entities may appear in any
name):

  participants.tsv        participant_id, label column, optional split, site
  sub-001[/ses-01]/anat/sub-001[_ses-01][_run-1]_FLAIR.nii.gz
  derivatives/lesions/sub-001[/ses-01]/anat/
      sub-001[_ses-01]_label-lesion_mask.nii.gz
  sub-001/anat/sub-001_desc-brain_mask.nii.gz     optional brain mask, beside
                                                  the scan or in any other
                                                  derivatives/<name>/ folder

The files are indexed with pybids (the raw folder and each derivatives
folder on its own, so neither needs a dataset_description.json). Per
participant the scans of the first modality are narrowed by the entity
filter (`Selection.entities`, e.g. `acq-3D`), then to one session
(`Selection.session`: first, last or a label) and one run (`Selection.run`:
first, last or a number, which participants without runs ignore); every
other modality is taken from the same
session by the same rules (`select_scans`, which `pvl_jax.predict` uses on
its own). Masks are looked for only then, for the chosen scan: a lesion or
brain mask belongs to a scan when each entity it has (but `label` and
`desc`, which name the mask) has the scan's value, so
`sub-1_ses-01_label-lesion_mask` covers every run of session 01; the most
specific one is used.

Other pipelines' derivatives (an fMRIPrep tree beside derivatives/lesions)
never stop the reading: their participants need no participants.tsv row,
and a brain mask of theirs is used only for a scan it matches -- every
entity (a `space-` other than the scan's does not), a session when the scan
has one, and the scan's grid (shape and affine, from the headers) --
otherwise it is left alone, and one log line counts what was left and why.

The index and the masks' rules are `preprocessing.bids_index`'s. Every
problem is reported as an `InputError` naming the file or folder and what is
wrong, before any image is read (brain masks' headers aside).
"""

import collections
import dataclasses
import os
from pathlib import Path

from preprocessing import bids_index
from preprocessing import participants as participants_lib
from preprocessing.io.errors import InputError

PARTICIPANTS_FILE = participants_lib.PARTICIPANTS_FILE
ID_COLUMN = participants_lib.ID_COLUMN
read_participants = participants_lib.read_participants
LESION_DERIVATIVE = bids_index.LESION_DERIVATIVE
_RULES = ("first", "last")


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which of a participant's scans are used (see the module docstring).

  Attributes:
    session: "first", "last" (in label order, numerically when all labels
      are numbers) or a session label, e.g. "02".
    run: "first", "last" or a run number, e.g. "2".
    entities: a filter such as "acq-3D,rec-norm": only scans with these
      entity values (BIDS short names) are considered; "" keeps all.
  """
  session: str = "first"
  run: str = "last"
  entities: str = ""

  def filters(self) -> dict[str, str]:
    """The entity filter as {pybids entity name: value}."""
    if not self.entities:
      return {}
    names = bids_index.short_names()
    found = {}
    for item in filter(None, (part.strip() for part in
                              self.entities.split(","))):
      key, _, value = item.partition("-")
      if key not in names or not value or key in ("sub", "ses", "run"):
        raise InputError(
            f"entity filter {item!r} (data.bids_filter, --bids_filter): "
            "expected <entity>-<value> with a BIDS entity other than sub, "
            f"ses and run (e.g. acq-3D; known: {', '.join(sorted(names))})")
      found[names[key]] = value
    return found

  def check(self) -> None:
    """InputError naming the rule that is malformed."""
    if not self.session:
      raise InputError("session rule (data.session, --session) is empty: "
                       "first, last or a session label")
    if self.run not in _RULES and not self.run.isdigit():
      raise InputError(f"run rule {self.run!r} (data.run, --run): first, "
                       "last or a run number")
    self.filters()


@dataclasses.dataclass(frozen=True)
class Subject:
  """One participant's label and files.

  Attributes:
    participant_id: e.g. "sub-001".
    hand_function: 0 good, 1 bad (the chosen label column), None unlabelled.
    image_paths: modality -> scan, e.g. {"FLAIR": .../sub-001_FLAIR.nii.gz}.
    lesion_mask_path: the manual lesion segmentation.
    brain_mask_path: the brain mask, or None when the cohort has none for
      this scan.
    session: the session used (None for a layout without sessions).
    split: "train"/"test" from participants.tsv's split column, or None.
    site: participants.tsv's site value, or None.
  """
  participant_id: str
  hand_function: int | None
  image_paths: dict[str, Path]
  lesion_mask_path: Path
  brain_mask_path: Path | None
  session: str | None = None
  split: str | None = None
  site: str | None = None


def load_cohort(bids_dir: str | os.PathLike,
                modalities: tuple[str, ...] = ("FLAIR",),
                label_column: str = "hand_function",
                selection: Selection = Selection(),
                phenotype: str | os.PathLike | None = None,
                require_label_column: bool = True) -> list[Subject]:
  """Finds every participant's files and label, checking nothing is missing.

  Args:
    bids_dir: the cohort directory.
    modalities: BIDS suffixes of the required scans, e.g. ("FLAIR", "T1w");
      the first is the one the lesion mask is drawn on.
    label_column: column stored as `Subject.hand_function`.
    selection: which session, run and acquisition are used.
    phenotype: a table the labels come from instead of participants.tsv.
    require_label_column: a participants table without `label_column` is an
      error; False: every participant is unlabelled.

  Returns:
    Subjects sorted by participant_id.

  Raises:
    InputError: bids_dir is missing, a table is invalid
      (`participants.read_table`), a scan folder or mask has no
      participants.tsv row, a rule matches no scan or several, a mask
      matches no scan, or a required scan or lesion mask is missing.
  """
  bids_dir = Path(bids_dir)
  if not bids_dir.is_dir():
    problem = "not a directory" if bids_dir.exists() else "not found"
    raise InputError(f"{bids_dir}: BIDS cohort directory {problem}")
  selection.check()
  tsv = bids_dir / PARTICIPANTS_FILE
  rows = participants_lib.read_table(tsv, label_column, phenotype,
                                     require_label_column)
  index = bids_index.Index(bids_dir)
  listed = {row.participant_id for row in rows}
  for folder, ids in index.subjects.items():
    orphans = sorted(ids - listed)
    if orphans:
      raise InputError(f"{tsv}: no row for {', '.join(orphans)} (found in "
                       f"{folder})")
  index.check_masks_match_scans()
  ignored: collections.Counter[str] = collections.Counter()
  subjects = [_find_subject_files(index, row, modalities, selection, ignored)
              for row in sorted(rows, key=lambda r: r.participant_id)]
  bids_index.log_ignored(ignored)
  return subjects


@dataclasses.dataclass(frozen=True)
class Scans:
  """One participant's chosen scans (`select_scans`).

  Attributes:
    participant_id: e.g. "sub-001".
    session: the session used (None for a layout without sessions).
    image_paths: modality -> scan, in the order of the modalities asked for.
  """
  participant_id: str
  session: str | None
  image_paths: dict[str, Path]


def select_scans(bids_dir: str | os.PathLike,
                 modalities: tuple[str, ...] = ("FLAIR",),
                 selection: Selection = Selection()) -> list[Scans]:
  """Every participant's scans chosen by the rules, as training chooses them.

  No participants.tsv, label or mask is needed (new scans to segment).

  Args:
    bids_dir: a BIDS folder of raw scans.
    modalities: BIDS suffixes of the scans, the reference first.
    selection: which session, run and acquisition are used.

  Returns:
    One entry per participant that has a scan of the first modality, sorted
    by participant id.

  Raises:
    InputError: bids_dir is missing, no participant has a scan of the first
      modality that the entity filter keeps, or a participant's rules match
      no scan or several (as in training).
  """
  bids_dir = Path(bids_dir)
  if not bids_dir.is_dir():
    problem = "not a directory" if bids_dir.exists() else "not found"
    raise InputError(f"{bids_dir}: BIDS folder {problem}")
  selection.check()
  index = bids_index.Index(bids_dir, derivatives=False)
  if not any(index.scans(pid, modalities[0], **selection.filters())
             for pid in index.files):
    raise InputError(
        f"{bids_dir}: no {modalities[0]} scan in the BIDS folder"
        + (f" with {selection.entities} (--bids_filter)"
           if selection.entities else "")
        + f" (looked for sub-*/[ses-*/]anat/sub-*_{modalities[0]}.nii[.gz])")
  chosen = []
  # Every participant with a scan of the modality, as training reads every
  # participant: one the filter leaves without a scan is an error.
  for pid in sorted(pid for pid in index.files
                    if index.scans(pid, modalities[0])):
    images = _choose_scans(index, pid, modalities, selection)
    chosen.append(Scans(pid, next(iter(images.values())).get("session")
                        or None, {m: f.path for m, f in images.items()}))
  return chosen


def _order_key(values: list[str]):
  """Sort key: numeric when every value is a number, else by text."""
  return int if all(v.isdigit() for v in values) else str


def _pick(files: list[bids_index.File], entity: str, rule: str, what: str,
          key: str) -> list[bids_index.File]:
  """The files whose `entity` has the first, last or the named value.

  When no file has the entity, first and last (and a run number: a scan
  without runs is its only run) keep them all; a rule that names a value no
  file has is an error naming `what` and the config `key`.
  """
  values = sorted({f.get(entity) for f in files})
  present = [v for v in values if v]
  if not present and (rule in _RULES or entity == "run"):
    return files
  if rule in _RULES:
    chosen = sorted(present, key=_order_key(present))[
        0 if rule == "first" else -1]
  elif entity == "run" and rule.isdigit():  # run-2 and run-02 are one run
    chosen = next((v for v in present if int(v) == int(rule)), rule)
  else:
    chosen = rule
  kept = [f for f in files if f.get(entity) == chosen]
  if not kept:
    raise InputError(f"{what}: {key} {rule!r} matches no scan (found: "
                     f"{', '.join(v or '<none>' for v in values)})")
  return kept


def _one_scan(index: bids_index.Index, pid: str, modality: str,
              selection: Selection, session: str | None) -> bids_index.File:
  """The scan of one modality that the rules choose.

  Args:
    index: the cohort's index.
    pid: the participant.
    modality: the scan's suffix.
    selection: the rules.
    session: the session the first modality's scan is from; None for the
      first modality (then `selection.session` chooses it).
  """
  folder = index.root / pid
  what = f"{folder}: {modality}"
  scans = index.scans(pid, modality, **selection.filters())
  if not scans:
    raise InputError(f"{folder}: {pid} has no {modality} scan"
                     + (f" with {selection.entities} (data.bids_filter, "
                        "--bids_filter)" if selection.entities else "")
                     + " (file not found)")
  scans = _pick(scans, "session",
                selection.session if session is None else session, what,
                "session rule (data.session, --session)")
  scans = _pick(scans, "run", selection.run, what,
                "run rule (data.run, --run)")
  if len(scans) > 1:
    raise InputError(
        f"{what}: the session and run rules match {len(scans)} scans: "
        f"{', '.join(sorted(s.path.name for s in scans))}; choose one with "
        "data.bids_filter (--bids_filter, e.g. acq-<label>), data.session or "
        "data.run")
  return scans[0]


def _choose_scans(index: bids_index.Index, pid: str,
                  modalities: tuple[str, ...], selection: Selection
                  ) -> dict[str, bids_index.File]:
  """A participant's scan per modality, all from the reference's session."""
  images: dict[str, bids_index.File] = {}
  for modality in modalities:
    reference = next(iter(images.values()), None)
    images[modality] = _one_scan(
        index, pid, modality, selection,
        None if reference is None else reference.get("session"))
  return images


def _find_subject_files(index: bids_index.Index,
                        row: participants_lib.Participant,
                        modalities: tuple[str, ...], selection: Selection,
                        ignored: collections.Counter[str]) -> Subject:
  """The scans the rules choose, then the masks covering the reference."""
  pid = row.participant_id
  images = _choose_scans(index, pid, modalities, selection)
  reference = next(iter(images.values()))
  lesion = bids_index.mask_for(reference, index.lesion_masks(pid), pid,
                               "lesion mask")
  brain = bids_index.brain_mask_for(reference, index.brain_masks(pid), ignored)
  return Subject(
      participant_id=pid, hand_function=row.label,
      image_paths={m: f.path for m, f in images.items()},
      lesion_mask_path=lesion.path,
      brain_mask_path=None if brain is None else brain.path,
      session=reference.get("session") or None,
      split=row.split, site=row.site)
