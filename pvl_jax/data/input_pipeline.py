"""grain input pipeline: foreground-oversampled, augmented training patches.

Records come from the TFDS array_record dataset (`tfds.data_source`); each
training element is one patch cut from one subject:

* the last round(B * foreground_fraction) patches of every batch of B are
  placed so that a random lesion voxel lies inside them, the others
  uniformly at random (so some of those contain lesion too): nnU-Net's
  foreground oversampling, which forces the last 33% of its batch
  (`_oversample_last_XX_percent`), so that every batch of 2 holds a lesion.
  Which lesion voxel (`data.foreground_sampling`): "voxel" draws one
  uniformly among all lesion voxels, as nnU-Net does, so a large lesion is
  chosen in proportion to its volume and a one-voxel lesion almost never;
  "lesion" first draws a lesion (26-connected component, as the metrics
  count them) uniformly, then a voxel in it, so every lesion is centred as
  often as any other, whatever its size;
* augmentation (`data.augment.recipe`): "basic" draws cheap,
  label-preserving ones here, per patch (random flips per axis, intensity
  scale and shift, additive Gaussian noise); "nnunet" draws nnU-Net's in the
  train step on the device (`pvl_jax.training.augmentation`), and the host
  only cuts a larger patch around the chosen one for its rotations and
  scaling to resample (`augmentation_geometry.input_patch_size`).

A 2D model (two entries in `patch_size`) gets axial slabs of thickness one,
squeezed, so the 2D and 3D models train on the same records. Patches are cut
from the subjects' decoded, memory-mapped volumes (`decoded_subjects`).

Randomness comes only from grain's per-element seeds (`random_map`), so the
stream is a pure function of the seed and the position in it: deterministic
with any number of worker processes, and resumable from the iterator state
(`BatchStream`: the number of batches taken).
"""

from collections.abc import Mapping, Sequence
import dataclasses
import logging
from typing import Any

import grain
import ml_collections
import numpy as np

from preprocessing.io import workers
from pvl_jax.data import batch_stream
from pvl_jax.data import decoded_subjects
from pvl_jax.data import template_grid
from pvl_jax.data import template_position
from pvl_jax.training import augmentation_basic
from pvl_jax.training import augmentation_geometry

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PatchRequest:
  """A patch to cut: its subject and whether it must hold a lesion."""
  subject: decoded_subjects.Subject
  force_foreground: bool


def batch_patches(subjects: grain.MapDataset, batch_size: int,
                  foreground_fraction: float) -> grain.MapDataset:
  """Element i: subject i, forced onto a lesion at nnU-Net's batch places.

  Element i sits at place i % batch_size of its batch; places from
  round(batch_size * (1 - foreground_fraction)) on are forced (nnU-Net's
  `_oversample_last_XX_percent`).
  """
  uniform = round(batch_size * (1 - foreground_fraction))

  def patch(i: int) -> PatchRequest:
    return PatchRequest(subjects[i], i % batch_size >= uniform)

  return grain.MapDataset.range(len(subjects)).map(patch)


def bag_patches(subjects: grain.MapDataset, bag_size: int,
                pooled_per_bag: int) -> grain.MapDataset:
  """Element i: patch i % K of a bag of subject i // K of `subjects`.

  The bag's first `pooled_per_bag` patches are drawn uniformly over the
  volume (the hand-function head reads them), the others hold a lesion.
  """
  def patch(i: int) -> PatchRequest:
    return PatchRequest(subjects[i // bag_size],
                        i % bag_size >= pooled_per_bag)

  return grain.MapDataset.range(len(subjects)).map(patch)


class PatchSampler(grain.transforms.RandomMap):
  """Cuts one (optionally augmented) patch from a subject's volumes."""

  def __init__(self, patch_size: Sequence[int],
               augment: Mapping[str, Any] | None, slice_axis: int = 2,
               cut_size: Sequence[int] | None = None,
               foreground_sampling: str = "voxel"):
    """Initialises the sampler.

    Args:
      patch_size: 3 entries for a 3D model, 2 for a 2D model (slices).
      augment: the basic recipe's options
        (`augmentation_basic.augment_patch`); None: no augmentation here.
      slice_axis: the axis a 2D model's slices are cut across (the plan's
        `data.slice_axis`: 2, axial, for isotropic data).
      cut_size: cut this larger window, centred on the patch, instead (as
        many entries as patch_size, each exceeding it by an even number);
        None: the patch itself.
      foreground_sampling: how a forced patch's lesion voxel is drawn,
        "voxel" or "lesion" (`data.foreground_sampling`, module docstring).
    """
    self.patch_size = tuple(int(p) for p in patch_size)
    self.cut_size = tuple(int(c) for c in cut_size or patch_size)
    self.slice_axis = int(slice_axis)
    self.augment = dict(augment) if augment else None
    self.by_lesion = foreground_sampling == "lesion"

  def random_map(self, element: PatchRequest,
                 rng: np.random.Generator) -> Batch:
    subject, force_fg = element.subject, element.force_foreground
    image, label, lesion = subject.volumes()
    patch3d, cut3d = self._slab(self.patch_size), self._slab(self.cut_size)
    offsets = None
    if force_fg and self.by_lesion:
      lesion, offsets = subject.lesions()
    start = sample_patch_start(label.shape, lesion, patch3d, force_fg, rng,
                               offsets)
    # The patch is placed (and foreground forced) as without the larger cut,
    # which surrounds it evenly.
    start = [s - (c - p) // 2 for s, c, p in zip(start, cut3d, patch3d)]
    image_patch = cut_window(image, start, cut3d)
    label_patch = cut_window(label, start, cut3d)
    position = template_position.cut_position(
        subject.origin, start, len(self.patch_size), self.slice_axis)
    if len(self.patch_size) == 2:
      image_patch = np.squeeze(image_patch, self.slice_axis)
      label_patch = np.squeeze(label_patch, self.slice_axis)
    if self.augment:
      image_patch, label_patch, flipped = augmentation_basic.augment_patch(
          image_patch, label_patch, self.augment, rng)
      for axis in flipped:
        position = template_position.flip_position(
            position, axis, label_patch.shape[axis])
    return {
        "image": np.ascontiguousarray(image_patch, np.float32),
        "label": np.ascontiguousarray(label_patch, np.int32),
        "hand_function": np.int32(subject.hand_function),
        "subject_index": np.int32(subject.index),
        template_position.KEY: position,
    }

  def _slab(self, size: tuple[int, ...]) -> list[int]:
    """The 3D window of a patch: a 2D one is one slice thick."""
    window = list(size)
    if len(window) == 2:
      window.insert(self.slice_axis, 1)
    return window


def sample_patch_start(shape: Sequence[int], lesion: np.ndarray,
                       patch: Sequence[int], force_foreground: bool,
                       rng: np.random.Generator,
                       lesion_offsets: np.ndarray | None = None
                       ) -> tuple[int, ...]:
  """Chooses the patch's corner voxel.

  A patch larger than the volume along an axis is centred on it (the window
  starts before the volume and `cut_window` pads), as nnU-Net's sampler
  does: the plan may choose patches larger than the smallest volumes.

  Args:
    shape: the volume's spatial shape.
    lesion: flat (C order) indices of the lesion voxels: ascending, or
      grouped by lesion with `lesion_offsets` (`lesion_components`).
    patch: patch shape.
    force_foreground: place the patch so that a uniformly chosen lesion voxel
      falls at a uniformly random position inside it (falls back to a random
      patch for a lesion-free subject).
    rng: the element's generator.
    lesion_offsets: None: the lesion voxel is uniform over all of them;
      else lesion c's voxels are lesion[offsets[c]:offsets[c + 1]], and a
      lesion is drawn uniformly first, then a voxel in it.

  Returns:
    Start index per axis.
  """
  need = [max(p - s, 0) for s, p in zip(shape, patch)]
  low = [-(n // 2) for n in need]
  high = [s + n // 2 + n % 2 - p for s, p, n in zip(shape, patch, need)]
  if force_foreground and lesion.size:
    if lesion_offsets is None:
      chosen = rng.integers(lesion.size)
    else:
      c = rng.integers(lesion_offsets.size - 1)
      chosen = lesion_offsets[c] + rng.integers(lesion_offsets[c + 1]
                                                - lesion_offsets[c])
    voxel = np.unravel_index(lesion[chosen], shape)
    return tuple(int(np.clip(v - rng.integers(p), lo, h))
                 for v, p, lo, h in zip(voxel, patch, low, high))
  return tuple(int(rng.integers(lo, h + 1)) for lo, h in zip(low, high))


def cut_window(volume: np.ndarray, start: Sequence[int],
               patch: Sequence[int]) -> np.ndarray:
  """volume[start:start + patch] on the spatial axes, zero outside the volume.

  Zero is background for labels and, after z-scoring inside the brain, close
  to the background intensity for images (nnU-Net pads with 0 too).
  """
  lo = [max(s, 0) for s in start]
  hi = [min(s + p, n) for s, p, n in zip(start, patch, volume.shape)]
  piece = volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
  pad = [(a - s, s + p - b) for s, p, a, b in zip(start, patch, lo, hi)]
  if not any(before or after for before, after in pad):
    return piece
  return np.pad(piece, pad + [(0, 0)] * (volume.ndim - len(patch)))


def train_dataset(source: Any, data_config: ml_collections.ConfigDict,
                  batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, bag_size: int = 1,
                  pooled_per_bag: int = 1,
                  template: template_grid.TemplateGrid | None = None
                  ) -> grain.IterDataset:
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
      max_train_subjects: the first N subjects only, 0: all; num_workers: at
      most this many worker processes, fewer when this process may use
      fewer CPUs; 0: none).
    batch_size: per-process batch size.
    seed: shuffling and augmentation seed.
    process_index: this process's index (multi-host data loading).
    process_count: number of processes.
    bag_size: K > 1 makes every K consecutive elements of the global stream
      patches of one subject (`bag_patches`); 1: one patch per subject.
    pooled_per_bag: the uniformly drawn patches at the start of each bag.
    template: the located head's grid, which positions are in
      (`decoded_subjects`).

  Returns:
    A grain IterDataset of dict batches (image, label, hand_function,
    subject_index, position: each patch's place in the template grid,
    `template_position`).
  """
  subjects = decoded_subjects.decoded_subjects(source, template)
  patches = grain.MapDataset.source(
      subjects[:data_config.max_train_subjects or None])
  patches = patches.shuffle(seed=seed).repeat()
  global_batch = batch_size * process_count
  if bag_size > 1:
    patches = bag_patches(patches, bag_size, pooled_per_bag)
  else:
    patches = batch_patches(patches, global_batch,
                            data_config.foreground_fraction)
  augment = data_config.augment
  patches = patches.random_map(
      PatchSampler(data_config.patch_size,
                   augment.basic.to_dict() if augment.recipe == "basic"
                   else None, data_config.get("slice_axis", 2),
                   augmentation_geometry.input_patch_size(data_config),
                   data_config.foreground_sampling),
      seed=seed)

  def global_element(i: int) -> int:
    return (i // batch_size) * global_batch + process_index * batch_size + (
        i % batch_size)

  batches = grain.MapDataset.range(len(patches) // process_count).map(
      lambda i: patches[global_element(i)]).batch(batch_size,
                                                  drop_remainder=True)
  num_workers = workers.worker_count(data_config.num_workers)
  log.info("input pipeline: %d worker processes (data.num_workers %d, %d "
           "usable CPUs)", num_workers, data_config.num_workers,
           workers.available_cpus())
  return batch_stream.BatchStream(batches, num_workers)


def fixed_patches(source: Any, data_config: ml_collections.ConfigDict,
                  num_patches: int, batch_size: int, seed: int,
                  bag_size: int = 1, pooled_per_bag: int = 1,
                  template: template_grid.TemplateGrid | None = None
                  ) -> list[Batch]:
  """Deterministic, unaugmented patch batches for periodic validation.

  Made as training's are: bags of `bag_size` patches of one subject (the
  first `pooled_per_bag` uniform) for a subject-level head, else nnU-Net's
  forced places in each batch, so validation scores what training does;
  positions in `template` (`decoded_subjects`).
  """
  subjects = grain.MapDataset.source(
      decoded_subjects.decoded_subjects(source, template)).repeat()
  ds = (bag_patches(subjects, bag_size, pooled_per_bag) if bag_size > 1
        else batch_patches(subjects, batch_size,
                           data_config.foreground_fraction))
  ds = ds.random_map(PatchSampler(data_config.patch_size, None,
                                  data_config.get("slice_axis", 2)),
                     seed=seed)
  ds = ds.batch(batch_size, drop_remainder=True)
  return [ds[i] for i in range(max(num_patches // batch_size, 1))]
