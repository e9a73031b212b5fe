"""Fail-fast for multi-process runs: when one process stops, all stop.

JAX's distributed runtime notices a process that never connects
(`initialization_timeout`) or that stopped sending heartbeats
(`heartbeat_timeout_seconds`), but jaxlib 0.10 reacts by aborting every other
process (SIGABRT, a fatal log and a stack trace) after that timeout, and
`jax.distributed.initialize` offers no callback to say more (the client's own
`missed_heartbeat_callback` cannot be called from Python in this jaxlib: it
fails with std::bad_cast). Worse, a process that ends waits in the runtime's
shutdown barrier for the others, which may wait in a collective for it.

So JAX's timeouts stay as the backstop (`initialize` sets them longer than
the ones below) and this module adds, over the key-value store of the same
coordination service:
- a start-up deadline: every process must connect within `init_timeout_s`;
- a sign of life: each process bumps a counter every `BEAT_S` seconds from a
  thread; a peer whose counter has not moved for `peer_timeout_s` is taken
  as stopped (SIGKILL, out of memory, a lost host);
- a stop notice: a process that fails publishes why before it exits.
Whichever comes first, every other process prints one line,
`error: process K of N stopped: <why>` (K is the peer's --process_id), and
exits at once with status `EXIT_PEER_STOPPED`, skipping the shutdown barrier.

Process 0 hosts the coordination service: when it dies, JAX aborts the others
at once with its own message; when it fails on an error, it waits for them
to read its notice before it exits.
"""

import os
import sys
import threading
import time
import traceback

import jax
from jax.experimental import multihost_utils

# Exit status of a process that stopped because another one did.
EXIT_PEER_STOPPED = 4
# Seconds between a process's signs of life (and its look at the others').
BEAT_S = 1.0
# JAX's own timeouts, the backstop, are this many times ours: its heartbeat
# check fires between half and all of its timeout after a death, so at 3x it
# never fires before ours.
BACKSTOP_FACTOR = 3
# A peer's published failure is acted on after this grace, so that a process
# that fails in the same way at the same step (a bad config, a NaN agreed by
# all) exits with its own status rather than "peer stopped".
NOTICE_GRACE_S = 3.0
# Stop notice of a process that ends normally (finished, or pre-empted at
# the step all processes agreed on): the others need not stop for it.
DONE = "done"
_PREFIX = "pvl_jax/peers/"


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, init_timeout_s: float,
               peer_timeout_s: float) -> "PeerWatch | None":
  """`jax.distributed.initialize` with bounded waits; starts the watch.

  Also switches JAX's pre-emption service off: it catches SIGTERM for a
  sync point this project does not use (`preemption.PreemptionGuard` agrees
  on the stop step itself), which left processes deaf to SIGTERM.

  Args:
    coordinator_address: host:port of process 0; None where a cluster
      (Slurm, a TPU VM) tells JAX.
    num_processes: the number of processes, or None (cluster).
    process_id: this process's index, or None (cluster).
    init_timeout_s: every process must have connected within this time.
    peer_timeout_s: a process silent for this long is taken as stopped.

  Returns:
    The started watch; None for a single process.
  """
  jax.config.update("jax_enable_preemption_service", False)
  deadline = threading.Timer(
      init_timeout_s, _exit_peer_stopped,
      args=(_unconnected(num_processes, process_id),
            f"it did not connect to the coordinator "
            f"({coordinator_address or 'from the cluster environment'}) "
            f"within {init_timeout_s:g} s (not started, failed at start-up, "
            "or a wrong address)"))
  deadline.daemon = True
  deadline.start()
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        initialization_timeout=int(BACKSTOP_FACTOR * init_timeout_s),
        heartbeat_timeout_seconds=int(BACKSTOP_FACTOR * peer_timeout_s),
        shutdown_timeout_seconds=int(BACKSTOP_FACTOR * peer_timeout_s))
  finally:
    deadline.cancel()
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  watch = PeerWatch(distributed.global_state.client, jax.process_index(),
                    jax.process_count(), peer_timeout_s)
  watch.start()
  # CPU collectives (gloo, jaxlib 0.10.2) connect the processes at their
  # first collective and give up if they arrive more than 30 s apart (one
  # compiling or reading data longer, on a busy CPU). They are together
  # now, just out of initialize's barrier; later collectives on the same
  # devices reuse these connections, whatever the delay.
  multihost_utils.sync_global_devices("pvl_jax: connected")
  return watch


class PeerWatch:
  """Signs of life and stop notices of the processes of one run."""

  def __init__(self, client, process_id: int, num_processes: int,
               peer_timeout_s: float):
    """Sets up the watch (`start` starts it).

    Args:
      client: the distributed runtime client (its key-value store).
      process_id: this process's index.
      num_processes: the number of processes.
      peer_timeout_s: silence after which a peer is taken as stopped.
    """
    self._client = client
    self._process_id = process_id
    self._num_processes = num_processes
    self._peer_timeout_s = peer_timeout_s
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True,
                                    name="pvl_jax-peer-watch")

  def start(self) -> None:
    self._thread.start()

  def finish(self) -> None:
    """Announces a normal end: the other processes need not stop for it."""
    self._announce(DONE)

  def abandon(self, status: int, reason: str) -> None:
    """Announces this process's failure and exits at once with `status`.

    Exiting through `os._exit` skips JAX's shutdown barrier, in which this
    process would otherwise wait for peers that may be waiting for it.
    Process 0 first gives the others time to read the notice.

    Args:
      status: the exit status.
      reason: one line, published to the other processes.
    """
    self._announce(reason)
    if self._process_id == 0:
      # The coordination service lives in this process: once it is gone,
      # JAX aborts the others with its own message before they read ours.
      time.sleep(NOTICE_GRACE_S + 2 * BEAT_S)
    _flush()
    os._exit(status)

  def fail(self, error: Exception) -> None:
    """Ends the process after an unexpected exception, naming a peer if any.

    A collective whose peer died raises `JaxRuntimeError` (e.g. gloo's
    "Connection reset by peer") without saying which process it was; the
    watch names it within `peer_timeout_s` (and exits), so a JaxRuntimeError
    waits that long for it before being reported as this process's own.

    Args:
      error: the exception.
    """
    if isinstance(error, jax.errors.JaxRuntimeError):
      self._stopping.wait(self._peer_timeout_s + 2 * BEAT_S)
    traceback.print_exception(error)
    self.abandon(1, f"{type(error).__name__}: {_first_line(str(error))}")

  def _announce(self, reason: str) -> None:
    self._stopping.set()
    try:
      self._client.key_value_set(f"{_PREFIX}stop/{self._process_id}",
                                 reason, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-exception-caught
      pass  # the coordinator is gone: the others find out without a notice

  def _watch(self) -> None:
    """Beats, and exits the process when a peer stopped (thread body)."""
    peers = [p for p in range(self._num_processes) if p != self._process_id]
    last_value = dict.fromkeys(peers)
    last_change = dict.fromkeys(peers, time.monotonic())
    done, beats, last_look = set(), 0, time.monotonic()
    while not self._stopping.wait(BEAT_S):
      try:
        beats += 1
        self._client.key_value_set(f"{_PREFIX}beat/{self._process_id}",
                                   str(beats), allow_overwrite=True)
        entries = dict(self._client.key_value_dir_get(_PREFIX))
      except Exception as err:  # pylint: disable=broad-exception-caught
        if self._stopping.is_set():
          return
        if self._process_id == 0:
          raise
        # The coordination service runs in process 0.
        self._stop_for(0, "its coordination service stopped answering "
                       f"({_first_line(str(err))})", 0.0)
        return
      now = time.monotonic()
      if now - last_look > self._peer_timeout_s / 2:
        # This thread was not scheduled for a while: it cannot tell who was
        # silent, so it starts counting afresh.
        last_change = dict.fromkeys(peers, now)
      last_look = now
      for peer in peers:
        notice = entries.get(f"{_PREFIX}stop/{peer}")
        if notice == DONE:
          done.add(peer)
        elif notice is not None:
          self._stop_for(peer, notice, NOTICE_GRACE_S)
          return
        value = entries.get(f"{_PREFIX}beat/{peer}")
        if peer in done:
          continue
        if value != last_value[peer]:
          last_value[peer], last_change[peer] = value, now
        elif now - last_change[peer] > self._peer_timeout_s:
          self._stop_for(peer, f"no sign of life for "
                         f"{self._peer_timeout_s:g} s (killed, out of "
                         "memory, or its host lost)", 0.0)
          return

  def _stop_for(self, peer: int, reason: str, grace_s: float) -> None:
    """Exits naming `peer`, unless this process ends by itself in grace_s."""
    if self._stopping.wait(grace_s):
      return
    _exit_peer_stopped(f"process {peer} of {self._num_processes}", reason)


def _unconnected(num_processes: int | None, process_id: int | None) -> str:
  """Who to name when the processes did not all connect."""
  if num_processes == 2 and process_id in (0, 1):
    return f"process {1 - process_id} of 2"
  return (f"a process of {num_processes}" if num_processes
          else "a process")


def _exit_peer_stopped(who: str, reason: str) -> None:
  """Prints `error: <who> stopped: <reason>` and exits the process."""
  print(f"error: {who} stopped: {_first_line(reason)}", file=sys.stderr)
  _flush()
  os._exit(EXIT_PEER_STOPPED)


def _first_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else "(no message)"


def _flush() -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
