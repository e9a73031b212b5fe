"""participants.tsv (and an optional phenotype table): labels, splits, sites.

Each participant gets a binary label from a chosen column (0 good / 1 bad
hand function by default); `n/a` or an empty cell means unlabelled (None).
The label may come from a phenotype table instead (BIDS keeps assessments
in `phenotype/<name>.tsv`, keyed by participant_id); participants missing
from it are unlabelled. Two optional columns of participants.tsv steer the
folds (`preprocessing.folds`): `split` (train / test: a predefined test set)
and `site` (folds grouped by site).

The tables are read here rather than with pandas (as pybids does) so that
every problem is reported with its file and line number.
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
SPLIT_COLUMN = "split"
SITE_COLUMN = "site"
SPLIT_VALUES = ("train", "test")
# BIDS labels are alphanumeric; anything else (dots, slashes, "..") could make
# the id escape the cohort directory when it is joined into a path.
_PARTICIPANT_ID = re.compile(r"sub-[A-Za-z0-9]+")
_LABELS = {"0": 0, "1": 1}
# BIDS spellings of a missing value.
MISSING = ("", "n/a")


@dataclasses.dataclass(frozen=True)
class Participant:
  """One row of participants.tsv.

  Attributes:
    participant_id: e.g. "sub-001".
    label: 0, 1, or None when unlabelled (`n/a`, empty, or absent).
    split: "train" or "test" from the `split` column; None without it.
    site: the `site` column's value; None without the column.
  """
  participant_id: str
  label: int | None
  split: str | None = None
  site: str | None = None


def read_participants(path: str | os.PathLike,
                      label_column: str = "hand_function"
                      ) -> dict[str, int | None]:
  """participant_id -> label (0, 1 or None), in file order.

  Raises:
    InputError: see `read_table`; the label column must exist.
  """
  return {p.participant_id: p.label for p in read_table(path, label_column)}


def read_table(path: str | os.PathLike, label_column: str = "hand_function",
               phenotype: str | os.PathLike | None = None,
               require_label_column: bool = True) -> list[Participant]:
  """Reads and validates participants.tsv (and the phenotype table).

  Args:
    path: participants.tsv (UTF-8, optionally with a byte-order mark).
    label_column: the column holding the binary label.
    phenotype: a table (participant_id + `label_column`) to take the labels
      from instead of participants.tsv; None: participants.tsv has them.
    require_label_column: a table without `label_column` is an error; False:
      every participant is unlabelled.

  Returns:
    The participants in file order.

  Raises:
    InputError: a table is missing, not UTF-8, empty, lacks a column, has
      malformed rows, invalid or duplicate ids, labels other than 0/1/n/a,
      split values other than train/test, or missing site values; the
      phenotype table names a participant participants.tsv lacks.
  """
  path = Path(path)
  table = _Table.read(path)
  if phenotype is not None:
    pheno = _Table.read(Path(phenotype))
    labels = pheno.labels(label_column, require_label_column)
    unknown = sorted(set(labels) - set(table.ids))
    if unknown:
      raise InputError(f"{phenotype}: participant(s) {', '.join(unknown)} are"
                       f" not in {path}")
  else:
    labels = table.labels(label_column, require_label_column)
  splits = table.values(SPLIT_COLUMN, _check_split)
  sites = table.values(SITE_COLUMN, _check_site)
  return [Participant(pid, labels.get(pid), splits.get(pid), sites.get(pid))
          for pid in table.ids]


def has_column(path: str | os.PathLike, column: str) -> bool:
  """Whether a valid table has `column` (InputError if it is invalid)."""
  return column in _Table.read(Path(path)).header


@dataclasses.dataclass(frozen=True)
class _Table:
  """A validated TSV keyed by participant_id."""
  path: Path
  header: list[str]
  rows: list[tuple[int, list[str]]]  # (line number, cells)

  @property
  def ids(self) -> list[str]:
    index = self.header.index(ID_COLUMN)
    return [row[index] for _, row in self.rows]

  @classmethod
  def read(cls, path: Path) -> "_Table":
    header, rows = _read_tsv(path)
    id_index = _column_index(path, header, ID_COLUMN)
    lines: dict[str, list[int]] = {}
    for line, row in rows:
      if len(row) != len(header):
        raise InputError(f"{path}: line {line}: {len(row)} fields but the "
                         f"header has {len(header)} (is the file "
                         "tab-separated?)")
      _check_participant_id(path, line, row[id_index])
      lines.setdefault(row[id_index], []).append(line)
    duplicates = [f"{pid} (lines {', '.join(map(str, found))})"
                  for pid, found in lines.items() if len(found) > 1]
    if duplicates:
      raise InputError(f"{path}: duplicate participant ids: "
                       f"{'; '.join(duplicates)}")
    return cls(path, header, rows)

  def labels(self, column: str, required: bool) -> dict[str, int | None]:
    if column not in self.header and not required:
      return {}
    index = _column_index(self.path, self.header, column)
    id_index = self.header.index(ID_COLUMN)
    return {row[id_index]: _parse_label(self.path, line, column, row[index])
            for line, row in self.rows}

  def values(self, column: str, check) -> dict[str, str]:
    """participant_id -> checked value of an optional column ({} if none)."""
    if column not in self.header:
      return {}
    index = self.header.index(column)
    id_index = self.header.index(ID_COLUMN)
    return {row[id_index]: check(self.path, line, row[index])
            for line, row in self.rows}


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


def _parse_label(path: Path, line: int, column: str, value: str
                 ) -> int | None:
  if value in MISSING:
    return None
  if value not in _LABELS:
    raise InputError(f"{path}: line {line}: {column} is {value!r}, must be "
                     "0, 1 or n/a")
  return _LABELS[value]


def _check_split(path: Path, line: int, value: str) -> str:
  if value not in SPLIT_VALUES:
    raise InputError(f"{path}: line {line}: {SPLIT_COLUMN} is {value!r}, "
                     f"must be {' or '.join(SPLIT_VALUES)}")
  return value


def _check_site(path: Path, line: int, value: str) -> str:
  if value in MISSING:
    raise InputError(f"{path}: line {line}: missing {SITE_COLUMN} value (folds"
                     " are grouped by site; give every participant one)")
  return value
