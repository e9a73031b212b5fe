"""Dataset fingerprint for planning (nnU-Net v2's `DatasetFingerprintExtractor`).

What the planner needs to know about the training split: voxel spacings,
shapes after brain cropping, the number of input channels, intensity
statistics inside the lesions and the sizes of the lesion components.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage

from preprocessing import lesion_labels
from preprocessing.io.atomic import atomic_write_text

# nnU-Net samples at most 1e8 foreground voxels in total for the statistics.
MAX_FOREGROUND_SAMPLES = 10**8


@dataclasses.dataclass(frozen=True)
class IntensityStats:
  """Intensities of one channel inside the lesions (foreground)."""
  mean: float
  std: float
  percentile_00_5: float
  percentile_99_5: float


@dataclasses.dataclass(frozen=True)
class LesionStats:
  """Sizes of the 26-connected lesion components over all subjects.

  The size fields are None when no subject has a lesion.
  """
  num_components: int
  median_voxels: float | None
  p05_voxels: float | None
  median_ml: float | None
  p05_ml: float | None


@dataclasses.dataclass(frozen=True)
class Fingerprint:
  """What planning needs to know about a dataset (JSON-serialisable).

  Attributes:
    spacings: per subject, voxel size in mm per axis.
    shapes_after_crop: per subject, spatial shape after brain cropping.
    num_subjects: number of subjects.
    num_modalities: input channels.
    foreground_intensity: per channel, statistics of lesion voxels (None for
      every channel when there are no lesions).
    lesions: lesion component sizes.
  """
  spacings: tuple[tuple[float, ...], ...]
  shapes_after_crop: tuple[tuple[int, ...], ...]
  num_subjects: int
  num_modalities: int
  foreground_intensity: tuple[IntensityStats | None, ...]
  lesions: LesionStats

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Fingerprint":
    return cls(
        spacings=nested_tuples(d["spacings"], float),
        shapes_after_crop=nested_tuples(d["shapes_after_crop"], int),
        num_subjects=int(d["num_subjects"]),
        num_modalities=int(d["num_modalities"]),
        foreground_intensity=tuple(
            None if s is None else IntensityStats(**s)
            for s in d["foreground_intensity"]),
        lesions=LesionStats(**d["lesions"]))


def nested_tuples(rows: Sequence[Sequence[Any]], kind: type
                  ) -> tuple[tuple, ...]:
  """JSON lists of lists back to tuples of tuples of `kind`."""
  return tuple(tuple(kind(v) for v in row) for row in rows)


def component_sizes(mask: np.ndarray) -> np.ndarray:
  """Voxel counts of the 26-connected (3D; 8 in 2D) components of `mask`."""
  labels, count = scipy.ndimage.label(
      mask, structure=np.ones((3,) * mask.ndim, bool))
  return np.bincount(labels.ravel(), minlength=count + 1)[1:]


def _intensity_stats(values: np.ndarray) -> IntensityStats | None:
  if values.size == 0:
    return None
  low, high = np.percentile(values, [0.5, 99.5])
  return IntensityStats(mean=float(values.mean()), std=float(values.std()),
                        percentile_00_5=float(low),
                        percentile_99_5=float(high))


def _size_stats(voxels: np.ndarray, ml: np.ndarray) -> LesionStats:
  if voxels.size == 0:
    return LesionStats(0, None, None, None, None)
  return LesionStats(
      num_components=int(voxels.size),
      median_voxels=float(np.median(voxels)),
      p05_voxels=float(np.percentile(voxels, 5)),
      median_ml=float(np.median(ml)), p05_ml=float(np.percentile(ml, 5)))


def fingerprint(records: Sequence[Mapping[str, Any]]) -> Fingerprint:
  """Fingerprints a dataset split (as nnU-Net's DatasetFingerprintExtractor).

  Args:
    records: TFDS records (a data source or a list): `image` (X, Y, Z, C),
      `lesion_mask` (X, Y, Z), `spacing` (3,), volumes already cropped.

  Returns:
    The fingerprint. Intensity statistics pool the lesion voxels of all
    subjects (a seeded random sample of at most 1e8 / subjects per subject,
    as nnU-Net).

  Raises:
    ValueError: no records, or records with different channel counts.
  """
  if len(records) == 0:
    raise ValueError("cannot fingerprint an empty dataset")
  per_subject = MAX_FOREGROUND_SAMPLES // len(records)
  rng = np.random.default_rng(1234)
  spacings, shapes, samples, voxels, ml = [], [], [], [], []
  for i in range(len(records)):
    record = records[i]
    image = np.asarray(record["image"])
    # Ignored voxels (another pathology) are neither lesion size nor lesion
    # intensity; nnU-Net's `seg > 0` would count its ignore label as both.
    lesion = np.asarray(record["lesion_mask"]) == lesion_labels.LESION
    spacing = tuple(round(float(s), 6) for s in record["spacing"])
    spacings.append(spacing)
    shapes.append(tuple(int(s) for s in lesion.shape))
    sizes = component_sizes(lesion)
    voxels.append(sizes)
    ml.append(sizes * math.prod(spacing) / 1000.0)
    foreground = image[lesion]
    if len(foreground) > per_subject:
      foreground = foreground[rng.choice(len(foreground), per_subject,
                                         replace=False)]
    samples.append(foreground)
  channels = {s.shape[-1] for s in samples}
  if len(channels) != 1:
    raise ValueError(f"records have different channel counts: {channels}")
  pooled = np.concatenate(samples)
  return Fingerprint(
      spacings=tuple(spacings), shapes_after_crop=tuple(shapes),
      num_subjects=len(records), num_modalities=channels.pop(),
      foreground_intensity=tuple(_intensity_stats(pooled[:, c])
                                 for c in range(pooled.shape[1])),
      lesions=_size_stats(np.concatenate(voxels), np.concatenate(ml)))


def save_fingerprint(fp: Fingerprint, path: str | Path) -> None:
  """Writes the fingerprint as JSON, atomically."""
  atomic_write_text(path, json.dumps(fp.to_dict(), indent=2))


def load_fingerprint(path: str | Path) -> Fingerprint:
  """Reads a fingerprint written by `save_fingerprint`."""
  return Fingerprint.from_dict(json.loads(Path(path).read_text()))
