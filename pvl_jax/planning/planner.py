"""Self-configuration after nnU-Net v2: dataset fingerprint -> plan -> config.

The rules are those of nnU-Net v2's `ExperimentPlanner` (default planner,
`get_pool_and_conv_props`), re-implemented here:

* Target spacing: the median spacing per axis. If the coarsest axis is much
  coarser (median spacing > 3x every other axis's) and has much fewer voxels
  (median size * 3 < every other axis's median size), it gets the 10th
  percentile of its spacings instead, but never finer than the other axes.
* Median shape: of the shapes after cropping, resampled to the target spacing.
* Initial patch: aspect ratio 1 / spacing, scaled to 256^3 voxels (3D) or
  2048^2 pixels (2D), clipped to the median shape.
* Topology (`network_topology`): repeatedly pool (stride 2) every axis whose
  feature map is still >= 2 * 4 voxels and whose current spacing is < 2x the
  finest current spacing (a lone axis needs >= 3 * 4 voxels). The kernel along
  an axis is 1 while its spacing is >= 2x the finest, then 3 for good; the
  bottleneck kernel is 3 everywhere. The patch is padded up to a multiple of
  2^pools per axis.
* Features: 32 * 2^stage, capped at 320 (3D) or 512 (2D).
* Memory: while the VRAM estimate at batch 2 exceeds the budget, the axis with
  the largest patch / median-shape ratio (ties: the last one) is reduced by one
  divisibility step and the topology recomputed.
* Batch: as large as the VRAM estimate allows, but one batch covers at most 5%
  of the dataset's voxels (overfitting guard), and never below 2.
* 2D: the same rules over the in-plane axes 0 and 1 (the pipeline cuts axial
  slices along axis 2), with the 2D feature cap.

One departure: this pipeline crops training patches inside the volumes and
never pads them, so a patch axis larger than the smallest (resampled) volume is
reduced like an over-budget axis (nnU-Net pads the images instead).

VRAM estimate. nnU-Net sums the voxels x channels of every convolution output
for one sample (`compute_conv_feature_map_size`) and compares the sum with a
reference (560e6 for batch 2 on 8 GB). Written as bytes:

    A = sum_s 2 f_s V_s + sum_{s < S-1} (3 f_s + C) V_s
    VRAM = batch * A * bytes_per_value * K,
    K = 8e9 / (2 * 560e6 * 2) ~= 3.57

V_s is the voxel count of stage s's feature map, f_s its features, S the
stages and C the classes. The encoder term counts the two convolutions of a
stage; the decoder term the upsampling output, the two convolutions and the
deep-supervision head. A counts stored activations; K (per stored value: its
normalisation and activation outputs, the gradient buffers of the backward
pass, workspace) is fixed by nnU-Net's reference point at 2 bytes per value
(mixed precision): 560e6 activations per sample, batch 2, fill 8 GB. With it,
nnU-Net's default 3D plan (128^3, 6 stages 32..320, batch 2; A = 451.3e6)
needs 6.45 GB of the default 8 GB budget, and the rule "shrink while batch 2
does not fit" is exactly nnU-Net's. float32 activations count 4 bytes.
The budget is thus in nnU-Net's units: XLA's buffer assignment for this
repository's train step (CPU backend, bfloat16) measured 1.96-2.03x the
estimate (128^3 at batch 2: 12.6 GB of temporaries), so on an accelerator
with M GB a budget of about M / 2 is safe.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io.atomic import atomic_write_text
from pvl_jax.planning.fingerprint import Fingerprint
from pvl_jax.planning.fingerprint import nested_tuples

ANISOTROPY_THRESHOLD = 3.0
MIN_FEATURE_MAP_SIZE = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
# Edge of the cube/square whose volume the initial patch gets before clipping.
INITIAL_PATCH_EDGE = {2: 2048, 3: 256}
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION = 0.05
# nnU-Net's 3D reference point: this many activations per sample at this
# batch size fill this many GB with 2-byte (mixed-precision) activations.
REFERENCE_ACTIVATIONS = 560e6
REFERENCE_BATCH_SIZE = 2
REFERENCE_BUDGET_GB = 8.0
REFERENCE_BYTES_PER_VALUE = 2
BYTES_FACTOR = (REFERENCE_BUDGET_GB * 1e9 / (
    REFERENCE_BATCH_SIZE * REFERENCE_ACTIVATIONS * REFERENCE_BYTES_PER_VALUE))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A planned configuration (JSON-serialisable).

  Attributes:
    dims: 2 (axial slices) or 3.
    target_spacing: mm per axis of the volumes (all 3 axes, information: the
      pipeline does not resample).
    median_shape: median volume shape at the target spacing (3 axes).
    patch_size: training patch, `dims` entries.
    strides: per stage and axis; stage 0 is all ones.
    kernel_sizes: per stage and axis.
    features: feature maps per stage.
    batch_size: global batch size.
    vram_estimate_gb: estimated training memory at `batch_size`.
    vram_budget_gb: the budget it was planned for.
  """
  dims: int
  target_spacing: tuple[float, ...]
  median_shape: tuple[int, ...]
  patch_size: tuple[int, ...]
  strides: tuple[tuple[int, ...], ...]
  kernel_sizes: tuple[tuple[int, ...], ...]
  features: tuple[int, ...]
  batch_size: int
  vram_estimate_gb: float
  vram_budget_gb: float

  @property
  def pools_per_axis(self) -> tuple[int, ...]:
    """Number of stride-2 poolings along each axis."""
    return tuple(sum(s[axis] == 2 for s in self.strides)
                 for axis in range(self.dims))

  def describe(self) -> str:
    """One line for the console: dims, patch, stages, features, batch."""
    patch = "x".join(str(p) for p in self.patch_size)
    features = "-".join(str(f) for f in self.features)
    return (f"{self.dims}D, patch {patch}, {len(self.features)} stages "
            f"({features} features), batch {self.batch_size}, "
            f"~{self.vram_estimate_gb:.1f} of {self.vram_budget_gb:g} GB")

  def to_config_overrides(self) -> dict[str, Any]:
    """Dotted config keys and their planned values.

    `data.target_spacing` is information only (recorded in the config, used
    by nothing: the volumes are not resampled).
    """
    return {"data.patch_size": self.patch_size,
            "model.features": self.features,
            "model.strides": self.strides,
            "model.kernel_sizes": self.kernel_sizes,
            "batch_size": self.batch_size,
            "data.target_spacing": self.target_spacing}

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
    return cls(
        dims=int(d["dims"]),
        target_spacing=tuple(float(s) for s in d["target_spacing"]),
        median_shape=tuple(int(s) for s in d["median_shape"]),
        patch_size=tuple(int(p) for p in d["patch_size"]),
        strides=nested_tuples(d["strides"], int),
        kernel_sizes=nested_tuples(d["kernel_sizes"], int),
        features=tuple(int(f) for f in d["features"]),
        batch_size=int(d["batch_size"]),
        vram_estimate_gb=float(d["vram_estimate_gb"]),
        vram_budget_gb=float(d["vram_budget_gb"]))


@dataclasses.dataclass(frozen=True)
class Topology:
  """Network layout for one patch size (nnU-Net's get_pool_and_conv_props).

  Attributes:
    patch_size: the patch padded up to a multiple of `divisor`.
    strides: per stage and axis.
    kernel_sizes: per stage and axis.
  """
  patch_size: tuple[int, ...]
  strides: tuple[tuple[int, ...], ...]
  kernel_sizes: tuple[tuple[int, ...], ...]

  @property
  def divisor(self) -> tuple[int, ...]:
    """Total stride per axis: what the patch size must be divisible by."""
    return tuple(math.prod(s[axis] for s in self.strides)
                 for axis in range(len(self.patch_size)))


# -------------------------------------------------------------------- topology


def target_spacing(fp: Fingerprint) -> tuple[float, ...]:
  """Median spacing; 10th percentile along a strongly anisotropic axis."""
  spacings = np.asarray(fp.spacings, np.float64)
  target = np.median(spacings, axis=0)
  sizes = np.median(np.asarray(fp.shapes_after_crop, np.float64), axis=0)
  worst = int(np.argmax(target))
  others = [a for a in range(len(target)) if a != worst]
  aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * target[others].max()
  aniso_voxels = sizes[worst] * ANISOTROPY_THRESHOLD < sizes[others].min()
  if aniso_spacing and aniso_voxels:
    # The median would interpolate away the slices of the finer scans; never
    # go finer than the other axes though.
    target[worst] = max(np.percentile(spacings[:, worst], 10),
                        target[others].max())
  return tuple(float(t) for t in target)


def resampled_shapes(fp: Fingerprint, spacing: Sequence[float]) -> np.ndarray:
  """(subjects, 3) shapes after resampling to `spacing` (nnU-Net rounding)."""
  shapes = np.asarray(fp.shapes_after_crop, np.float64)
  ratio = np.asarray(fp.spacings, np.float64) / np.asarray(spacing)
  return np.round(shapes * ratio).astype(int)


def features_per_stage(num_stages: int, dims: int,
                       base: int = BASE_FEATURES) -> tuple[int, ...]:
  """base * 2^stage, capped at 320 (3D) or 512 (2D)."""
  return tuple(min(base * 2**s, MAX_FEATURES[dims]) for s in range(num_stages))


def network_topology(spacing: Sequence[float], patch_size: Sequence[int],
                     min_feature_map: int = MIN_FEATURE_MAP_SIZE) -> Topology:
  """Pooling strides and kernel sizes for a patch (get_pool_and_conv_props).

  Args:
    spacing: mm per axis at the plan's resolution.
    patch_size: the patch before padding.
    min_feature_map: smallest edge of a bottleneck feature map.

  Returns:
    The topology, with the patch padded up to a multiple of its divisor.
  """
  dims = len(spacing)
  current_spacing = [float(s) for s in spacing]
  current_size = [int(p) for p in patch_size]
  strides = [(1,) * dims]
  kernels = []
  kernel = [1] * dims
  while True:
    poolable = [a for a in range(dims)
                if current_size[a] >= 2 * min_feature_map]
    if not poolable:
      break
    finest = min(current_spacing[a] for a in poolable)
    poolable = [a for a in poolable if current_spacing[a] / finest < 2]
    # A lone axis is only pooled with margin: its map must stay >= 1.5x min.
    if len(poolable) == 1 and current_size[poolable[0]] < 3 * min_feature_map:
      break
    # A kernel becomes 3 once its axis is within 2x of the finest spacing,
    # and stays 3 (anisotropic data: in-plane convolutions first).
    finest_all = min(current_spacing)
    kernel = [3 if k == 3 or current_spacing[a] / finest_all < 2 else 1
              for a, k in enumerate(kernel)]
    kernels.append(tuple(kernel))
    strides.append(tuple(2 if a in poolable else 1 for a in range(dims)))
    for a in poolable:
      current_spacing[a] *= 2
      current_size[a] = math.ceil(current_size[a] / 2)
  kernels.append((3,) * dims)  # the bottleneck
  divisor = [2 ** sum(s[a] == 2 for s in strides) for a in range(dims)]
  padded = tuple(math.ceil(p / d) * d for p, d in zip(patch_size, divisor))
  return Topology(padded, tuple(strides), tuple(kernels))


def _shrink_axis(spacing: Sequence[float], topology: Topology, axis: int
                 ) -> Topology:
  """Reduces one patch axis by one divisibility step (nnU-Net's rule).

  Subtracting the current divisor could skip valid sizes (256 with divisor 64
  would go to 192, skipping 224), so the divisor of the reduced patch is
  subtracted instead.
  """
  patch = list(topology.patch_size)
  trial = list(patch)
  trial[axis] -= topology.divisor[axis]
  patch[axis] -= network_topology(spacing, trial).divisor[axis]
  return network_topology(spacing, patch)


# ------------------------------------------------------------------- memory


def activation_count(patch_size: Sequence[int],
                     strides: Sequence[Sequence[int]],
                     features: Sequence[int], num_classes: int) -> int:
  """Stored activations of one sample: A in the module docstring."""
  voxels, size = [], list(patch_size)
  for stride in strides:
    size = [s // t for s, t in zip(size, stride)]
    voxels.append(math.prod(size))
  encoder = sum(2 * f * v for f, v in zip(features, voxels))
  decoder = sum((3 * f + num_classes) * v
                for f, v in zip(features[:-1], voxels[:-1]))
  return encoder + decoder


def vram_gb(patch_size: Sequence[int], strides: Sequence[Sequence[int]],
            features: Sequence[int], num_classes: int, batch_size: int,
            bytes_per_value: int = 2) -> float:
  """Estimated training memory in GB (1e9 bytes); see the module docstring."""
  count = activation_count(patch_size, strides, features, num_classes)
  return batch_size * count * bytes_per_value * BYTES_FACTOR / 1e9


# --------------------------------------------------------------------- plan


def _initial_patch(spacing: Sequence[float], median: Sequence[int]
                   ) -> list[int]:
  """Aspect ratio 1/spacing at 256^3 (2048^2) voxels, clipped to `median`."""
  dims = len(spacing)
  inverse = 1.0 / np.asarray(spacing, np.float64)
  scale = (INITIAL_PATCH_EDGE[dims] ** dims / inverse.prod()) ** (1 / dims)
  return [min(round(i * scale), m) for i, m in zip(inverse, median)]


def _fit_volumes(spacing: Sequence[float], topology: Topology,
                 smallest: Sequence[int]) -> Topology:
  """Shrinks patch axes larger than the smallest volume (patches never pad)."""
  for axis in range(len(smallest)):
    while topology.patch_size[axis] > smallest[axis]:
      topology = _shrink_axis(spacing, topology, axis)
  return topology


def _fit_budget(spacing: Sequence[float], topology: Topology,
                median: Sequence[int], dims: int, budget_gb: float,
                num_classes: int, bytes_per_value: int) -> Topology:
  """Shrinks the patch until the minimum batch fits the VRAM budget."""

  def estimate(t: Topology) -> float:
    return vram_gb(t.patch_size, t.strides,
                   features_per_stage(len(t.strides), dims), num_classes,
                   MIN_BATCH_SIZE, bytes_per_value)

  while estimate(topology) > budget_gb:
    if min(topology.patch_size) <= 1:
      raise ValueError(f"a VRAM budget of {budget_gb} GB cannot hold a "
                       f"U-Net at batch size {MIN_BATCH_SIZE}")
    ratios = np.asarray(topology.patch_size) / np.asarray(median)
    # Ties go to the last axis, as nnU-Net's argsort(...)[-1].
    axis = len(ratios) - 1 - int(np.argmax(ratios[::-1]))
    topology = _shrink_axis(spacing, topology, axis)
  return topology


def _batch_size(topology: Topology, features: Sequence[int], num_classes: int,
                bytes_per_value: int, budget_gb: float,
                dataset_voxels: float) -> int:
  """Largest batch the budget allows, at most 5% of the dataset, >= 2."""
  per_sample = vram_gb(topology.patch_size, topology.strides, features,
                       num_classes, 1, bytes_per_value)
  by_memory = math.floor(budget_gb / per_sample)
  by_coverage = round(MAX_DATASET_FRACTION * dataset_voxels /
                      math.prod(topology.patch_size))
  return max(MIN_BATCH_SIZE, min(by_memory, by_coverage))


def plan(fp: Fingerprint, dims: int = 3, vram_budget_gb: float = 8.0,
         bytes_per_value: int = 2, num_classes: int = 2,
         patch_size: Sequence[int] | None = None) -> Plan:
  """Plans spacing, patch, topology, features and batch (nnU-Net v2 rules).

  Args:
    fp: fingerprint of the training split.
    dims: 3, or 2 for a U-Net on axial slices (axes 0 and 1).
    vram_budget_gb: accelerator memory the training step may use.
    bytes_per_value: 2 for bfloat16/float16 activations, 4 for float32.
    num_classes: segmentation classes including background.
    patch_size: a patch fixed by the user (`dims` entries): kept as is, and
      the topology and batch are planned for it.

  Returns:
    The plan.

  Raises:
    ValueError: `dims` is not 2 or 3, a fixed patch has the wrong length, or
      the budget cannot hold even the smallest network at batch size 2.
  """
  if dims not in (2, 3):
    raise ValueError(f"dims must be 2 or 3, got {dims}")
  if patch_size is not None and len(patch_size) != dims:
    raise ValueError(f"patch_size {tuple(patch_size)} has not {dims} entries")
  spacing3 = target_spacing(fp)
  shapes = resampled_shapes(fp, spacing3)
  median3 = tuple(int(m) for m in np.round(np.median(shapes, axis=0)))
  spacing, median = spacing3[:dims], median3[:dims]
  if patch_size is None:
    topology = network_topology(spacing, _initial_patch(spacing, median))
    topology = _fit_volumes(spacing, topology, shapes.min(axis=0)[:dims])
    topology = _fit_budget(spacing, topology, median, dims, vram_budget_gb,
                           num_classes, bytes_per_value)
  else:
    fixed = tuple(int(p) for p in patch_size)
    topology = dataclasses.replace(network_topology(spacing, fixed),
                                   patch_size=fixed)
  if len(topology.strides) < 2:
    raise ValueError(f"patch {topology.patch_size} is too small to pool even "
                     "once; a U-Net needs at least 2 stages")
  features = features_per_stage(len(topology.strides), dims)
  # nnU-Net counts the dataset in 3D voxels for the 2D plan too.
  dataset_voxels = float(math.prod(median3)) * fp.num_subjects
  batch = _batch_size(topology, features, num_classes, bytes_per_value,
                      vram_budget_gb, dataset_voxels)
  return Plan(
      dims=dims, target_spacing=spacing3, median_shape=median3,
      patch_size=topology.patch_size, strides=topology.strides,
      kernel_sizes=topology.kernel_sizes, features=features, batch_size=batch,
      vram_estimate_gb=vram_gb(topology.patch_size, topology.strides,
                               features, num_classes, batch, bytes_per_value),
      vram_budget_gb=float(vram_budget_gb))


# ------------------------------------------------------------------ storage


def save_plan(p: Plan, path: str | Path) -> None:
  """Writes the plan as JSON, atomically."""
  atomic_write_text(path, json.dumps(p.to_dict(), indent=2))


def load_plan(path: str | Path) -> Plan:
  """Reads a plan written by `save_plan`."""
  return Plan.from_dict(json.loads(Path(path).read_text()))
