"""The analytic U-Net FLOP count against the convolutions JAX traces."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import pytest

from pvl_jax.models import flops
from pvl_jax.models import unet


def traced_conv_flops(fn, *args) -> int:
  """2 * output elements * kernel taps * input features, per traced conv."""
  total = 0

  def visit(jaxpr):
    nonlocal total
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        kernel = eqn.invars[1].aval.shape
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec
        c_in = kernel[rhs_spec[1]]
        taps = math.prod(kernel[d] for d in rhs_spec[2:])
        total += 2 * math.prod(out) * taps * c_in
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return total


@pytest.mark.parametrize("patch,strides,kernels,deep_supervision", [
    ((16, 16, 16), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), ((3, 3, 3),) * 3, True),
    ((8, 16, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2)),
     ((1, 3, 3), (3, 3, 3), (3, 3, 3)), False),
    ((32, 32), ((1, 1), (2, 2), (2, 2)), ((3, 3),) * 3, True),
])
def test_forward_flops_match_the_traced_convolutions(patch, strides, kernels,
                                                     deep_supervision):
  features = (4, 8, 16)
  model = unet.UNet(features=features, strides=strides, kernel_sizes=kernels,
                    deep_supervision=deep_supervision)
  x = jax.ShapeDtypeStruct((1, *patch, 2), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  expected = traced_conv_flops(model.apply, params, x)
  assert flops.unet_forward_flops(patch, 2, features, strides, kernels,
                                  deep_supervision=deep_supervision) == expected
