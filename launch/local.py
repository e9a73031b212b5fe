"""Running sweep points as local processes: sequentially or one per GPU.

A point whose results.json exists is skipped; any other point is (re)started,
and its training resumes from its own checkpoints. A crashed point is
reported with its exit status and the end of its log, and the sweep goes on.
"""

import json
import logging
import os
from pathlib import Path
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

from launch import sweep_points
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
  """GPU ids to spread points over: CUDA_VISIBLE_DEVICES, else JAX's count.

  JAX is asked in a child process: initialising its GPU backend here would
  hold memory on every GPU for the whole sweep.
  """
  env = os.environ.get("CUDA_VISIBLE_DEVICES")
  if env is not None:
    return [d.strip() for d in env.split(",") if d.strip() not in ("", "-1")]
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; print(len(jax.devices('gpu')))"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
  if probe.returncode != 0:  # no GPU backend
    return []
  return [str(i) for i in range(int(probe.stdout.split()[-1]))]


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _log_tail(path: Path, lines: int = sweep_points.LOG_TAIL_LINES) -> str:
  try:
    text = path.read_text(errors="replace")
  except FileNotFoundError:
    return "(no log)"
  return "\n".join(text.splitlines()[-lines:])


class _Run:
  """A started point: its process, log file and start time."""

  def __init__(self, point: sweep_points.Point, root: Path, cwd: Path | None,
               env: Mapping[str, str], prefix: Sequence[str] = (),
               suffix: Sequence[str] = ()):
    self.point = point
    workdir = root / point.name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / sweep_points.STATUS_FILE).unlink(missing_ok=True)
    self.log_path = workdir / sweep_points.LOG_FILE
    argv = [*prefix, *point.argv, *suffix]
    # Appended, so that the log of an attempt that crashed or was preempted
    # stays next to the one that resumed it.
    self.log = open(self.log_path, "a")
    self.log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                   f"{shlex.join(argv)}\n")
    self.log.flush()
    self.start = time.monotonic()
    self.process = subprocess.Popen(argv, stdout=self.log,
                                    stderr=subprocess.STDOUT, cwd=cwd,
                                    env=dict(env))

  def finish(self, root: Path) -> tuple[int, float]:
    """Records the exit status; logs the log's tail if the point failed."""
    returncode = self.process.wait()
    elapsed = time.monotonic() - self.start
    self.log.close()
    atomic_write_text(
        root / self.point.name / sweep_points.STATUS_FILE, json.dumps(
        {"returncode": returncode, "elapsed_s": round(elapsed, 1)}) + "\n")
    if returncode != 0:
      log.error("point %s FAILED with exit status %d; last lines of %s:"
                    "\n%s", self.point.name, returncode, self.log_path,
                    _log_tail(self.log_path))
    return returncode, elapsed


class _ForwardSigterm:
  """While active, SIGTERM is passed on to the running points.

  pvl_jax.main checkpoints and exits on SIGTERM (preemption, a Slurm time
  limit), so a stopped sweep resumes where it was.
  """

  def __init__(self, runs: Callable[[], Sequence[_Run]]):
    self._runs = runs
    self.received = False

  def _handle(self, signum, frame):
    del frame
    self.received = True
    for run in self._runs():
      run.process.send_signal(signum)

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)


def run_sweep(points: Sequence[sweep_points.Point], root: Path,
              gpus: Sequence[str], cwd: Path | None = None,
              poll_s: float = 0.5) -> list[str]:
  """Runs the unfinished points locally, one per GPU at a time.

  Args:
    points: the sweep's points (their argv is run as is).
    root: the sweep's root; point workdirs and logs are under it.
    gpus: GPU ids; each point gets one via CUDA_VISIBLE_DEVICES. Empty: run
      the points one after another with the environment unchanged.
    cwd: working directory of the commands (None: this one).
    poll_s: how often running points are checked.

  Returns:
    The names of the points that failed.
  """
  slots: list[str | None] = list(gpus) or [None]
  todo = []
  for point in points:
    if sweep_points.is_finished(root, point.name):
      log.info("skipping finished %s (%s exists)", point.name,
                   root / point.name / sweep_points.RESULTS_FILE)
    else:
      todo.append(point)
  log.info("%d of %d points to run, %d at a time%s", len(todo),
               len(points), len(slots),
               f" on GPUs {','.join(gpus)}" if gpus else "")
  running: dict[str | None, _Run] = {}
  failed, durations, done = [], [], 0
  sweep_start = time.monotonic()
  with _ForwardSigterm(lambda: list(running.values())) as sigterm:
    while running or (todo and not sigterm.received):
      for slot in slots:
        if slot not in running and todo and not sigterm.received:
          env = dict(os.environ)
          if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
          point = todo.pop(0)
          log.info("starting %s%s", point.name,
                       "" if slot is None else f" on GPU {slot}")
          running[slot] = _Run(point, root, cwd, env)
      time.sleep(poll_s)
      for slot, run in list(running.items()):
        if run.process.poll() is None:
          continue
        del running[slot]
        returncode, elapsed = run.finish(root)
        done += 1
        durations.append(elapsed)
        if returncode != 0:
          failed.append(run.point.name)
        left = len(todo) + len(running)
        eta = sum(durations) / len(durations) * left / len(slots)
        log.info("[%d/%d] %s %s in %s | elapsed %s, ETA %s", done,
                     done + left, run.point.name,
                     "done" if returncode == 0 else f"exit {returncode}",
                     _duration(elapsed),
                     _duration(time.monotonic() - sweep_start),
                     _duration(eta))
  if sigterm.received and todo:
    failed += [point.name for point in todo]
    log.warning("SIGTERM: %d points not started", len(todo))
  return failed


def run_task(root: Path, index: int, distributed: bool) -> int:
  """Runs point `index` of ROOT/sweep.json (a Slurm array task).

  Args:
    root: the sweep's root.
    index: the point's index in sweep.json ($SLURM_ARRAY_TASK_ID).
    distributed: start the point with `srun` on every task of the job, with
      `--distributed` (multi-node points).

  Returns:
    The exit status (0 when the point had already finished).
  """
  sweep = sweep_points.load_sweep(root)
  points = sweep["points"]
  if not 0 <= index < len(points):
    raise InputError(f"--task: {index} is not a point index of "
                     f"{root / sweep_points.SWEEP_FILE} (0..{len(points) - 1})")
  point = points[index]
  if sweep_points.is_finished(root, point.name):
    log.info("skipping finished %s (%s exists)", point.name,
                 root / point.name / sweep_points.RESULTS_FILE)
    return 0
  prefix, suffix = (), ()
  if distributed:  # one process per Slurm task, on every node of the job
    prefix, suffix = ("srun", "--kill-on-bad-exit=1"), ("--distributed",)
  log.info("starting %s", point.name)
  run = None
  with _ForwardSigterm(lambda: [run] if run else []):
    run = _Run(point, root, Path(sweep["cwd"]), os.environ, prefix, suffix)
    returncode, elapsed = run.finish(root)
  log.info("%s %s in %s (log: %s)", point.name,
               "done" if returncode == 0 else f"exit {returncode}",
               _duration(elapsed), run.log_path)
  return returncode
