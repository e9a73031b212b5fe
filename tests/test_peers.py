"""The peer watch of a multi-process run, on a fake key-value store."""

import threading

import pytest

from pvl_jax.training import peers


class FakeClient:
  """The key-value calls of JAX's distributed runtime client, in memory."""

  def __init__(self):
    self.store: dict[str, str] = {}
    self.lock = threading.Lock()
    self.broken = False

  def key_value_set(self, key, value, allow_overwrite=False):
    del allow_overwrite
    if self.broken:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    with self.lock:
      self.store[key] = value

  def key_value_dir_get(self, prefix):
    if self.broken:
      raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
    with self.lock:
      return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


@pytest.fixture
def exits(monkeypatch):
  """Records the statuses of os._exit calls (which then return)."""
  calls, done = [], threading.Event()

  def fake_exit(status):
    calls.append(status)
    done.set()

  monkeypatch.setattr(peers.os, "_exit", fake_exit)
  monkeypatch.setattr(peers, "BEAT_S", 0.05)
  monkeypatch.setattr(peers, "NOTICE_GRACE_S", 0.2)
  return calls, done


def _beat_for(client, process_id, stop):
  """A live peer: bumps its counter until `stop` is set."""
  count = 0
  while not stop.wait(0.05):
    count += 1
    client.key_value_set(f"pvl_jax/peers/beat/{process_id}", str(count))


def test_silent_peer_is_named(exits, capfd):
  calls, done = exits
  client = FakeClient()
  watch = peers.PeerWatch(client, 0, 3, peer_timeout_s=0.5)
  stop = threading.Event()
  threading.Thread(target=_beat_for, args=(client, 1, stop),
                   daemon=True).start()
  watch.start()
  assert done.wait(10)
  stop.set()
  assert calls == [peers.EXIT_PEER_STOPPED]
  err = capfd.readouterr().err
  assert "error: process 2 of 3 stopped: no sign of life for 0.5 s" in err
  assert "process 1" not in err


def test_published_failure_is_named(exits, capfd):
  calls, done = exits
  client = FakeClient()
  watch = peers.PeerWatch(client, 1, 2, peer_timeout_s=30)
  client.key_value_set("pvl_jax/peers/stop/0",
                       "FileExistsError: [Errno 17] File exists: 'run/x'")
  watch.start()
  assert done.wait(10)
  assert calls == [peers.EXIT_PEER_STOPPED]
  assert ("error: process 0 of 2 stopped: FileExistsError: [Errno 17] File "
          "exists: 'run/x'") in capfd.readouterr().err


def test_own_failure_within_the_grace_wins(exits):
  """Both fail at once (e.g. the same bad input): each keeps its status."""
  calls, _ = exits
  client = FakeClient()
  watch = peers.PeerWatch(client, 1, 2, peer_timeout_s=30)
  client.key_value_set("pvl_jax/peers/stop/0", "bad input")
  watch.start()
  watch.abandon(2, "bad input")
  watch._thread.join(5)
  assert calls == [2]
  assert client.store["pvl_jax/peers/stop/1"] == "bad input"


def test_finished_peer_is_not_a_failure(exits):
  calls, _ = exits
  client = FakeClient()
  watch = peers.PeerWatch(client, 1, 2, peer_timeout_s=0.3)
  client.key_value_set("pvl_jax/peers/stop/0", peers.DONE)
  watch.start()
  threading.Event().wait(1.0)  # well past the peer timeout
  watch.finish()
  watch._thread.join(5)
  assert calls == []
  assert client.store["pvl_jax/peers/stop/1"] == peers.DONE


def test_lost_coordinator_is_process_0(exits, capfd):
  calls, done = exits
  client = FakeClient()
  watch = peers.PeerWatch(client, 1, 2, peer_timeout_s=30)
  watch.start()
  client.broken = True
  assert done.wait(10)
  assert calls == [peers.EXIT_PEER_STOPPED]
  assert ("error: process 0 of 2 stopped: its coordination service stopped "
          "answering (UNAVAILABLE") in capfd.readouterr().err
