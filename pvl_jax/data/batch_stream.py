"""Batches computed ahead in worker processes, resumable with any worker count.

`BatchStream` runs a MapDataset of batches through grain's multiprocess
prefetch; its checkpointed state is the number of batches taken.
"""

from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

Batch = dict[str, np.ndarray]

# Inside each process one thread computes batches ahead: the parallelism is
# the worker processes (patches are numpy work under the GIL), and grain's
# default (16 threads, 500 elements ahead) would buffer gigabytes of 128^3
# batches per worker.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)


class BatchStream(grain.IterDataset):
  """The batches of a MapDataset, computed ahead in worker processes.

  Each worker computes whole batches (grain gives worker w the batches
  w, w + W, ...), so the main process receives them ready. The iterator's
  state is the number of batches taken: grain's own multiprocess state holds
  each worker's place in its share and restores only with the same number
  of workers, while the number of workers follows the CPUs of the machine
  a run resumes on.
  """

  def __init__(self, batches: grain.MapDataset, num_workers: int):
    super().__init__()
    self._batches = batches
    self._num_workers = num_workers

  def __iter__(self) -> grain.DatasetIterator:
    return _BatchStreamIterator(self._batches, self._num_workers)


class _BatchStreamIterator(grain.DatasetIterator):
  """Iterates `batches[position:]`; restarted at a restored position."""

  def __init__(self, batches: grain.MapDataset, num_workers: int):
    super().__init__()
    self._batches = batches
    self._num_workers = num_workers
    self._position = 0
    self._inner = None

  def __next__(self) -> Batch:
    self._assert_not_closed()
    if self._inner is None:
      ds = self._batches[self._position:].to_iter_dataset(_READ_OPTIONS)
      if self._num_workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self._num_workers))
      self._inner = iter(ds)
    batch = next(self._inner)
    self._position += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {"next_index": self._position}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._close_inner()
    self._position = batches_taken(state)

  def close(self) -> None:
    self._close_inner()
    super().close()

  def _close_inner(self) -> None:
    if self._inner is not None:
      self._inner.close()
      self._inner = None


def batches_taken(state: Mapping[str, Any]) -> int:
  """The position an iterator state names.

  Also reads the states of grain's own iterators, which checkpoints written
  before `BatchStream` hold: {"next_index": n} without worker processes;
  with them, each worker's place in its share (the workers are read round
  robin, so the places add up to the batches taken).

  Args:
    state: a `get_state()` of this pipeline, now or before `BatchStream`.
  """
  if "iterators_in_use_states" in state:
    return sum(int(s["next_index"]) for s in state["iterators_in_use_states"])
  return int(state["next_index"])
