"""Records decoded once into memory-mapped volumes, for cutting patches.

The records' volumes are zlib-compressed, and decompressing one costs far
more than cutting a patch from it (13 ms for a 2 mm volume, 80 ms for a
1 mm one; a 2D batch holds over a hundred patches). So each subject is
decoded once per dataset (`decoded_subjects`) into uncompressed .npy files
next to the records, which every process memory-maps: a patch reads only
its own voxels, and the page cache holds a volume once for all worker
processes and runs (22 MB per 1 mm subject on disk, 3 times its record).
The lesion voxels are kept as flat indices (foreground sampling draws from
them) and, on demand, grouped by lesion (`lesion_components`).
"""

from collections.abc import Mapping
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from preprocessing import lesion_labels
from preprocessing.io.atomic import atomic_directory
from pvl_jax.data import records
from pvl_jax.data import template_grid

# Decoded volumes live in the TFDS dataset directory: its records never
# change (its path fingerprints the cohort), so neither do they.
DECODED_DIR = "decoded"
# The compressed features; skipped when only a record's header is read.
_VOLUME_FEATURES = ("image", "lesion_mask", "brain_mask")
# Files of a decoded subject: the image, the lesion mask (uint8) and the
# flat indices of its lesion voxels (foreground sampling draws from these).
_DECODED_FILES = ("image", "label", "lesion")



@dataclasses.dataclass(frozen=True)
class Subject:
  """One record of a split, its volumes decoded into .npy files.

  Attributes:
    index: the record's index in its split.
    hand_function: the record's hand-function class.
    directory: holds the `_DECODED_FILES` (.npy).
    origin: the template voxel of the record's voxel 0
      (`template_grid.record_origin`), which places its patches there
      (`template_position`).
  """
  index: int
  hand_function: int
  directory: str
  origin: tuple[int, ...]

  def volumes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, lesion mask, flat lesion voxel indices), memory-mapped."""
    return _mapped(self.directory)

  def lesions(self) -> tuple[np.ndarray, np.ndarray]:
    """The lesion voxels grouped by lesion (`lesion_components`)."""
    return _lesion_components(self.directory)


@functools.cache
def _mapped(directory: str) -> tuple[np.ndarray, ...]:
  # Mapped once per process; a patch then faults in only its own pages.
  return tuple(np.load(os.path.join(directory, f"{name}.npy"), mmap_mode="r")
               for name in _DECODED_FILES)


@functools.cache
def _lesion_components(directory: str) -> tuple[np.ndarray, np.ndarray]:
  # Labelled once per process and subject (a few ms for a 2 mm volume).
  _, label, lesion = _mapped(directory)
  return lesion_components(np.asarray(label) == lesion_labels.LESION,
                           np.asarray(lesion))


def lesion_components(mask: np.ndarray, lesion: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The lesion voxels of `mask`, ordered by 26-connected component.

  26-connected, as the lesion-wise metrics count lesions (WMH's rule).

  Args:
    mask: the binary lesion mask.
    lesion: its flat (C order) lesion voxel indices, ascending.

  Returns:
    (the indices reordered so that each component's are contiguous,
    offsets: component c holds entries offsets[c]:offsets[c + 1]).
  """
  labels, count = lesion_labels.components(mask)
  component = labels.ravel()[lesion]
  order = np.argsort(component, kind="stable")
  offsets = np.searchsorted(component[order], np.arange(1, count + 2))
  return lesion[order], offsets


def decoded_subjects(source: Any,
                     template: template_grid.TemplateGrid | None = None
                     ) -> list[Subject]:
  """The subjects of a split, decoding those not decoded before.

  Args:
    source: a TFDS data source (`builder.as_data_source(split)`).
    template: the located head's template grid, which the origins are in;
      None: each record's own original grid (`template_grid.record_origin`).

  Returns:
    One Subject per record, in record order.
  """
  root = Path(source.dataset_info.data_dir) / DECODED_DIR
  # Headers only: finding the decoded files decompresses nothing.
  headers = dataclasses.replace(source, decoders={
      name: tfds.decode.SkipDecoding() for name in _VOLUME_FEATURES})
  subjects = []
  for index in range(len(source)):
    header = headers[index]
    directory = root / records.subject_id(header)
    if not directory.is_dir():
      _decode(source[index], directory)
    subjects.append(Subject(index, int(header["hand_function"]),
                            str(directory),
                            template_grid.record_origin(header, template)))
  return subjects


def _decode(record: Mapping[str, Any], directory: Path) -> None:
  """Writes a record's volumes to `directory` (appears complete or not)."""
  label = np.asarray(record["lesion_mask"], np.uint8)
  # Ignored voxels (lesion_labels.IGNORE) are no lesion to sample around.
  arrays = {"image": np.asarray(record["image"], np.float32), "label": label,
            "lesion": np.flatnonzero(label == lesion_labels.LESION)}
  try:
    with atomic_directory(directory) as tmp:
      for name in _DECODED_FILES:
        np.save(tmp / f"{name}.npy", arrays[name])
  except OSError:
    # A concurrent run of the same dataset (a sweep point) finished first.
    if not directory.is_dir():
      raise
