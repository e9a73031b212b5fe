"""The points of a sweep: their config overrides, names, commands and files.

A point is one `pvl_jax.main` training run: dotted config overrides such as
{"r": 0.3, "data.fold": 1, "seed": 0} on top of the base config, trained in
ROOT/<name> (e.g. ROOT/r=0.3_fold=1_seed=0). ROOT/sweep.json records the
points and their exact commands.
"""

import copy
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError

SWEEP_FILE = "sweep.json"
# Written last by pvl_jax.training.train: its presence means the run is done.
RESULTS_FILE = "results.json"
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
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    # A dict field (e.g. data.synthetic.overrides) parses a Python literal;
    # str() of a ConfigDict would give YAML, which it cannot read.
    return repr(value)
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
