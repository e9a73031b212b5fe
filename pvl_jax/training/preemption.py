"""SIGTERM handling: Slurm and cloud pre-emption send it before killing."""

import signal
import types


class PreemptionGuard:
  """Records SIGTERM so the training loop can checkpoint and exit cleanly.

  Use as a context manager around the loop; `requested` turns True once the
  signal arrives. The previous handler is restored on exit.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del signum, frame
    self.requested = True

  def __enter__(self) -> "PreemptionGuard":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """Raised after the final checkpoint of a SIGTERM'd run was written."""
