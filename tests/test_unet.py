"""U-Net shapes (2D and 3D), deep supervision, and the upsampling identity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pvl_jax.models import unet


def _model(ndim, deep_supervision=True, dtype=jnp.float32):
  return unet.UNet(features=(4, 8, 16), strides=((1,) * ndim, (2,) * ndim,
                                                 (2,) * ndim),
                   kernel_sizes=((3,) * ndim,) * 3,
                   deep_supervision=deep_supervision, dtype=dtype)


@pytest.mark.parametrize("ndim", [2, 3])
def test_output_shapes(ndim):
  model = _model(ndim)
  x = jnp.ones((2,) + (16,) * ndim + (1,))
  variables = jax.jit(model.init)(unet.init_key(0), x)
  seg, cls = jax.jit(model.apply)(variables, x)
  assert [s.shape for s in seg] == [(2,) + (16,) * ndim + (2,),
                                    (2,) + (8,) * ndim + (2,)]
  assert cls.shape == (2,)
  assert all(s.dtype == jnp.float32 for s in seg)


def test_without_deep_supervision_one_output():
  model = _model(3, deep_supervision=False)
  x = jnp.ones((1, 8, 8, 8, 1))
  seg, _ = model.apply(model.init(unet.init_key(0), x), x)
  assert len(seg) == 1


def test_anisotropic_strides():
  model = unet.UNet(features=(4, 8, 16),
                    strides=((1, 1, 1), (2, 2, 1), (2, 2, 2)),
                    kernel_sizes=((3, 3, 1), (3, 3, 3), (3, 3, 3)))
  x = jnp.ones((1, 16, 16, 8, 1))
  seg, _ = model.apply(model.init(unet.init_key(0), x), x)
  assert seg[1].shape == (1, 8, 8, 8, 2)


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_cls_head_reads_pooled_bottleneck_and_soft_lesion_volume(
    deep_supervision):
  """The logit recomputed by hand from the bottleneck and the finest map."""
  model = _model(3, deep_supervision=deep_supervision)
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 16, 1))
  variables = model.init(unet.init_key(0), x)
  (seg, cls), state = model.apply(variables, x, capture_intermediates=True)
  bottleneck = state["intermediates"]["Stage_2"]["__call__"][0]
  pooled = np.asarray(bottleneck).mean(axis=(1, 2, 3))
  finest = np.asarray(seg[0], np.float64)
  lesion_prob = 1 / (1 + np.exp(finest[..., 0] - finest[..., 1]))
  load = np.log1p(lesion_prob.sum(axis=(1, 2, 3)))
  params = variables["params"]
  h = np.concatenate([pooled, load[:, None]], axis=1)
  head = params["cls_head"]
  h = h @ head["hidden"]["kernel"] + head["hidden"]["bias"]
  h = np.where(h > 0, h, 0.01 * h)
  expected = (h @ head["out"]["kernel"] + head["out"]["bias"])[:, 0]
  np.testing.assert_allclose(cls, expected, rtol=1e-4, atol=1e-5)


def test_cls_logit_follows_the_segmentation_output():
  """More lesion probability, same bottleneck: the logit moves."""
  model = _model(3)
  x = jax.random.normal(jax.random.key(4), (1, 16, 16, 16, 1))
  variables = model.init(unet.init_key(0), x)
  _, cls = model.apply(variables, x)
  shifted = jax.tree.map(lambda a: a, variables)
  bias = shifted["params"]["seg_head_0"]["bias"]
  shifted["params"]["seg_head_0"]["bias"] = bias.at[1].add(5.0)
  _, cls_shifted = model.apply(shifted, x)
  assert abs(float(cls_shifted[0] - cls[0])) > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = _model(3, dtype=jnp.bfloat16)
  x = jnp.ones((1, 8, 8, 8, 1))
  variables = model.init(unet.init_key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  seg, cls = model.apply(variables, x)
  assert seg[0].dtype == jnp.float32 and cls.dtype == jnp.float32


def test_upsample_equals_transposed_convolution():
  """1x1 conv + depth-to-space == stride-2, kernel-2 transposed conv."""
  c_in, c_out = 3, 2
  x = jax.random.normal(jax.random.key(1), (1, 4, 5, 3, c_in))
  up = unet.Upsample(c_out, (2, 2, 2))
  params = up.init(unet.init_key(2), x)["params"]
  kernel = params["Conv_0"]["kernel"]  # (1, 1, 1, c_in, 8 * c_out)
  # Output channel block (i, j, k) of the 1x1 conv fills spatial offset
  # (i, j, k): that is the transposed conv kernel at that offset.
  w = kernel.reshape(c_in, 2, 2, 2, c_out).transpose(1, 2, 3, 0, 4)
  # lax.conv_transpose correlates with the kernel flipped spatially.
  w = w[::-1, ::-1, ::-1]
  transposed = nn.ConvTranspose(c_out, (2, 2, 2), strides=(2, 2, 2),
                                padding="VALID", use_bias=False,
                                transpose_kernel=False)
  expected = transposed.apply({"params": {"kernel": w}}, x)
  np.testing.assert_allclose(up.apply({"params": params}, x), expected,
                             atol=1e-5)


def test_mismatched_stage_lists_raise():
  model = unet.UNet(features=(4, 8), strides=((1, 1),), kernel_sizes=((3, 3),))
  with pytest.raises(ValueError, match="one entry per stage"):
    model.init(unet.init_key(0), jnp.ones((1, 8, 8, 1)))
