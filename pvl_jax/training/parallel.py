"""Data parallelism over every device, written with `jax.jit` over a mesh.

pmap semantics: the global batch is sharded along the 1-D mesh axis "data",
parameters and optimizer state are replicated, and XLA inserts the
all-reduce that averages gradients (the loss is a mean over the global
batch). In a multi-process run each process feeds its own slice of the
global batch through `jax.make_array_from_process_local_data`.
"""

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np


class DataParallel:
  """The device mesh and the shardings of a data-parallel step."""

  def __init__(self, devices: list[jax.Device] | None = None):
    """Builds a 1-D mesh over `devices` (default: every device)."""
    devices = devices or jax.devices()
    self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch = NamedSharding(self.mesh, P("data"))

  def jit(self, step_fn, donate_state: bool = True):
    """Jits `step_fn(state, batch)`: state replicated, batch sharded."""
    return jax.jit(step_fn, in_shardings=(self.replicated, self.batch),
                   out_shardings=self.replicated,
                   donate_argnums=(0,) if donate_state else ())

  def global_batch(self, local_batch: dict[str, np.ndarray]
                   ) -> dict[str, jax.Array]:
    """Assembles this process's batch slice into global sharded arrays."""
    return {k: jax.make_array_from_process_local_data(self.batch, v)
            for k, v in local_batch.items()}
