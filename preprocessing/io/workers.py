"""How many worker processes to start: the CPUs this process may use, capped.

A shared node (e.g. a Slurm allocation of 8 of 128 cores) restricts a job
through its CPU affinity; `os.cpu_count()` still reports the whole machine,
so sizing pools by it would start 128 processes on 8 cores. Every pool in
the project (cohort generation, preprocessing, grain's input workers) is
sized here instead.
"""

import os


def available_cpus() -> int:
  """Number of CPUs this process may run on (its scheduler affinity)."""
  if hasattr(os, "sched_getaffinity"):
    return max(len(os.sched_getaffinity(0)), 1)
  # macOS and Windows have no affinity masks: every CPU is usable there.
  return os.cpu_count() or 1


def worker_count(cap: int | None = None) -> int:
  """Worker processes for a pool: the usable CPUs, at most `cap`.

  Args:
    cap: the configured maximum (a flag or config value); None: no cap
      beyond the CPUs. A cap of 0 stays 0 (no worker processes).

  Returns:
    min(cap, available_cpus()).
  """
  cpus = available_cpus()
  return cpus if cap is None else min(cap, cpus)
