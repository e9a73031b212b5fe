"""3D convolution as a sum of 2D convolutions, one per depth tap of the kernel.

XLA's CPU backend lowers 3D convolutions to a slow generic loop, while its 2D
convolutions use a fast blocked kernel. On the 2-core CPU machine a 3x3x3
convolution of a (2, 32, 32, 32, 16) batch to 8 features took 56-92 ms forward
and 161 ms for input + weight gradients; the same convolution written as three
2D convolutions over depth slices took 11 ms and 32 ms (measurements in
docs/results.md). The result is the same function of the same kernel, so
parameters and checkpoints do not depend on which form computed them.

`depth_sliced_conv` has `lax.conv_general_dilated`'s signature, so a flax
`nn.Conv(..., conv_general_dilated=depth_sliced_conv)` uses it.
"""

from collections.abc import Sequence

import jax
from jax import lax
import jax.numpy as jnp

# flax passes NDHWC inputs and DHWIO kernels; other layouts are not sliced.
_LAYOUT_3D = ("NDHWC", "DHWIO", "NDHWC")
_LAYOUT_2D = ("NHWC", "HWIO", "NHWC")


def depth_sliced_conv(lhs: jax.Array, rhs: jax.Array,
                      window_strides: Sequence[int],
                      padding: str | Sequence[tuple[int, int]],
                      lhs_dilation: Sequence[int] | None = None,
                      rhs_dilation: Sequence[int] | None = None,
                      dimension_numbers=None, feature_group_count: int = 1,
                      batch_group_count: int = 1, precision=None,
                      preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated` computed as 2D convolutions over depth.

  For a kernel of depth kd, output depth slice z sums kd 2D convolutions:
  input slice z * stride + k (after depth padding) with kernel tap k. Inputs
  that are not 3D NDHWC / DHWIO, or that use dilation or grouping, go to
  `lax.conv_general_dilated` unchanged.

  Args:
    lhs: input, (batch, depth, height, width, in_features).
    rhs: kernel, (kd, kh, kw, in_features, out_features).
    window_strides: strides along depth, height, width.
    padding: "SAME", "VALID" or one (low, high) pair per spatial axis.
    lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      batch_group_count, precision, preferred_element_type: as in
      `lax.conv_general_dilated`.

  Returns:
    The convolution, (batch, out_depth, out_height, out_width, out_features).
  """
  native = (lhs.ndim != 5
            or any(d != 1 for d in (lhs_dilation or ()))
            or any(d != 1 for d in (rhs_dilation or ()))
            or feature_group_count != 1 or batch_group_count != 1
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                          dimension_numbers)
            != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT_3D))
  if native:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:4], rhs.shape[:3],
                                  window_strides, padding)
  (low, high), *in_plane = [tuple(p) for p in padding]
  depth_stride, *plane_strides = window_strides
  taps = rhs.shape[0]
  padded = jnp.pad(lhs, ((0, 0), (low, high), (0, 0), (0, 0), (0, 0)))
  out_depth = (padded.shape[1] - taps) // depth_stride + 1
  batch, _, height, width, channels = lhs.shape
  total = None
  for tap in range(taps):
    # The input slices that meet kernel tap `tap`, one per output slice.
    slices = padded[:, tap:tap + (out_depth - 1) * depth_stride + 1:
                    depth_stride]
    out = lax.conv_general_dilated(
        slices.reshape(batch * out_depth, height, width, channels), rhs[tap],
        plane_strides, in_plane, dimension_numbers=_LAYOUT_2D,
        precision=precision, preferred_element_type=preferred_element_type)
    total = out if total is None else total + out
  return total.reshape(batch, out_depth, *total.shape[1:])
