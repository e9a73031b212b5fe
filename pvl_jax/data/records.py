"""Reading fields of the TFDS records (one record per subject)."""

from collections.abc import Mapping
import dataclasses
from typing import Any

import tensorflow_datasets as tfds

# The compressed volumes of a record; `headers` skips decoding them.
VOLUME_FEATURES = ("image", "lesion_mask", "brain_mask")


def subject_id(record: Mapping[str, Any]) -> str:
  """The record's subject id as text (TFDS returns bytes)."""
  return text(record["subject_id"])


def text(value: Any) -> str:
  """A TFDS Text feature's value as str (TFDS returns bytes)."""
  return value.decode() if isinstance(value, bytes) else str(value)


def headers(source: Any) -> list[Mapping[str, Any]]:
  """Every record of a split without its volumes decoded, in record order.

  Decompressing a volume costs far more than reading the record (13 ms for
  a 2 mm subject); ids, labels and sources need none of them.
  """
  skip = dataclasses.replace(source, decoders={
      name: tfds.decode.SkipDecoding() for name in VOLUME_FEATURES})
  return [skip[i] for i in range(len(skip))]


def subject_ids(source: Any) -> list[str]:
  """Subject id of every record of a split, in record order."""
  return [subject_id(record) for record in headers(source)]


def volume_shapes(sources: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Subject id -> cropped spatial shape, over all splits."""
  shapes = {}
  for source in sources.values():
    for i in range(len(source)):
      record = source[i]
      shapes[subject_id(record)] = tuple(record["lesion_mask"].shape)
  return shapes
