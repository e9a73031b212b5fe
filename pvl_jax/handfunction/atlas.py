"""A user's atlas as lesion-load regions: a label map and its names table.

A real study uses real tracts: e.g. the JHU ICBM-DTI-81 white-matter labels
that a lab already has, resampled (nearest neighbour) to the masks' template
grid. The label map is a 3D NIfTI of non-negative integer labels, 0 being
background, in exactly the grid (shape and affine) of the lesion masks. The
names table is a TSV (`.tsv`, tab-separated) or CSV (any other extension)
file with a header holding the columns `index` and `name` (as BIDS
`*_dseg.tsv` files do; other columns are ignored), one row per label; a row
for index 0 is allowed and ignored. Every label of the map needs a row and
every row (but 0) a voxel, so a table of another atlas or version is caught.
"""

import csv
import os
from pathlib import Path

import numpy as np

from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import regions

INDEX_COLUMN = "index"
NAME_COLUMN = "name"
_SEPARATORS = {"\t": "tab", ",": "comma"}


def read_names(path: str | os.PathLike) -> dict[int, str]:
  """Reads a names table: label index -> name (index 0 left out).

  Raises:
    InputError: the file is missing or unreadable, lacks a column, or has
      a non-integer or negative index, a duplicate index or name, or an
      empty name.
  """
  path = Path(path)
  delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f, delimiter=delimiter))
  except FileNotFoundError:
    raise InputError(f"{path}: atlas names table not found") from None
  except (OSError, UnicodeDecodeError, csv.Error) as err:
    raise InputError(f"{path}: unreadable atlas names table ({err})") from None
  rows = [(line, row) for line, row in enumerate(rows, start=1)
          if any(cell.strip() for cell in row)]
  if not rows:
    raise InputError(f"{path}: atlas names table is empty")
  header = [cell.strip() for cell in rows[0][1]]
  for column in (INDEX_COLUMN, NAME_COLUMN):
    if column not in header:
      raise InputError(f"{path}: no '{column}' column in the header "
                       f"{header} (expected columns '{INDEX_COLUMN}' and "
                       f"'{NAME_COLUMN}', {_SEPARATORS[delimiter]}-"
                       "separated)")
  index_at, name_at = header.index(INDEX_COLUMN), header.index(NAME_COLUMN)
  names: dict[int, str] = {}
  for line, row in rows[1:]:
    if len(row) != len(header):
      raise InputError(f"{path}: line {line}: {len(row)} fields but the "
                       f"header has {len(header)}")
    index_text, name = row[index_at].strip(), row[name_at].strip()
    try:
      index = int(index_text)
    except ValueError:
      index = -1
    if index < 0:
      raise InputError(f"{path}: line {line}: index {index_text!r} is not a "
                       "non-negative integer")
    if index in names:
      raise InputError(f"{path}: line {line}: index {index} appears twice")
    if not name:
      raise InputError(f"{path}: line {line}: empty name")
    if name in names.values():
      raise InputError(f"{path}: line {line}: name {name!r} appears twice")
    names[index] = name
  names.pop(0, None)
  return names


def load_atlas(path: str | os.PathLike, names_path: str | os.PathLike,
               grid_shape: tuple[int, ...], grid_affine: np.ndarray,
               grid_path: str | os.PathLike) -> regions.RegionSet:
  """Reads and checks an atlas; every label becomes a region.

  Args:
    path: the label map (NIfTI).
    names_path: its names table.
    grid_shape: the lesion masks' grid shape,
    grid_affine: and affine,
    grid_path: and the mask they were read from (named in errors).

  Returns:
    Regions named as the table names them, in label order; the tract is
    every region (`RegionSet.select` narrows both).

  Raises:
    InputError: naming the file and the problem: unreadable, another grid
      (shape or affine), labels that are not non-negative integers, a label
      without a name or a name without voxels.
  """
  names = read_names(names_path)
  labels, affine = nifti.load_volume(path, kind="atlas label map")
  nifti.check_same_geometry(grid_path, grid_shape, grid_affine, path,
                            labels.shape, affine)
  if np.any(labels < 0) or np.any(labels != np.round(labels)):
    raise InputError(f"{path}: atlas labels must be non-negative integers")
  flat = labels.astype(np.int64).reshape(-1)
  present = set(np.unique(flat).tolist()) - {0}
  unnamed = sorted(present - set(names))
  if unnamed:
    raise InputError(f"{names_path}: no name for label(s) "
                     f"{', '.join(map(str, unnamed))} of {path} (a names "
                     "table of another atlas?)")
  empty = sorted(set(names) - present)
  if empty:
    raise InputError(f"{names_path}: no voxel of {path} has label(s) "
                     + ", ".join(f"{i} ({names[i]})" for i in empty)
                     + " (a names table of another atlas, or a map "
                     "resampled so coarsely that labels vanished?)")
  masks = {names[index]: flat == index for index in sorted(names)}
  return regions.RegionSet(masks, tuple(masks), str(names_path))
