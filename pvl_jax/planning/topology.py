"""U-Net topology for a patch and its memory estimate (nnU-Net v2.8.1).

Re-implements, from nnU-Net v2.8.1's source, `get_pool_and_conv_props`
(`experiment_planning/experiment_planners/network_topology.py`), the patch
reduction step and the feature-map count `compute_conv_feature_map_size` of
dynamic_network_architectures' PlainConvUNet that `ExperimentPlanner` uses as
its memory estimate.

Topology: repeatedly pool (stride 2) every axis whose feature map is still
>= 2 * 4 voxels and whose current spacing is < 2x the finest spacing among
those axes (a lone axis needs >= 3 * 4 voxels). The kernel along an axis is 1
while its spacing is >= 2x the finest current spacing, then 3 for good; the
bottleneck kernel is 3 everywhere. The patch is padded up to a multiple of
2^pools per axis.

Memory. nnU-Net sums the voxels x channels of every convolution output of
one sample and compares the sum with a reference: in 3D 560e6 at batch 2, in
2D 85e6 at batch 12, both for 8 GB. Written as bytes:

    A = sum_s 2 f_s V_s + sum_{s < S-1} 3 f_s V_s + C V_0
    VRAM = batch * A * bytes_per_value * K_d,
    K_d = 8e9 / (reference batch * reference A * 2)

V_s is the voxel count of stage s's feature map, f_s its features, S the
stages and C the classes. The encoder term counts the two convolutions of a
stage; the decoder term the upsampling output and the two convolutions; the
planner's network has no deep supervision, so only the finest segmentation
head counts. K_d (per stored value: its normalisation and activation
outputs, the gradient buffers, workspace) is fixed by nnU-Net's reference at 2
bytes per value (mixed precision), so at 2 bytes "VRAM at batch 2 <= budget"
is exactly nnU-Net's test. float32 activations count 4 bytes (pvl_jax's
addition: nnU-Net always trains in mixed precision). XLA's buffer assignment
for this repository's train step (CPU backend, bfloat16) measured 1.96-2.03x
the 3D estimate (128^3 at batch 2: 12.6 GB of temporaries), so on an
accelerator with M GB a budget of about M / 2 is safe.
"""

from collections.abc import Sequence
import dataclasses
import math

MIN_FEATURE_MAP_SIZE = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
# nnU-Net's reference points: (activations per sample, batch size) that fill
# REFERENCE_BUDGET_GB with 2-byte (mixed-precision) activations.
REFERENCE = {2: (85e6, 12), 3: (560e6, 2)}
REFERENCE_BUDGET_GB = 8.0
REFERENCE_BYTES_PER_VALUE = 2


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


def features_per_stage(num_stages: int, dims: int,
                       base: int = BASE_FEATURES) -> tuple[int, ...]:
  """base * 2^stage, capped at 320 (3D) or 512 (2D)."""
  return tuple(min(base * 2**s, MAX_FEATURES[dims]) for s in range(num_stages))


def network_topology(spacing: Sequence[float], patch_size: Sequence[float],
                     min_feature_map: int = MIN_FEATURE_MAP_SIZE) -> Topology:
  """Pooling strides and kernel sizes for a patch (get_pool_and_conv_props).

  Args:
    spacing: mm per axis at the plan's resolution.
    patch_size: the patch before padding; may be fractional (nnU-Net clips
      the initial patch to the unrounded median shape).
    min_feature_map: smallest edge of a bottleneck feature map.

  Returns:
    The topology, with the patch padded up to a multiple of its divisor.
  """
  dims = len(spacing)
  current_spacing = [float(s) for s in spacing]
  current_size = list(patch_size)
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


def shrink_axis(spacing: Sequence[float], topology: Topology, axis: int
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


def activation_count(patch_size: Sequence[int],
                     strides: Sequence[Sequence[int]],
                     features: Sequence[int], num_classes: int) -> int:
  """Stored activations of one sample: A in the module docstring."""
  voxels, size = [], list(patch_size)
  for stride in strides:
    size = [s // t for s, t in zip(size, stride)]
    voxels.append(math.prod(size))
  encoder = sum(2 * f * v for f, v in zip(features, voxels))
  decoder = sum(3 * f * v for f, v in zip(features[:-1], voxels[:-1]))
  return encoder + decoder + num_classes * voxels[0]


def budget_activations(dims: int, budget_gb: float) -> float:
  """nnU-Net's `reference`: activations its reference batch may hold."""
  return REFERENCE[dims][0] * (budget_gb / REFERENCE_BUDGET_GB)


def scaled_count(topology: Topology, num_classes: int,
                 bytes_per_value: int) -> float:
  """Activation count in 2-byte units (nnU-Net's `estimate` at 2 bytes)."""
  dims = len(topology.patch_size)
  features = features_per_stage(len(topology.strides), dims)
  count = activation_count(topology.patch_size, topology.strides, features,
                           num_classes)
  return count * (bytes_per_value / REFERENCE_BYTES_PER_VALUE)


def vram_gb(patch_size: Sequence[int], strides: Sequence[Sequence[int]],
            features: Sequence[int], num_classes: int, batch_size: int,
            bytes_per_value: int = 2) -> float:
  """Estimated training memory in GB (1e9 bytes); see the module docstring."""
  reference_count, reference_batch = REFERENCE[len(patch_size)]
  bytes_factor = REFERENCE_BUDGET_GB * 1e9 / (
      reference_batch * reference_count * REFERENCE_BYTES_PER_VALUE)
  count = activation_count(patch_size, strides, features, num_classes)
  return batch_size * count * bytes_per_value * bytes_factor / 1e9
