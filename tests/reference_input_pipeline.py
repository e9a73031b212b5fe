# A frozen copy of pvl_jax/data/input_pipeline.py as of commit a2c08a9, before
# patches were cut from decoded volumes: test_input_pipeline checks that the
# current pipeline yields the very same batches. Do not edit.

"""grain input pipeline: foreground-oversampled, augmented training patches.

Records come from the TFDS array_record dataset (`tfds.data_source`); each
training element is one patch cut from one subject:

* with probability `foreground_fraction` the patch is placed so that a random
  lesion voxel lies inside it (nnU-Net's foreground oversampling; nnU-Net uses
  0.33); otherwise it is placed uniformly at random, so a fraction of those
  contain lesion too;
* augmentations are cheap and label-preserving: random flips per axis,
  intensity scale and shift, additive Gaussian noise.

A 2D model (two entries in `patch_size`) gets axial slabs of thickness one,
squeezed, so the 2D and 3D models train on the same records.

Randomness comes only from grain's per-element seeds (`random_map`), so the
stream is a pure function of the seed and the position in it: deterministic
with any number of worker processes, and resumable from the iterator state.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


class PatchSampler(grain.transforms.RandomMap):
  """Cuts one (optionally augmented) patch from a subject record."""

  def __init__(self, patch_size: Sequence[int], foreground_fraction: float,
               augment: Mapping[str, Any] | None):
    """Initialises the sampler.

    Args:
      patch_size: 3 entries for a 3D model, 2 for a 2D model (axial slices).
      foreground_fraction: probability of forcing a lesion into the patch.
      augment: dict with flip (bool), intensity_scale, intensity_shift,
        noise_std, noise_prob; None disables augmentation.
    """
    self.patch_size = tuple(int(p) for p in patch_size)
    self.foreground_fraction = float(foreground_fraction)
    self.augment = dict(augment) if augment else None

  def random_map(self, record: Mapping[str, Any],
                 rng: np.random.Generator) -> Batch:
    image = np.asarray(record["image"], np.float32)
    label = np.asarray(record["lesion_mask"], np.uint8)
    # A 2D patch is an axial slab of thickness one. Volumes are at least
    # patch-sized (checked by config_validation.validate_patch_size).
    patch3d = self.patch_size + (1,) * (3 - len(self.patch_size))
    force_fg = rng.random() < self.foreground_fraction
    start = sample_patch_start(label, patch3d, force_fg, rng)
    window = tuple(slice(s, s + p) for s, p in zip(start, patch3d))
    image_patch, label_patch = image[window], label[window]
    if len(self.patch_size) == 2:
      image_patch, label_patch = image_patch[:, :, 0], label_patch[:, :, 0]
    if self.augment:
      image_patch, label_patch = augment_patch(image_patch, label_patch,
                                               self.augment, rng)
    return {
        "image": np.ascontiguousarray(image_patch, np.float32),
        "label": np.ascontiguousarray(label_patch, np.int32),
        "hand_function": np.int32(record["hand_function"]),
        "subject_index": np.int32(record["subject_index"]),
    }


def sample_patch_start(label: np.ndarray, patch: Sequence[int],
                       force_foreground: bool,
                       rng: np.random.Generator) -> tuple[int, ...]:
  """Chooses the patch's corner voxel.

  Args:
    label: lesion mask (at least as large as `patch` on every axis).
    patch: patch shape.
    force_foreground: place the patch so that a uniformly chosen lesion voxel
      falls at a uniformly random position inside it (falls back to a random
      patch for a lesion-free subject).
    rng: the element's generator.

  Returns:
    Start index per axis.
  """
  high = [s - p for s, p in zip(label.shape, patch)]
  if force_foreground:
    lesion = np.flatnonzero(label)
    if lesion.size:
      voxel = np.unravel_index(lesion[rng.integers(lesion.size)], label.shape)
      return tuple(int(np.clip(v - rng.integers(p), 0, h))
                   for v, p, h in zip(voxel, patch, high))
  return tuple(int(rng.integers(h + 1)) for h in high)


def augment_patch(image: np.ndarray, label: np.ndarray,
                  options: Mapping[str, Any], rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Random flips, intensity scale/shift and Gaussian noise.

  Args:
    image: (*spatial, channels) patch.
    label: (*spatial) patch.
    options: see `PatchSampler`.
    rng: the element's generator.

  Returns:
    Augmented (image, label).
  """
  if options.get("flip", False):
    for axis in range(label.ndim):
      if rng.random() < 0.5:
        image, label = np.flip(image, axis), np.flip(label, axis)
  scale = 1.0 + rng.uniform(-1, 1) * options.get("intensity_scale", 0.0)
  shift = rng.uniform(-1, 1) * options.get("intensity_shift", 0.0)
  image = image * scale + shift
  if rng.random() < options.get("noise_prob", 0.0):
    std = rng.uniform(0, options.get("noise_std", 0.0))
    image = image + rng.normal(0, std, image.shape).astype(np.float32)
  return image, label


def with_subject_index(source: Any) -> grain.MapDataset:
  """A MapDataset over `source` whose records carry their index."""
  return grain.MapDataset.source(source).map_with_index(
      lambda i, record: {**record, "subject_index": i})


def train_dataset(source: Any, data_config: ml_collections.ConfigDict,
                  batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Infinite stream of this process's slices of the global training batches.

  The global stream of patches is a pure function of the seed: element i of
  the (shuffled, repeated) subject sequence, cut and augmented with element
  i's own random generator. Global batch b holds elements
  [b * G, (b + 1) * G) for G = batch_size * process_count, and process p
  computes only its slice [b * G + p * batch_size, ... + batch_size). So the
  global batch, and with it training, is the same for any number of
  processes, and each process reads only its own share of the data.

  Args:
    source: random-access TFDS data source of the training split.
    data_config: `config.data` (patch_size, foreground_fraction, augment,
      num_workers).
    batch_size: per-process batch size.
    seed: shuffling and augmentation seed.
    process_index: this process's index (multi-host data loading).
    process_count: number of processes.

  Returns:
    A grain IterDataset of dict batches (image, label, hand_function,
    subject_index); with worker processes when data_config.num_workers > 0.
  """
  patches = with_subject_index(source).shuffle(seed=seed).repeat()
  patches = patches.random_map(
      PatchSampler(data_config.patch_size, data_config.foreground_fraction,
                   data_config.augment.to_dict()), seed=seed)
  global_batch = batch_size * process_count

  def global_element(i: int) -> int:
    return (i // batch_size) * global_batch + process_index * batch_size + (
        i % batch_size)

  ds = grain.MapDataset.range(len(patches) // process_count).map(
      lambda i: patches[global_element(i)])
  ds = ds.batch(batch_size, drop_remainder=True).to_iter_dataset()
  if data_config.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.num_workers))
  return ds


def fixed_patches(source: Any, data_config: ml_collections.ConfigDict,
                  num_patches: int, batch_size: int, seed: int) -> list[Batch]:
  """Deterministic, unaugmented patch batches for periodic validation."""
  ds = with_subject_index(source).repeat()
  ds = ds.random_map(PatchSampler(data_config.patch_size,
                                  data_config.foreground_fraction, None),
                     seed=seed)
  ds = ds.batch(batch_size, drop_remainder=True)
  return [ds[i] for i in range(max(num_patches // batch_size, 1))]
