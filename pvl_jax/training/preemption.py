"""SIGTERM handling: Slurm and cloud pre-emption send it before killing.

In a multi-process run every process must stop at the same step: saving a
checkpoint is a collective in orbax, as is the train step, so a process that
saves while another steps waits forever. SIGTERM may reach the processes at
different times (or only some of them), so the decision is collective: every
`SYNC_EVERY` steps the processes all-gather their flags, and all stop if any
was signalled. A single process decides on its own, at once.
"""

import signal
import types

import jax
from jax.experimental import multihost_utils
import numpy as np

# Steps between the processes' agreement on stopping. A collective every
# step would make each step wait for the previous one on the host; every 10
# steps costs nothing and leaves seconds, not minutes, of a grace period.
SYNC_EVERY = 10


class PreemptionGuard:
  """Records SIGTERM so the training loop can checkpoint and exit cleanly.

  Use as a context manager around the loop and ask `should_stop(step)` after
  every step: it turns True once the signal arrived (in any process, for a
  multi-process run: at the same step in all of them). The previous handler
  is restored on exit.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step` (same in all processes)."""
    if jax.process_count() == 1:
      return self.requested
    if step % SYNC_EVERY:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))

  def __enter__(self) -> "PreemptionGuard":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    signal.signal(signal.SIGTERM, self._previous)


def wait_for_all_processes(name: str) -> None:
  """Blocks until every process got here (a no-op for a single process).

  At the end of a run process 0 evaluates while the others have nothing left
  to do; if they exited, `srun --kill-on-bad-exit` or a TPU pod could stop
  the job before process 0 writes its results.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Preempted(Exception):
  """Raised after the final checkpoint of a SIGTERM'd run was written."""
