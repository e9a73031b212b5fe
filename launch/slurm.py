"""Slurm backend of launch.sweep: one job array, one array task per point.

`write_script` writes ROOT/sweep.sbatch; array task K runs
`python -m launch.sweep --workdir=ROOT --task=K`, which reads point K from
ROOT/sweep.json, exits at once if its results.json exists, and otherwise runs
its `pvl_jax.main` command (resuming from the point's checkpoints). Points on
several nodes (`--slurm_nodes>1`) start one process per node with `srun` and
pass `--distributed` to pvl_jax.main, whose jax.distributed.initialize() reads
the Slurm environment.
"""

import dataclasses
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from absl import flags

from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError

FLAGS = flags.FLAGS

SCRIPT_FILE = "sweep.sbatch"
LOG_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class Resources:
  """What each array task (one point) asks for; empty strings are omitted."""
  partition: str = ""
  nodes: int = 1
  gpus_per_task: int = 1
  cpus_per_task: int = 8
  mem: str = ""
  time: str = ""

  def validate(self) -> None:
    for name, value, low in (("nodes", self.nodes, 1),
                             ("gpus_per_task", self.gpus_per_task, 0),
                             ("cpus_per_task", self.cpus_per_task, 1)):
      if value < low:
        raise InputError(f"--slurm_{name}: must be >= {low} (got {value})")


def define_flags() -> None:
  """Defines the --slurm_* flags (called by launch.sweep's CLI)."""
  flags.DEFINE_string("slurm_partition", "", "Partition; empty: the "
                      "cluster's default.")
  flags.DEFINE_integer("slurm_nodes", 1, "Nodes per point; > 1 runs the "
                       "point with srun and --distributed.")
  flags.DEFINE_integer("slurm_gpus_per_task", 1, "GPUs per node (one task "
                       "per node); 0: no --gpus-per-task line.")
  flags.DEFINE_integer("slurm_cpus_per_task", 8, "CPUs per node (data "
                       "loading workers, evaluation).")
  flags.DEFINE_string("slurm_mem", "", "Memory per node, e.g. 64G; empty: "
                      "the cluster's default.")
  flags.DEFINE_string("slurm_time", "", "Time limit per point, e.g. "
                      "24:00:00; empty: the partition's default. A point "
                      "stopped by the limit checkpoints and resumes when the "
                      "sweep is submitted again.")


def resources_from_flags() -> Resources:
  resources = Resources(
      partition=FLAGS.slurm_partition, nodes=FLAGS.slurm_nodes,
      gpus_per_task=FLAGS.slurm_gpus_per_task,
      cpus_per_task=FLAGS.slurm_cpus_per_task, mem=FLAGS.slurm_mem,
      time=FLAGS.slurm_time)
  resources.validate()
  return resources


def sbatch_script(root: Path, num_points: int, resources: Resources,
                  python: str, cwd: Path) -> str:
  """The text of the job array script.

  Args:
    root: the sweep's root (absolute), holding sweep.json.
    num_points: number of points; array indices are 0..num_points-1.
    resources: per-task resources.
    python: the interpreter the tasks run (absolute: tasks start in a fresh
      shell).
    cwd: the repository root the tasks run from (config files import
      `configs.*`).

  Returns:
    The script.
  """
  if num_points < 1:
    raise InputError(f"{root}: the sweep has no points")
  r = resources
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name=pvl_sweep_{root.name}",
           f"#SBATCH --array=0-{num_points - 1}",
           f"#SBATCH --output={root / LOG_DIR}/%A_%a.out",
           f"#SBATCH --nodes={r.nodes}",
           "#SBATCH --ntasks-per-node=1",
           f"#SBATCH --cpus-per-task={r.cpus_per_task}"]
  if r.partition:
    lines.append(f"#SBATCH --partition={r.partition}")
  if r.gpus_per_task:
    lines.append(f"#SBATCH --gpus-per-task={r.gpus_per_task}")
  if r.mem:
    lines.append(f"#SBATCH --mem={r.mem}")
  if r.time:
    lines.append(f"#SBATCH --time={r.time}")
  command = [python, "-m", "launch.sweep", f"--workdir={root}"]
  if r.nodes > 1:
    command.append("--distributed")
  lines += [
      "",
      "# Task K runs point K of sweep.json; a finished point (results.json",
      "# exists) exits at once, any other resumes from its checkpoints.",
      "set -eu",
      f"cd {shlex.quote(str(cwd))}",
      f'exec {shlex.join(command)} --task="$SLURM_ARRAY_TASK_ID"',
      ""]
  return "\n".join(lines)


def write_script(root: Path, num_points: int, resources: Resources,
                 python: str = sys.executable, cwd: Path | None = None
                 ) -> Path:
  """Writes ROOT/sweep.sbatch (and ROOT/logs, which sbatch does not create)."""
  (root / LOG_DIR).mkdir(parents=True, exist_ok=True)
  path = root / SCRIPT_FILE
  atomic_write_text(path, sbatch_script(root, num_points, resources, python,
                                        cwd or Path.cwd()))
  return path


def submit(script: Path) -> str:
  """Submits the job array with `sbatch --parsable`; returns the job id."""
  if shutil.which("sbatch") is None:
    raise InputError("sbatch: not found on PATH (is this a Slurm login "
                     "node?); --dry_run writes the script without it")
  result = subprocess.run(["sbatch", "--parsable", str(script)],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise InputError(f"sbatch {script}: exit status {result.returncode}: "
                     f"{result.stderr.strip()}")
  return result.stdout.strip().split(";")[0]  # "jobid[;cluster]"
