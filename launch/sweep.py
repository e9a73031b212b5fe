"""Runs a config's sweep: one `pvl_jax.main` training run per point.

Usage:
  python -m launch.sweep --config=configs/joint.py[:ARG] --workdir=ROOT \
      [--sweep_arg=folds=5,seeds=1] [--backend=local|slurm] [--dry_run] \
      [--config.KEY=VALUE ...]

The config module's `sweep(add, sweep_arg)` lists the points (dotted config
overrides such as {"r": 0.3, "data.fold": 1, "seed": 0}); every point trains in
ROOT/<name> (e.g. ROOT/r=0.3_fold=1_seed=0) with the point's overrides on top
of the base config and of the `--config.KEY=VALUE` flags given here.
ROOT/sweep.json records the points and their commands.

local backend: points run one after another, or one per visible GPU at a time.
A point whose results.json exists is skipped; any other point is (re)started,
and the training resumes from its own checkpoints. A crashed point is reported
and the sweep goes on; the exit status is non-zero if any point failed.

slurm backend: see launch/slurm.py. Each array task calls
`python -m launch.sweep --workdir=ROOT --task=K`, which runs point K of
ROOT/sweep.json the same way.
"""

import copy
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from launch import slurm
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError

FLAGS = flags.FLAGS

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.json"  # written last by pvl_jax.training.train: the run is done
LOG_FILE = "log.txt"
STATUS_FILE = "sweep_status.json"  # exit status of the point's last attempt
LOG_TAIL_LINES = 20


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of the sweep."""
  name: str
  overrides: dict[str, Any]  # dotted config key -> value
  argv: tuple[str, ...]  # the command that trains it


def list_overrides(sweep_fn: Callable[..., None], sweep_arg: str | None
                   ) -> list[dict[str, Any]]:
  """Calls a config module's `sweep(add, arg)` and returns what it added."""
  points = []
  sweep_fn(lambda **overrides: points.append(overrides), sweep_arg)
  return points


def format_value(value: Any) -> str:
  """Formats a config value as `--config.KEY=` text that parses back to it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))  # the tuple parser of config_flags reads literals
  return str(value)


def _short(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(_short(v) for v in value)
  # Keep names usable as one path component and one shell word.
  return re.sub(r"[^A-Za-z0-9.+-]", "-", format_value(value))


def point_name(overrides: Mapping[str, Any]) -> str:
  """A readable directory name, e.g. `r=0.3_fold=1_seed=0`.

  Keys are shortened to their last dotted component unless two keys of the
  point would then clash (`seed` and `data.synthetic.seed`).
  """
  leaves = [key.rsplit(".", 1)[-1] for key in overrides]
  names = [leaf if leaves.count(leaf) == 1 else key
           for key, leaf in zip(overrides, leaves)]
  return "_".join(f"{name}={_short(value)}"
                  for name, value in zip(names, overrides.values()))


def main_argv(config: str, workdir: str | os.PathLike,
              overrides: Mapping[str, Any], extra: Mapping[str, str],
              python: str = sys.executable) -> list[str]:
  """The `pvl_jax.main` command line of one point.

  Args:
    config: `--config` value, `path/to/config.py[:ARG]`.
    workdir: the point's workdir.
    overrides: the point's dotted overrides (values formatted here).
    extra: the user's `--config.*` overrides, already as text; they come
      after the point's (the caller forbids overlapping keys).
    python: the interpreter.

  Returns:
    The argv list.
  """
  argv = [python, "-m", "pvl_jax.main", f"--config={config}",
          f"--workdir={workdir}"]
  argv += [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
  argv += [f"--config.{k}={v}" for k, v in extra.items()]
  return argv


def check_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any], where: str) -> None:
  """Raises InputError unless every override names a field of a fitting type.

  Checking here, before anything starts, saves a sweep of identical crashes.
  """
  trial = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = trial
    try:
      for part in parents:
        node = node[part]
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(key)
      node[leaf] = value
    except (KeyError, AttributeError):
      raise InputError(f"{where}: config has no field '{key}'") from None
    except TypeError as e:
      raise InputError(f"{where}: {key}={value!r}: {e}") from None


def make_points(overrides_list: Sequence[Mapping[str, Any]], config: str,
                root: Path, extra: Mapping[str, str]) -> list[Point]:
  """Names the points and builds their commands; names must be unique."""
  points, seen = [], {}
  for overrides in overrides_list:
    clash = sorted(set(overrides) & set(extra))
    if clash:
      raise InputError(f"--config.{clash[0]}: set by the sweep for every "
                       "point; drop the flag or change the config's sweep()")
    name = point_name(overrides)
    if name in seen:
      raise InputError(f"sweep: points {seen[name]} and {dict(overrides)} "
                       f"both get the name '{name}'")
    seen[name] = dict(overrides)
    points.append(Point(name, dict(overrides),
                        tuple(main_argv(config, root / name, overrides,
                                        extra))))
  return points


def write_sweep_json(root: Path, points: Sequence[Point], config: str,
                     sweep_arg: str | None, extra: Mapping[str, str],
                     cwd: Path) -> Path:
  """Writes ROOT/sweep.json: what launch.report and Slurm tasks read."""
  sweep = {"config": config, "sweep_arg": sweep_arg, "overrides": dict(extra),
           "cwd": str(cwd),
           "points": [dataclasses.asdict(p) for p in points]}
  path = root / SWEEP_FILE
  atomic_write_text(path, json.dumps(sweep, indent=2) + "\n")
  return path


def load_sweep(root: Path) -> dict[str, Any]:
  """Reads ROOT/sweep.json, with its points as `Point`s."""
  path = root / SWEEP_FILE
  try:
    sweep = json.loads(path.read_text())
    sweep["points"] = [Point(p["name"], p["overrides"], tuple(p["argv"]))
                       for p in sweep["points"]]
  except FileNotFoundError:
    raise InputError(f"{path}: not found; run launch.sweep with --config "
                     "first") from None
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path}: not a sweep file ({e!r})") from None
  return sweep


def is_finished(root: Path, name: str) -> bool:
  return (root / name / RESULTS_FILE).exists()


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


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
  try:
    text = path.read_text(errors="replace")
  except FileNotFoundError:
    return "(no log)"
  return "\n".join(text.splitlines()[-lines:])


class _Run:
  """A started point: its process, log file and start time."""

  def __init__(self, point: Point, root: Path, cwd: Path | None,
               env: Mapping[str, str], prefix: Sequence[str] = (),
               suffix: Sequence[str] = ()):
    self.point = point
    workdir = root / point.name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / STATUS_FILE).unlink(missing_ok=True)
    self.log_path = workdir / LOG_FILE
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
    atomic_write_text(root / self.point.name / STATUS_FILE, json.dumps(
        {"returncode": returncode, "elapsed_s": round(elapsed, 1)}) + "\n")
    if returncode != 0:
      logging.error("point %s FAILED with exit status %d; last lines of %s:"
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


def run_sweep(points: Sequence[Point], root: Path, gpus: Sequence[str],
              cwd: Path | None = None, poll_s: float = 0.5) -> list[str]:
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
    if is_finished(root, point.name):
      logging.info("skipping finished %s (%s exists)", point.name,
                   root / point.name / RESULTS_FILE)
    else:
      todo.append(point)
  logging.info("%d of %d points to run, %d at a time%s", len(todo),
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
          logging.info("starting %s%s", point.name,
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
        logging.info("[%d/%d] %s %s in %s | elapsed %s, ETA %s", done,
                     done + left, run.point.name,
                     "done" if returncode == 0 else f"exit {returncode}",
                     _duration(elapsed),
                     _duration(time.monotonic() - sweep_start),
                     _duration(eta))
  if sigterm.received and todo:
    failed += [point.name for point in todo]
    logging.warning("SIGTERM: %d points not started", len(todo))
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
  sweep = load_sweep(root)
  points = sweep["points"]
  if not 0 <= index < len(points):
    raise InputError(f"--task: {index} is not a point index of "
                     f"{root / SWEEP_FILE} (0..{len(points) - 1})")
  point = points[index]
  if is_finished(root, point.name):
    logging.info("skipping finished %s (%s exists)", point.name,
                 root / point.name / RESULTS_FILE)
    return 0
  prefix, suffix = (), ()
  if distributed:  # one process per Slurm task, on every node of the job
    prefix, suffix = ("srun", "--kill-on-bad-exit=1"), ("--distributed",)
  logging.info("starting %s", point.name)
  run = None
  with _ForwardSigterm(lambda: [run] if run else []):
    run = _Run(point, root, Path(sweep["cwd"]), os.environ, prefix, suffix)
    returncode, elapsed = run.finish(root)
  logging.info("%s %s in %s (log: %s)", point.name,
               "done" if returncode == 0 else f"exit {returncode}",
               _duration(elapsed), run.log_path)
  return returncode


def _load_sweep_fn(config_file: str) -> Callable[..., None]:
  spec = importlib.util.spec_from_file_location("sweep_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise InputError(f"{config_file}: defines no sweep(add, arg) function")
  return module.sweep


def plan(config_flag: flags.Flag, root: Path, sweep_arg: str | None
         ) -> list[Point]:
  """Lists, checks and names the points; writes ROOT/sweep.json."""
  config = config_flag.value
  if not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a missing file's error until the value is used.
    raise InputError(f"--config: cannot load {config_flag.config_filename}")
  config_arg = config_flag.config_filename
  config_file = config_arg.split(":", 1)[0]
  # Absolute, so that commands work from any directory (Slurm tasks cd back
  # here anyway: config files import `configs.*` from the repository root).
  config_arg = str(Path(config_file).absolute()) + config_arg[len(config_file):]
  extra = {k: format_value(v) for k, v in config_flag.override_values.items()}
  try:
    overrides_list = list_overrides(_load_sweep_fn(config_file), sweep_arg)
  except ValueError as e:  # parse_arg on a bad --sweep_arg
    raise InputError(f"--sweep_arg: {e}") from None
  if not overrides_list:
    raise InputError(f"{config_file}: sweep({sweep_arg!r}) added no points")
  for overrides in overrides_list:
    check_overrides(config, overrides, f"{config_file}: sweep point "
                    f"{point_name(overrides)}")
  points = make_points(overrides_list, config_arg, root, extra)
  write_sweep_json(root, points, config_arg, sweep_arg, extra, Path.cwd())
  return points


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  root = Path(FLAGS.workdir).absolute()
  try:
    if FLAGS.task is not None:
      sys.exit(run_task(root, FLAGS.task, FLAGS.distributed))
    if FLAGS["config"].value is None:
      raise InputError("--config: required (except with --task)")
    points = plan(FLAGS["config"], root, FLAGS.sweep_arg)
    logging.info("%d points, written to %s", len(points), root / SWEEP_FILE)
    if FLAGS.backend == "slurm":
      script = slurm.write_script(root, len(points), slurm.resources_from_flags())
      if FLAGS.dry_run:
        print(f"wrote {script} (not submitted: --dry_run)")
      else:
        print(slurm.submit(script))
      return
    if FLAGS.dry_run:
      for point in points:
        print(shlex.join(point.argv))
      return
    failed = run_sweep(points, root, visible_gpus())
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if failed:
    print(f"error: {len(failed)} of {len(points)} points failed: "
          f"{', '.join(failed)} (see their {LOG_FILE})", file=sys.stderr)
    sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError) as e:  # config_flags on an unknown field
    detail = e
    while isinstance(detail, BaseException) and detail.args:
      detail = detail.args[0]  # KeyError wrapped in AttributeError
    detail = str(detail).replace("\n", "; ")
    print(f"error: --config: no such field {detail}", file=sys.stderr)
    sys.exit(2)


def _define_flags() -> None:
  """Defined here, not at import, so tests can import several CLIs."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file with get_config(arg) and sweep(add, arg), "
      "path[:ARG]; --config.KEY=VALUE overrides apply to every point.")
  flags.DEFINE_string("workdir", None, "Sweep root: sweep.json and one "
                      "directory per point.", required=True)
  flags.DEFINE_string("sweep_arg", None, "Argument of the config's sweep(), "
                      "e.g. folds=5,seeds=2.")
  flags.DEFINE_enum("backend", "local", ["local", "slurm"], "Where to run.")
  flags.DEFINE_bool("dry_run", False, "local: print the commands; slurm: "
                    "write sweep.sbatch without submitting it.")
  flags.DEFINE_integer("task", None, "Run only point TASK of WORKDIR/"
                       "sweep.json (what each Slurm array task does).")
  flags.DEFINE_bool("distributed", False, "With --task: start the point with "
                    "srun on every task of the job and pass --distributed.")
  slurm.define_flags()


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=_parse_flags)
