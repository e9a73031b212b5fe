"""Reading fields of the TFDS records (one record per subject)."""

from collections.abc import Mapping
from typing import Any


def subject_id(record: Mapping[str, Any]) -> str:
  """The record's subject id as text (TFDS returns bytes)."""
  subject = record["subject_id"]
  return subject.decode() if isinstance(subject, bytes) else str(subject)


def subject_ids(source: Any) -> list[str]:
  """Subject id of every record of a split, in record order."""
  return [subject_id(source[i]) for i in range(len(source))]


def volume_shapes(sources: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Subject id -> cropped spatial shape, over all splits."""
  shapes = {}
  for source in sources.values():
    for i in range(len(source)):
      record = source[i]
      shapes[subject_id(record)] = tuple(record["lesion_mask"].shape)
  return shapes
