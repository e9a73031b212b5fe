"""3D convolution as 2D convolutions over depth slices, for XLA's CPU backend.

On the 2-core CPU machine XLA's 3D convolution is about 10x slower than the
same work done by its 2D convolution (measured: docs/results.md, "CPU
convolution"). So a 3D convolution is computed from 2D convolutions of the
input's depth slices, one term per depth tap of the kernel; the parameters and
the function are the same, so checkpoints do not depend on the form.

Two forms:

* stride 1 (every convolution of a U-Net stage but the downsampling one): one
  2D convolution of all depth slices with the kernel's depth taps stacked on
  its output features, the taps' outputs then summed at their depth shifts.
  The input is read once, without per-tap copies, and the matrix products are
  `taps` times wider. Its gradient is written out (`jax.custom_vjp`): the input
  gradient is the same stacked convolution of the cotangent with the flipped
  kernel, the kernel gradient XLA's own for the stacked 2D convolution.
  Measured against the per-tap form: docs/results.md, "The CPU training step".
* strided along depth: per tap, the input slices that meet it, one 2D
  convolution each, summed.

`depth_sliced_conv` has `lax.conv_general_dilated`'s signature, so a flax
`nn.Conv(..., conv_general_dilated=depth_sliced_conv)` uses it.
"""

from collections.abc import Sequence
import functools

import jax
from jax import lax
import jax.numpy as jnp

# flax passes NDHWC inputs and DHWIO kernels; other layouts are not sliced.
_LAYOUT_3D = ("NDHWC", "DHWIO", "NDHWC")
_LAYOUT_2D = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], ...]


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
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if all(s == 1 for s in window_strides) and rhs.shape[0] > 1:
    return _stride_one(lhs, rhs, padding, precision, preferred_element_type)
  return _per_tap(lhs, rhs, tuple(window_strides), padding, precision,
                  preferred_element_type)


def _per_tap(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
             padding: Padding, precision, preferred_element_type
             ) -> jax.Array:
  """Any strides: per depth tap, a 2D convolution of the slices it meets."""
  (low, high), *in_plane = padding
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


def _tap_stacked(lhs: jax.Array, rhs: jax.Array, padding: Padding, precision,
                 preferred_element_type) -> jax.Array:
  """Stride-1 3D convolution from one 2D convolution of every depth slice.

  The kernel's depth taps are stacked on the 2D convolution's output
  features; output slice z then sums tap k's output of input slice
  z + k - low (zero outside the input), low being the depth padding.
  """
  (low, high), *in_plane = padding
  batch, depth, height, width, channels = lhs.shape
  taps, kernel_h, kernel_w, _, features = rhs.shape
  stacked = rhs.transpose(1, 2, 3, 0, 4).reshape(kernel_h, kernel_w,
                                                 channels, taps * features)
  per_tap = lax.conv_general_dilated(
      lhs.reshape(batch * depth, height, width, channels), stacked, (1, 1),
      in_plane, dimension_numbers=_LAYOUT_2D, precision=precision,
      preferred_element_type=preferred_element_type)
  per_tap = per_tap.reshape(batch, depth, *per_tap.shape[1:3], taps,
                            features)
  out_depth = depth + low + high - taps + 1
  total = jnp.zeros((batch, out_depth, *per_tap.shape[2:4], features),
                    per_tap.dtype)
  for tap in range(taps):
    shift = tap - low  # output slice z reads input slice z + shift
    first, last = max(shift, 0), min(out_depth + shift, depth)
    if last <= first:
      continue  # this tap meets only padding
    # Slicing and padding fuse into the sum: no per-tap copy.
    total += jnp.pad(per_tap[:, first:last, :, :, tap],
                     ((0, 0), (first - shift, out_depth + shift - last),
                      (0, 0), (0, 0), (0, 0)))
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _stride_one(lhs: jax.Array, rhs: jax.Array, padding: Padding, precision,
                preferred_element_type) -> jax.Array:
  return _tap_stacked(lhs, rhs, padding, precision, preferred_element_type)


def _stride_one_fwd(lhs, rhs, padding, precision, preferred_element_type):
  out = _tap_stacked(lhs, rhs, padding, precision, preferred_element_type)
  return out, (lhs, rhs)


def _stride_one_bwd(padding, precision, preferred_element_type, residuals,
                    cotangent):
  lhs, rhs = residuals
  # A stride-1 convolution's input gradient is the convolution of the
  # cotangent with the flipped kernel (inputs and outputs swapped), padded
  # by kernel - 1 - padding: the same fast stacked form. XLA's own transpose
  # of the stacked convolution is slower (measured).
  flipped = jnp.flip(rhs, (0, 1, 2)).swapaxes(3, 4)
  transposed = tuple((k - 1 - low, k - 1 - high)
                     for k, (low, high) in zip(rhs.shape[:3], padding))
  d_lhs = _tap_stacked(cotangent, flipped, transposed, precision,
                       preferred_element_type)
  # Kernel tap k's gradient: the 2D kernel gradient of every input slice
  # against the cotangent moved to the input slices tap k met. One small
  # convolution per tap, which the runtime runs in parallel (the stacked
  # form's single wider one is slower on two idle cores, measured); moving
  # the cotangent instead of slicing the input copies fewer features.
  (low, _), *in_plane = padding
  batch, depth, height, width, channels = lhs.shape
  slices = lhs.reshape(batch * depth, height, width, channels)
  out_depth = cotangent.shape[1]
  d_rhs = []
  for tap in range(rhs.shape[0]):
    shift = tap - low  # output slice z read input slice z + shift
    first, last = max(shift, 0), min(out_depth + shift, depth)
    if last <= first:  # this tap met only padding
      d_rhs.append(jnp.zeros_like(rhs[tap]))
      continue
    met = jnp.pad(cotangent[:, first - shift:last - shift],
                  ((0, 0), (first, depth - last), (0, 0), (0, 0), (0, 0)))
    _, tap_vjp = jax.vjp(lambda k: lax.conv_general_dilated(
        slices, k, (1, 1), in_plane, dimension_numbers=_LAYOUT_2D,
        precision=precision, preferred_element_type=preferred_element_type),
                         rhs[tap])
    d_rhs.append(tap_vjp(met.reshape(batch * depth, *met.shape[2:]))[0])
  return d_lhs.astype(lhs.dtype), jnp.stack(d_rhs)


_stride_one.defvjp(_stride_one_fwd, _stride_one_bwd)
