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

import importlib.util
import logging
from pathlib import Path
import shlex
import sys
from typing import Callable, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from launch import local
from launch import sweep_points
from launch import slurm
from preprocessing.io import console
from preprocessing.io.errors import InputError

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS


def _load_sweep_fn(config_file: str) -> Callable[..., None]:
  spec = importlib.util.spec_from_file_location("sweep_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise InputError(f"{config_file}: defines no sweep(add, arg) function")
  return module.sweep


def plan(config_flag: flags.Flag, root: Path, sweep_arg: str | None
         ) -> list[sweep_points.Point]:
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
  extra = {k: sweep_points.format_value(v)
           for k, v in config_flag.override_values.items()}
  try:
    overrides_list = sweep_points.list_overrides(_load_sweep_fn(config_file),
                                                 sweep_arg)
  except ValueError as e:  # parse_arg on a bad --sweep_arg
    raise InputError(f"--sweep_arg: {e}") from None
  if not overrides_list:
    raise InputError(f"{config_file}: sweep({sweep_arg!r}) added no points")
  for overrides in overrides_list:
    sweep_points.check_overrides(config, overrides, f"{config_file}: sweep "
                                 "point "
                    f"{sweep_points.point_name(overrides)}")
  points = sweep_points.make_points(overrides_list, config_arg, root, extra)
  sweep_points.write_sweep_json(root, points, config_arg, sweep_arg, extra,
                                Path.cwd())
  return points


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure()
  root = Path(FLAGS.workdir).absolute()
  try:
    if FLAGS.task is not None:
      sys.exit(local.run_task(root, FLAGS.task, FLAGS.distributed))
    if FLAGS["config"].value is None:
      raise InputError("--config: required (except with --task)")
    points = plan(FLAGS["config"], root, FLAGS.sweep_arg)
    log.info("%d points, written to %s", len(points),
             root / sweep_points.SWEEP_FILE)
    if FLAGS.backend == "slurm":
      script = slurm.write_script(root, len(points),
                                  slurm.resources_from_flags())
      if FLAGS.dry_run:
        print(f"wrote {script} (not submitted: --dry_run)")
      else:
        print(slurm.submit(script))
      return
    if FLAGS.dry_run:
      for point in points:
        print(shlex.join(point.argv))
      return
    failed = local.run_sweep(points, root, local.visible_gpus())
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if failed:
    print(f"error: {len(failed)} of {len(points)} points failed: "
          f"{', '.join(failed)} (see their {sweep_points.LOG_FILE})",
          file=sys.stderr)
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
