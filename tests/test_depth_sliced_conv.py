"""depth_sliced_conv against XLA's own 3D convolution."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from pvl_jax.models import unet
from pvl_jax.models.depth_sliced_conv import depth_sliced_conv

LAYOUT = ("NDHWC", "DHWIO", "NDHWC")


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


@pytest.mark.parametrize("spatial,kernel,strides,padding", [
    ((9, 8, 7), (3, 3, 3), (1, 1, 1), "SAME"),
    ((8, 8, 8), (3, 3, 3), (2, 2, 2), "SAME"),
    ((9, 7, 8), (3, 3, 3), (2, 2, 2), "SAME"),
    ((6, 10, 10), (1, 3, 3), (1, 2, 2), "SAME"),
    ((8, 6, 6), (3, 1, 3), (2, 1, 1), "VALID"),
    ((5, 6, 7), (1, 1, 1), (1, 1, 1), "SAME"),
    ((7, 7, 7), (3, 3, 3), (1, 1, 1), ((2, 0), (1, 1), (0, 2))),
    # Stride 1 with a tap that meets only padding (first output slice).
    ((2, 6, 6), (3, 3, 3), (1, 1, 1), ((3, 0), (1, 1), (1, 1))),
    ((5, 6, 6), (2, 3, 3), (1, 1, 1), "SAME"),
])
def test_matches_xla_convolution_and_its_gradients(spatial, kernel, strides,
                                                   padding):
  x = _random((2, *spatial, 3), 0)
  w = _random((*kernel, 3, 4), 1)

  def native(x, w):
    return lax.conv_general_dilated(x, w, strides, padding,
                                    dimension_numbers=LAYOUT)

  def sliced(x, w):
    return depth_sliced_conv(x, w, strides, padding,
                             dimension_numbers=LAYOUT)

  expected = native(x, w)
  got = sliced(x, w)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The training step differentiates it: both gradients must agree too.
  cotangent = _random(expected.shape, 2)
  grads_native = jax.grad(lambda x, w: jnp.sum(native(x, w) * cotangent),
                          argnums=(0, 1))(x, w)
  grads_sliced = jax.grad(lambda x, w: jnp.sum(sliced(x, w) * cotangent),
                          argnums=(0, 1))(x, w)
  for g_sliced, g_native in zip(grads_sliced, grads_native):
    np.testing.assert_allclose(g_sliced, g_native, rtol=1e-4, atol=1e-4)


def test_other_inputs_go_to_xla_unchanged():
  x2d = _random((2, 8, 8, 3), 0)
  w2d = _random((3, 3, 3, 4), 1)
  layout_2d = ("NHWC", "HWIO", "NHWC")
  np.testing.assert_array_equal(
      depth_sliced_conv(x2d, w2d, (1, 1), "SAME",
                        dimension_numbers=layout_2d),
      lax.conv_general_dilated(x2d, w2d, (1, 1), "SAME",
                               dimension_numbers=layout_2d))
  x = _random((1, 6, 6, 6, 2), 2)
  w = _random((3, 3, 3, 2, 2), 3)
  dilated = dict(rhs_dilation=(2, 2, 2), dimension_numbers=LAYOUT)
  np.testing.assert_array_equal(
      depth_sliced_conv(x, w, (1, 1, 1), "SAME", **dilated),
      lax.conv_general_dilated(x, w, (1, 1, 1), "SAME", **dilated))


def test_unet_outputs_do_not_depend_on_the_convolution_form():
  kwargs = dict(features=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (1, 2, 2)),
                kernel_sizes=((3, 3, 3), (3, 3, 3), (1, 3, 3)))
  x = _random((2, 8, 16, 16, 1), 4)
  sliced = unet.UNet(**kwargs, depth_sliced=True)
  native = unet.UNet(**kwargs, depth_sliced=False)
  # Jitted: one compilation per form instead of one per operation.
  params = jax.jit(sliced.init)(jax.random.key(0), x)
  # Same parameter tree: checkpoints load into either form.
  assert (jax.tree.structure(params) == jax.tree.structure(
      jax.eval_shape(native.init, jax.random.key(0), x)))
  (seg_sliced, cls_sliced) = jax.jit(sliced.apply)(params, x)
  (seg_native, cls_native) = jax.jit(native.apply)(params, x)
  for a, b in zip(seg_sliced, seg_native):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(cls_sliced, cls_native, rtol=1e-4, atol=1e-4)
