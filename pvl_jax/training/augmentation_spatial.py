"""nnU-Net's spatial augmentation in JAX: rotation, scaling and mirroring.

One sample at a time (the recipe vmaps over the batch): image
(*spatial, channels), label (*spatial) integer.

As batchgeneratorsv2 0.3.6's `SpatialTransform` (what nnU-Net v2.8.1
trains with): output voxel j samples the input at
`A @ (j - (P - 1) / 2) + (S - 1) / 2`, A = rotation @ scaling, P the
patch and S the (enlarged) input shape, so the patch is the rotated and
scaled centre of the input; a mirror is A with negated columns. The image
is resampled linearly with zeros outside (torch's
`grid_sample(padding_mode="zeros")`, scipy's `grid-constant`); the label
by linear interpolation of each label's indicator and the largest score
per voxel ("thresholded linear": for a binary mask away from the border,
lesion where the interpolated mask exceeds 0.5). Outside the input the
score goes to a padding label of its own, which becomes background (nnU-Net
pads the label with -1 and maps -1 to 0 after the transforms). Ties go to
the lowest label (batchgeneratorsv2's `seg_tiebreak` 'lowest'; its default
'nearest' differs only on exact ties, which random angles and scales do not
produce).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.scipy import ndimage


def _rotation_2d(angle: jax.Array) -> jax.Array:
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.array([[c, -s], [s, c]])


def _rotation_3d(angles: jax.Array) -> jax.Array:
  """batchgeneratorsv2's Rz @ Ry @ Rx (angles about axes 0, 1, 2)."""
  (cx, cy, cz), (sx, sy, sz) = jnp.cos(angles), jnp.sin(angles)
  one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
  rx = jnp.array([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
  ry = jnp.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
  rz = jnp.array([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
  return rz @ ry @ rx


def affine_matrix(angles: jax.Array, scale: jax.Array, ndim: int,
                  slice_axis: int | None) -> jax.Array:
  """The rotation-and-scaling matrix A of one sample.

  Args:
    angles: radians; 3 (about axes 0, 1, 2) for a 3D patch, else 1.
    scale: one factor for every transformed axis (nnU-Net synchronises
      them); > 1 samples a larger region, so objects shrink.
    ndim: spatial axes of the patch.
    slice_axis: for a 3D patch augmented slice by slice, the slice axis: A
      rotates and scales the plane of the other two axes and leaves it.

  Returns:
    (ndim, ndim) matrix.
  """
  if ndim == 2 or slice_axis is not None:
    plane = _rotation_2d(angles[0]) * scale
    if ndim == 2:
      return plane
    axes = [a for a in range(3) if a != slice_axis]
    matrix = jnp.eye(3, dtype=plane.dtype)
    return matrix.at[jnp.ix_(jnp.array(axes), jnp.array(axes))].set(plane)
  return _rotation_3d(angles) * scale


def sample_coordinates(matrix: jax.Array, in_shape: Sequence[int],
                       out_shape: Sequence[int]) -> jax.Array:
  """Input coordinates of every output voxel: (ndim, *out_shape)."""
  axes = [jnp.arange(p, dtype=jnp.float32) - (p - 1) / 2 for p in out_shape]
  grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"))
  centre = (jnp.asarray(in_shape, jnp.float32) - 1) / 2
  centre = centre.reshape((-1,) + (1,) * len(out_shape))
  return jnp.einsum("ij,j...->i...", matrix.astype(jnp.float32), grid) + centre


def _resample(volume: jax.Array, coordinates: jax.Array) -> jax.Array:
  return ndimage.map_coordinates(volume, list(coordinates), order=1,
                                 mode="constant", cval=0.0)


def warp(image: jax.Array, label: jax.Array, matrix: jax.Array,
         out_shape: Sequence[int], label_values: Sequence[int]
         ) -> tuple[jax.Array, jax.Array]:
  """Resamples a sample's image and label through the same transform.

  Args:
    image: (*in_shape, channels) float.
    label: (*in_shape) integer; 0 is background.
    matrix: A (`affine_matrix`).
    out_shape: the patch.
    label_values: the label values other than background, each warped as
      its own indicator; any other value becomes background.

  Returns:
    (image (*out_shape, channels), label (*out_shape), label's dtype).
  """
  coordinates = sample_coordinates(matrix, label.shape, out_shape)
  values = (0, *sorted(label_values))
  indicators = [(label == v).astype(image.dtype)[..., None] for v in values]
  # One resampling of all channels and indicators, as the last axis: one
  # gather per corner instead of one per volume (7x faster on the CPU).
  warped = jax.vmap(lambda volume: _resample(volume, coordinates),
                    in_axes=-1, out_axes=-1)(
                        jnp.concatenate([image, *indicators], axis=-1))
  channels = image.shape[-1]
  scores = [warped[..., channels + k] for k in range(len(values))]
  # Outside the input, nnU-Net's padding label (-1, later background) takes
  # what the indicators leave; it competes as a label of its own.
  best = 1 - sum(scores)
  warped_label = jnp.zeros(out_shape, label.dtype)
  # The argmax, ties to the lower label, unrolled (XLA's CPU argmax is slow).
  for value, score in zip(values, scores):
    warped_label = jnp.where(score > best, jnp.asarray(value, label.dtype),
                             warped_label)
    best = jnp.maximum(best, score)
  return warped[..., :channels], warped_label
