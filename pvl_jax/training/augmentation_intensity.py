"""nnU-Net's intensity augmentations in JAX, on explicit parameters.

One sample at a time: image (*spatial, channels), per-channel parameters
of shape (channels,) or (channels, ndim). Each function is the arithmetic
of its batchgeneratorsv2 0.3.6 transform (what nnU-Net v2.8.1 trains with);
drawing the parameters and choosing which samples and channels get a
transform is `augmentation`'s job. Shapes are static (jit): where a
transform's work depends on a drawn value (the blur kernel's width, the
low-resolution grid), the drawn value enters as the entries of a matrix
applied along each axis.
"""

import jax
import jax.numpy as jnp

# batchgeneratorsv2's epsilon for ranges and standard deviations.
EPS = 1e-7
# blur_dimension's kernel half-width in standard deviations.
BLUR_TRUNCATE = 6.0


def blur_kernel_size(sigma):
  """batchgeneratorsv2's Gaussian kernel size: sigma * 6 + 0.5, to an odd size.

  Works on Python floats (the static widest kernel) and on arrays alike.
  Python's round and jnp.round both round halves to even.
  """
  n = sigma * BLUR_TRUNCATE + 0.5
  rounded = jnp.round(n) if isinstance(n, jax.Array) else round(n)
  return jnp.where(rounded % 2 == 1, rounded,
                   jnp.where(n - rounded >= 0, rounded + 1, rounded - 1))


def _along_axis(image: jax.Array, operators: jax.Array, axis: int
                ) -> jax.Array:
  """Applies a per-channel linear operator (channels, n, n) along one axis.

  Blur and low resolution are linear along each axis; as matrices they run
  as dense products, which XLA's CPU backend executes far faster than the
  gathers or shifted slices they replace (and a GPU does not mind).
  """
  moved = jnp.moveaxis(image, axis, -2)
  return jnp.moveaxis(jnp.einsum("cji,...ic->...jc", operators, moved),
                      -2, axis)


def _reflect(index: jax.Array, size: int) -> jax.Array:
  """Indices reflected into [0, size) without repeating the edge voxel."""
  if size == 1:
    return jnp.zeros_like(index)
  period = 2 * (size - 1)
  index = jnp.mod(index, period)
  return jnp.where(index > size - 1, period - index, index)


def _blur_operators(sigmas: jax.Array, size: int, radius: int) -> jax.Array:
  """Per-channel Gaussian along an axis of `size`, reflect padded, as matrices.

  batchgeneratorsv2's kernel: width `blur_kernel_size(sigma)`, normalised,
  applied with torch's "reflect" padding (scipy's "mirror").
  """
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  half = (blur_kernel_size(sigmas) - 1) / 2  # (channels,)
  safe = jnp.maximum(sigmas, EPS)[:, None]
  weights = jnp.where(jnp.abs(taps) <= half[:, None],
                      jnp.exp(-0.5 * (taps / safe) ** 2), 0.0)
  weights = weights / weights.sum(1, keepdims=True)  # (channels, taps)
  sources = _reflect(jnp.arange(size)[:, None]
                     + jnp.arange(-radius, radius + 1)[None], size)
  one_hot = jax.nn.one_hot(sources, size, dtype=jnp.float32)  # (n, taps, n)
  return jnp.einsum("ct,jti->cji", weights, one_hot)


def gaussian_blur(image: jax.Array, sigmas: jax.Array, radius: int
                  ) -> jax.Array:
  """Separable Gaussian blur, one sigma per channel and axis.

  Args:
    image: (*spatial, channels).
    sigmas: (channels, ndim) standard deviations in voxels.
    radius: static half-width of the widest kernel the sigmas may need
      (`(blur_kernel_size(max sigma) - 1) // 2`); narrower kernels are
      zero beyond their own width.
  """
  for axis in range(image.ndim - 1):
    image = _along_axis(image, _blur_operators(
        sigmas[:, axis], image.shape[axis], radius), axis)
  return image


def _channel_stats(image: jax.Array, reduce) -> jax.Array:
  return reduce(image, axis=tuple(range(image.ndim - 1)))


def contrast(image: jax.Array, factors: jax.Array) -> jax.Array:
  """Scales each channel about its mean, clipped to its former range."""
  mean = _channel_stats(image, jnp.mean)
  low, high = _channel_stats(image, jnp.min), _channel_stats(image, jnp.max)
  return jnp.clip((image - mean) * factors + mean, low, high)


def _low_resolution_operators(scales: jax.Array, size: int) -> jax.Array:
  """Nearest-exact down to round(n * scale) voxels, linear back up to n.

  torch's `interpolate(mode="nearest-exact")` then `mode="linear"` with
  align_corners=False along one axis, per channel, as (channels, n, n)
  matrices.
  """
  low = jnp.maximum(jnp.round(size * scales), 1.0)[:, None]  # (channels, 1)
  out = jnp.arange(size, dtype=jnp.float32)[None]
  source = jnp.maximum((out + 0.5) * (low / size) - 0.5, 0.0)
  first = jnp.floor(source)
  second = jnp.minimum(first + 1, low - 1)
  weight = source - first

  def input_index(i):  # the input voxel that low-resolution voxel i copies
    return jnp.minimum(jnp.floor((i + 0.5) * (size / low)), size - 1).astype(
        jnp.int32)

  return (jax.nn.one_hot(input_index(first), size) * (1 - weight)[..., None]
          + jax.nn.one_hot(input_index(second), size) * weight[..., None])


def low_resolution(image: jax.Array, scales: jax.Array) -> jax.Array:
  """Simulated low resolution: each channel down- and upsampled per axis.

  Args:
    image: (*spatial, channels).
    scales: (channels, ndim) factors; 1 leaves an axis unchanged.
  """
  for axis in range(image.ndim - 1):
    image = _along_axis(image, _low_resolution_operators(
        scales[:, axis], image.shape[axis]), axis)
  return image


def gamma(image: jax.Array, gammas: jax.Array, invert: bool) -> jax.Array:
  """Gamma on the range-normalised channel, its mean and std retained.

  Args:
    image: (*spatial, channels).
    gammas: (channels,) exponents > 0.
    invert: apply to the negated image (and negate back), which brightens
      where plain gamma darkens.
  """
  image = -image if invert else image
  mean = _channel_stats(image, jnp.mean)
  # torch.std is the sample standard deviation.
  std = _channel_stats(image, lambda x, axis: jnp.std(x, axis=axis, ddof=1))
  low, high = _channel_stats(image, jnp.min), _channel_stats(image, jnp.max)
  span = high - low
  image = ((image - low) / jnp.maximum(span, EPS)) ** gammas * span + low
  new_mean = _channel_stats(image, jnp.mean)
  new_std = _channel_stats(image,
                           lambda x, axis: jnp.std(x, axis=axis, ddof=1))
  image = (image - new_mean) * (std / jnp.maximum(new_std, EPS)) + mean
  return -image if invert else image
