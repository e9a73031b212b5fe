"""Self-configuration after nnU-Net v2.8.1: dataset fingerprint -> plan.

Reproduces the 3d_fullres and 2d configurations of nnU-Net v2.8.1's default
`ExperimentPlanner` (`experiment_planning/experiment_planners/
default_experiment_planner.py`; topology and memory in `topology`). The
tests compare every planned field with plans nnU-Net itself wrote
(tests/data/nnunet_plans/).

* Axis order. nnU-Net reads NIfTI through SimpleITK, whose arrays list the
  axes in the reverse (z, y, x) order of this pipeline's records (nibabel's).
  The planner reverses the fingerprint, plans in nnU-Net's order and maps the
  result back, so nnU-Net's tie-breaks (its first maximal axis, its last axis
  among equal patch/median ratios) fall on the same physical axes.
* Target spacing: the median spacing per axis. If the coarsest axis is much
  coarser (median spacing > 3x every other axis's) and has much fewer voxels
  (median size * 3 < every other axis's), it gets the 10th percentile of its
  spacings instead, but never finer than the other axes (then their spacing
  + 1e-5).
* Transpose: nnU-Net moves the coarsest target axis first (equal spacings:
  its first axis, the records' last) and keeps the others in order; 3D is
  planned in that order, 2D on the two finest axes, slicing the coarsest.
  Here a 3D plan's per-axis entries are mapped back to the records' axis
  order (a U-Net with permuted per-axis entries is the same network on
  permuted data); a 2D plan records the axis it slices (`slice_axis`: 2,
  the axial axis, for isotropic data) and lists its entries over the other
  two axes in ascending order. `suppress_transpose` (nnU-Net's option) keeps
  nnU-Net's own order: slices along the records' axis 2.
* Median shape: the shapes after cropping resampled to the target spacing
  (rounded per subject); the median itself is not rounded.
* Initial patch: aspect ratio 1 / spacing, scaled to 256^3 voxels (3D) or
  2048^2 pixels (2D), clipped to the median shape, padded by the topology.
* Memory: while the estimate at batch 2 exceeds the budget, the axis with
  the largest patch / median ratio (ties: the last in planning order) loses
  one divisibility step and the topology is recomputed.
* Batch: round(budget / per-sample estimate), but one batch covers at most
  5% of the dataset's voxels, and never below 2.
* batch_dice: True in 2D; in 3D only where nnU-Net adds a 3d_lowres
  configuration (the patch covers < 25% of the median image, and nnU-Net's
  search for a coarser spacing at least halves the median image's voxels).

Patches are planned as nnU-Net's: a patch axis may exceed the smaller
volumes, which nnU-Net pads at sampling time. Departures, outside
the planned values: the volumes are resampled by preprocessing
(`data.preprocess`), not to the planned spacing (`config_plan` warns when
they differ); float32 activations count 4 bytes (nnU-Net assumes mixed
precision); a patch fixed by the user is kept.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.io.atomic import atomic_write_text
from pvl_jax.planning import topology as topology_lib
from pvl_jax.planning.fingerprint import Fingerprint
from pvl_jax.planning.fingerprint import nested_tuples

ANISOTROPY_THRESHOLD = 3.0
# Edge of the cube/square whose volume the initial patch gets before clipping.
INITIAL_PATCH_EDGE = {2: 2048, 3: 256}
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION = 0.05
# nnU-Net adds 3d_lowres when the 3D patch covers less of the median image.
LOWRES_CREATION_THRESHOLD = 0.25
LOWRES_SPACING_FACTOR = 1.03


@dataclasses.dataclass(frozen=True)
class Plan:
  """A planned configuration (JSON-serialisable), in the records' axis order.

  Attributes:
    dims: 2 (slices) or 3.
    target_spacing: mm per axis, all 3 axes (the pipeline does not resample).
    median_shape: median volume shape at the target spacing (3 axes,
      unrounded, as nnU-Net's).
    slice_axis: 2D: the axis cut into slices; None in 3D.
    patch_size: training patch, over `axes`.
    strides: per stage, over `axes`; stage 0 is all ones.
    kernel_sizes: per stage, over `axes`.
    features: feature maps per stage.
    batch_size: global batch size.
    batch_dice: whether the Dice loss pools the batch (nnU-Net's rule).
    vram_estimate_gb: estimated training memory at `batch_size`.
    vram_budget_gb: the budget it was planned for.
  """
  dims: int
  target_spacing: tuple[float, ...]
  median_shape: tuple[float, ...]
  slice_axis: int | None
  patch_size: tuple[int, ...]
  strides: tuple[tuple[int, ...], ...]
  kernel_sizes: tuple[tuple[int, ...], ...]
  features: tuple[int, ...]
  batch_size: int
  batch_dice: bool
  vram_estimate_gb: float
  vram_budget_gb: float

  @property
  def axes(self) -> tuple[int, ...]:
    """The volume axes that the patch, strides and kernels list, in order."""
    return tuple(a for a in range(3) if a != self.slice_axis)

  @property
  def pools_per_axis(self) -> tuple[int, ...]:
    """Number of stride-2 poolings along each of `axes`."""
    return tuple(sum(s[axis] == 2 for s in self.strides)
                 for axis in range(self.dims))

  def describe(self) -> str:
    """One line for the console: dims, patch, stages, features, batch."""
    patch = "x".join(str(p) for p in self.patch_size)
    features = "-".join(str(f) for f in self.features)
    sliced = ("" if self.slice_axis is None
              else f" slices along axis {self.slice_axis},")
    return (f"{self.dims}D,{sliced} patch {patch}, {len(self.features)} stages "
            f"({features} features), batch {self.batch_size}, batch Dice "
            f"{'on' if self.batch_dice else 'off'}, "
            f"~{self.vram_estimate_gb:.1f} of {self.vram_budget_gb:g} GB")

  def to_config_overrides(self) -> dict[str, Any]:
    """Dotted config keys and their planned values.

    `data.target_spacing` is information only (the volumes are not
    resampled); `data.slice_axis` (2D only) is the axis the input pipeline
    and inference must slice.
    """
    overrides = {"data.patch_size": self.patch_size,
                 "model.features": self.features,
                 "model.strides": self.strides,
                 "model.kernel_sizes": self.kernel_sizes,
                 "batch_size": self.batch_size,
                 "batch_dice": self.batch_dice,
                 "data.target_spacing": self.target_spacing}
    if self.slice_axis is not None:
      overrides["data.slice_axis"] = self.slice_axis
    return overrides

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
    return cls(
        dims=int(d["dims"]),
        target_spacing=tuple(float(s) for s in d["target_spacing"]),
        median_shape=tuple(float(s) for s in d["median_shape"]),
        slice_axis=None if d["slice_axis"] is None else int(d["slice_axis"]),
        patch_size=tuple(int(p) for p in d["patch_size"]),
        strides=nested_tuples(d["strides"], int),
        kernel_sizes=nested_tuples(d["kernel_sizes"], int),
        features=tuple(int(f) for f in d["features"]),
        batch_size=int(d["batch_size"]),
        batch_dice=bool(d["batch_dice"]),
        vram_estimate_gb=float(d["vram_estimate_gb"]),
        vram_budget_gb=float(d["vram_budget_gb"]))


@dataclasses.dataclass(frozen=True)
class _Budget:
  """What the memory rule needs besides the patch."""
  gb: float
  num_classes: int
  bytes_per_value: int


# ----------------------------------------------- nnU-Net's order (reversed)


def _target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
  """nnU-Net's determine_fullres_target_spacing, in its axis order."""
  target = np.percentile(spacings, 50, axis=0)
  sizes = np.percentile(shapes, 50, axis=0)
  worst = int(np.argmax(target))
  others = [a for a in range(len(target)) if a != worst]
  other_spacing = max(target[a] for a in others)
  aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * other_spacing
  aniso_voxels = sizes[worst] * ANISOTROPY_THRESHOLD < min(
      sizes[a] for a in others)
  if aniso_spacing and aniso_voxels:
    # The median would interpolate away the slices of the finer scans; never
    # go finer than the other axes though.
    low = np.percentile(spacings[:, worst], 10)
    if low < other_spacing:
      low = max(other_spacing, low) + 1e-5
    target[worst] = low
  return target


def _transpose_forward(target: np.ndarray, suppress: bool) -> list[int]:
  """nnU-Net's transpose_forward: the coarsest axis first, then the rest."""
  if suppress:
    return [0, 1, 2]
  coarsest = int(np.argmax(target))
  return [coarsest] + [a for a in range(3) if a != coarsest]


def _initial_patch(spacing: Sequence[float], median: Sequence[float]
                   ) -> list[float]:
  """Aspect ratio 1/spacing at 256^3 (2048^2) voxels, clipped to `median`."""
  dims = len(spacing)
  inverse = 1 / np.asarray(spacing, np.float64)
  scaled = inverse * (INITIAL_PATCH_EDGE[dims] ** dims / np.prod(inverse)) ** (
      1 / dims)
  return [min(round(i), m) for i, m in zip(scaled, median)]


def _batch_size(topology: topology_lib.Topology, dataset_voxels: float,
                budget: _Budget) -> int:
  """round(memory allowance), at most 5% of the dataset, >= 2."""
  dims = len(topology.patch_size)
  estimate = topology_lib.scaled_count(topology, budget.num_classes,
                                       budget.bytes_per_value)
  reference = topology_lib.budget_activations(dims, budget.gb)
  by_memory = round((reference / estimate) * topology_lib.REFERENCE[dims][1])
  by_coverage = round(dataset_voxels * MAX_DATASET_FRACTION /
                      np.prod(topology.patch_size, dtype=np.float64))
  return max(min(by_memory, by_coverage), MIN_BATCH_SIZE)


def _configure(spacing: Sequence[float], median: Sequence[float],
               dataset_voxels: float, budget: _Budget
               ) -> tuple[topology_lib.Topology, int]:
  """nnU-Net's get_plans_for_configuration: patch, topology and batch."""
  dims = len(spacing)
  topology = topology_lib.network_topology(spacing,
                                           _initial_patch(spacing, median))
  reference = topology_lib.budget_activations(dims, budget.gb)
  reference_batch = topology_lib.REFERENCE[dims][1]

  def estimate(t: topology_lib.Topology) -> float:
    return topology_lib.scaled_count(t, budget.num_classes,
                                     budget.bytes_per_value)

  while estimate(topology) / reference_batch * MIN_BATCH_SIZE > reference:
    if min(topology.patch_size) <= 1:
      raise ValueError(f"a VRAM budget of {budget.gb} GB cannot hold a "
                       f"U-Net at batch size {MIN_BATCH_SIZE}")
    ratios = [p / m for p, m in zip(topology.patch_size, median)]
    # Ties go to the last axis, as nnU-Net's (stable) argsort(...)[-1].
    axis = max(range(dims), key=lambda a: (ratios[a], a))
    topology = topology_lib.shrink_axis(spacing, topology, axis)
  return topology, _batch_size(topology, dataset_voxels, budget)


def _has_lowres(spacing: np.ndarray, median: np.ndarray,
                patch: Sequence[int], num_subjects: int,
                budget: _Budget) -> bool:
  """Whether nnU-Net's plan_experiment adds a 3d_lowres configuration."""
  median_voxels = np.prod(median, dtype=np.float64)
  patch_voxels = np.prod(patch, dtype=np.float64)
  lowres = np.array(spacing, np.float64)
  while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
    # Coarsen the fine axes until within 2x of the coarsest, then all.
    fine = lowres.max() / lowres > 2
    if fine.any():
      lowres[fine] *= LOWRES_SPACING_FACTOR
    else:
      lowres *= LOWRES_SPACING_FACTOR
    shape = spacing / lowres * median
    median_voxels = np.prod(shape, dtype=np.float64)
    topology, _ = _configure(lowres, [round(s) for s in shape],
                             float(median_voxels * num_subjects), budget)
    patch_voxels = np.prod(topology.patch_size, dtype=np.int64)
  # A lowres image less than half the size is dropped as too similar.
  return bool(np.prod(median, dtype=np.float64) / median_voxels >= 2)


# ------------------------------------------------------------------ plan


def _nnunet_order(fp: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
  """(spacings, shapes after cropping) with the axes as nnU-Net reads them."""
  return (np.asarray(fp.spacings, np.float64)[:, ::-1],
          np.asarray(fp.shapes_after_crop, np.float64)[:, ::-1])


def target_spacing(fp: Fingerprint) -> tuple[float, ...]:
  """nnU-Net's target spacing, in the records' axis order."""
  return tuple(float(t) for t in _target_spacing(*_nnunet_order(fp))[::-1])


def plan(fp: Fingerprint, dims: int = 3, vram_budget_gb: float = 8.0,
         bytes_per_value: int = 2, num_classes: int = 2,
         patch_size: Sequence[int] | None = None,
         suppress_transpose: bool = False) -> Plan:
  """Plans spacing, patch, topology, features and batch (nnU-Net v2 rules).

  Args:
    fp: fingerprint of the training split (records' axis order).
    dims: 3, or 2 for a U-Net on slices.
    vram_budget_gb: accelerator memory the training step may use, in
      nnU-Net's units (see `topology`).
    bytes_per_value: 2 for bfloat16/float16 activations, 4 for float32.
    num_classes: segmentation classes including background.
    patch_size: a patch fixed by the user (`dims` entries, over the plan's
      `axes`): kept as is, and the topology and batch are planned for it.
    suppress_transpose: nnU-Net's option: 2D slices along axis 2 whatever
      the spacing (the default slices the coarsest axis).

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
  budget = _Budget(float(vram_budget_gb), num_classes, bytes_per_value)
  # Everything below until the mapping back is in nnU-Net's axis order.
  spacings, shapes = _nnunet_order(fp)
  target = _target_spacing(spacings, shapes)
  forward = _transpose_forward(target, suppress_transpose)
  # nnU-Net's compute_new_shape, subject by subject.
  resampled = [[round(s / t * n) for s, t, n in zip(sp, target, sh)]
               for sp, sh in zip(spacings, shapes)]
  median = np.median(np.asarray(resampled, np.float64), axis=0)
  spacing_t, median_t = target[forward], median[forward]
  dataset_voxels = float(np.prod(median_t, dtype=np.float64) *
                         fp.num_subjects)
  # The records' axis of each planned axis (nnU-Net's axis a is the
  # records' 2 - a), and the order that lists them as the records do.
  axes = [2 - a for a in forward[3 - dims:]]
  to_records = sorted(range(dims), key=lambda k: axes[k])
  spacing_c, median_c = spacing_t[3 - dims:], median_t[3 - dims:]
  if patch_size is None:
    topology, batch = _configure(spacing_c, median_c, dataset_voxels, budget)
  else:
    # The user's patch lists the axes in the records' order.
    fixed = tuple(int(patch_size[sorted(axes).index(a)]) for a in axes)
    topology = dataclasses.replace(
        topology_lib.network_topology(spacing_c, fixed), patch_size=fixed)
    batch = _batch_size(topology, dataset_voxels, budget)
  if len(topology.strides) < 2:
    raise ValueError(f"patch {topology.patch_size} is too small to pool even "
                     "once; a U-Net needs at least 2 stages")
  batch_dice = dims == 2 or _has_lowres(spacing_t, median_t,
                                        topology.patch_size, fp.num_subjects,
                                        budget)

  def records(row: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(row[k]) for k in to_records)

  features = topology_lib.features_per_stage(len(topology.strides), dims)
  patch = records(topology.patch_size)
  strides = tuple(records(s) for s in topology.strides)
  return Plan(
      dims=dims, target_spacing=tuple(float(t) for t in target[::-1]),
      median_shape=tuple(float(m) for m in median[::-1]),
      slice_axis=2 - forward[0] if dims == 2 else None, patch_size=patch,
      strides=strides,
      kernel_sizes=tuple(records(k) for k in topology.kernel_sizes),
      features=features, batch_size=batch, batch_dice=bool(batch_dice),
      vram_estimate_gb=topology_lib.vram_gb(patch, strides, features,
                                            num_classes, batch,
                                            bytes_per_value),
      vram_budget_gb=float(vram_budget_gb))


# ------------------------------------------------------------------ storage


def save_plan(p: Plan, path: str | Path) -> None:
  """Writes the plan as JSON, atomically."""
  atomic_write_text(path, json.dumps(p.to_dict(), indent=2))


def load_plan(path: str | Path) -> Plan:
  """Reads a plan written by `save_plan`."""
  return Plan.from_dict(json.loads(Path(path).read_text()))
