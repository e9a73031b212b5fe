"""Where each voxel of a training patch lies in template space.

A location-aware hand-function head (issue 25) reads the network's lesion
map block by block on the template grid, so every patch carries its
position through cutting and every spatial augmentation. The position is an
affine map, `batch["position"]` of shape (batch, 3, ndim + 1): patch voxel
index j (ndim entries; 2 for a 2D model's slices) -> template voxel
coordinate `L @ j + t` (3 entries), stored as [L | t]. Template voxel
coordinates index the located head's template grid (`template_grid`): the
record's origin there (`template_grid.record_origin`) + the index in the
cropped volume. For a preprocessing output that is the template's own grid;
for another cohort the smallest box of its records' lattice that holds them
all (for a cohort on one grid, that grid: the grid of the baseline's masks).

* The host cuts a window at `start` of the cropped volume: L selects the
  patch's axes (identity in 3D), t = origin + start (`cut_position`).
* The basic recipe's flip of patch axis a maps j_a to P_a - 1 - j_a
  (`flip_position`).
* nnU-Net's recipe resamples output voxel j from input coordinate
  A (j - (P - 1) / 2) + (S - 1) / 2 of the larger cut (mirroring folded into
  A; `augmentation_spatial.sample_coordinates`), so the position composes
  with that map (`resample_position`).

`block_indices` turns a batch's positions into the template block of every
voxel, the blocks of the baseline's matrix features
(`handfunction.block_features.pooling_matrix`: edge `factor` voxels from
template voxel 0, C order).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

KEY = "position"


def cut_position(origin: Sequence[int], start: Sequence[int],
                 patch_ndim: int, slice_axis: int) -> np.ndarray:
  """The position of a window cut at `start` of a volume at `origin`.

  Args:
    origin: the template voxel of the volume's voxel 0 (3 entries).
    start: the window's first voxel in the cropped volume (3 entries).
    patch_ndim: 3, or 2 for a 2D model's slice (`slice_axis` squeezed).
    slice_axis: the axis a 2D slice is cut across.

  Returns:
    (3, patch_ndim + 1) float32 [L | t].
  """
  axes = [a for a in range(3) if patch_ndim == 3 or a != slice_axis]
  position = np.zeros((3, patch_ndim + 1), np.float32)
  for column, axis in enumerate(axes):
    position[axis, column] = 1
  position[:, -1] = np.add(origin, start)
  return position


def flip_position(position: np.ndarray, axis: int, size: int) -> np.ndarray:
  """The position after flipping patch axis `axis` of `size` voxels."""
  flipped = position.copy()
  flipped[:, -1] += position[:, axis] * (size - 1)
  flipped[:, axis] = -position[:, axis]
  return flipped


def resample_position(position: jax.Array, matrix: jax.Array,
                      in_shape: Sequence[int], out_shape: Sequence[int]
                      ) -> jax.Array:
  """One sample's position after nnU-Net's resampling of its cut.

  Args:
    position: (3, ndim + 1) of the cut.
    matrix: A with the mirrored columns negated, (ndim, ndim).
    in_shape: the cut; out_shape: the patch.

  Returns:
    (3, ndim + 1) of the patch.
  """
  linear, offset = position[:, :-1], position[:, -1]
  in_centre = (jnp.asarray(in_shape, jnp.float32) - 1) / 2
  out_centre = (jnp.asarray(out_shape, jnp.float32) - 1) / 2
  new_linear = linear @ matrix
  new_offset = linear @ in_centre - new_linear @ out_centre + offset
  return jnp.concatenate([new_linear, new_offset[:, None]], axis=1)


def template_coordinates(position: jax.Array, patch_shape: Sequence[int]
                         ) -> jax.Array:
  """Template voxel coordinates of every patch voxel, (batch, *patch, 3)."""
  grid = jnp.stack(jnp.meshgrid(
      *[jnp.arange(p, dtype=jnp.float32) for p in patch_shape],
      indexing="ij"), axis=-1)
  linear, offset = position[:, :, :-1], position[:, :, -1]
  return (jnp.einsum("bij,...j->b...i", linear, grid)
          + offset.reshape(offset.shape[:1] + (1,) * len(patch_shape) + (3,)))


def block_grid(template_shape: Sequence[int], block: int) -> tuple[int, ...]:
  """Blocks per axis: the grid padded to a multiple of `block`."""
  return tuple(-(-int(n) // block) for n in template_shape)


def block_indices(position: jax.Array, patch_shape: Sequence[int],
                  template_shape: Sequence[int], block: int) -> jax.Array:
  """The flat template block of every patch voxel, (batch, *patch) int32.

  A voxel takes the block of the template voxel nearest its coordinate
  (resampled coordinates are fractional). Voxels outside the template grid
  (a patch overhanging the volume, a rotation reaching past the cut) get
  the index num_blocks, one past the last block, for callers to drop.

  Args:
    position: (batch, 3, ndim + 1), `batch["position"]`.
    patch_shape: the patch the positions describe.
    template_shape: the template grid (3 entries).
    block: block edge in voxels.
  """
  voxel = jnp.floor(template_coordinates(position, patch_shape) + 0.5
                    ).astype(jnp.int32)
  shape = jnp.asarray(template_shape, jnp.int32)
  inside = jnp.all((voxel >= 0) & (voxel < shape), axis=-1)
  grid = block_grid(template_shape, block)
  blocks = voxel // block
  flat = (blocks[..., 0] * grid[1] + blocks[..., 1]) * grid[2] + blocks[..., 2]
  return jnp.where(inside, flat, int(np.prod(grid)))
