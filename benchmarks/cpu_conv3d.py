"""XLA's 3D convolution vs depth_sliced_conv on the CPU; prints a table.

Usage (from the repository root): python -m benchmarks.cpu_conv3d [--repeats=10]

Rows: single 3x3x3 convolutions of the demo U-Net's shapes (forward, and
forward + input and weight gradients), then the demo's whole joint training
step (3-stage base-8 U-Net, 32^3 patches, batch 2, deep supervision). Times
are medians after one warm-up call.
"""

import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import train_step
from configs import joint
from pvl_jax.models import unet
from pvl_jax.models.depth_sliced_conv import depth_sliced_conv

_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per row.")

LAYOUT = ("NDHWC", "DHWIO", "NDHWC")
# (spatial size, input features, output features, stride) of demo U-Net convs.
CONV_SHAPES = ((32, 1, 8, 1), (32, 8, 8, 1), (32, 16, 8, 1), (32, 8, 16, 2),
               (16, 32, 16, 1), (16, 16, 32, 2))


def median_ms(fn, *args) -> float:
  """Median wall time of `fn(*args)` in ms, after a compiling warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def conv_rows() -> list[tuple[str, float, float]]:
  """(name, native ms, sliced ms) for each conv, forward and with gradients."""
  rng = np.random.default_rng(0)
  rows = []
  for size, c_in, c_out, stride in CONV_SHAPES:
    x = jnp.asarray(rng.normal(size=(2, size, size, size, c_in)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, c_in, c_out)), jnp.float32)
    name = f"conv {size}^3 {c_in}->{c_out} stride {stride}"
    times = {}
    for impl_name, impl in (("native", lax.conv_general_dilated),
                            ("sliced", depth_sliced_conv)):
      def conv(x, w, impl=impl):
        return impl(x, w, (stride,) * 3, "SAME", dimension_numbers=LAYOUT)
      times[impl_name] = (
          median_ms(jax.jit(conv), x, w),
          median_ms(jax.jit(jax.grad(lambda x, w, conv=conv: conv(x, w).sum(),
                                     argnums=(0, 1))), x, w))
    rows.append((f"{name} forward", times["native"][0], times["sliced"][0]))
    rows.append((f"{name} fwd+grads", times["native"][1], times["sliced"][1]))
  return rows


def train_step_row() -> tuple[str, float, float]:
  """The demo config's joint training step with either convolution."""
  config = joint.get_config("demo")
  times = []
  for depth_sliced in (False, True):
    model = unet.unet_from_config(config.model).clone(
        depth_sliced=depth_sliced)
    variant = train_step.compiled_train_step(model, config)
    train_step.run_steps(variant, 1)  # warm-up
    times.append(1000 * float(np.median(
        train_step.run_steps(variant, _REPEATS.value))))
  return ("demo joint train step (batch 2, 32^3)", *times)


def main(argv):
  del argv
  print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
  print("| operation | XLA 3D conv (ms) | depth-sliced (ms) | speed-up |")
  print("| --- | --- | --- | --- |")
  for name, native, sliced in [*conv_rows(), train_step_row()]:
    print(f"| {name} | {native:.1f} | {sliced:.1f} | {native / sliced:.1f}x |",
          flush=True)


if __name__ == "__main__":
  app.run(main)
