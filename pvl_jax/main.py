"""Entry point: `python -m pvl_jax.main --config=configs/joint.py --workdir=DIR`.

Kept thin (as flax's examples): flags, console, multi-host setup, then
`pvl_jax.training.train.train_and_evaluate`. Library logs are quiet unless
`--verbosity` is given (e.g. `--verbosity=0`). Bad input (a config value, a
file) ends the run with `error: <message>` on stderr and exit status 2,
before training starts. In a multi-process run (`--distributed`) a process
whose peer stopped ends with `error: process K of N stopped: ...` and exit
status 4 (`pvl_jax.training.peers`).
"""

import logging
import sys
from typing import NoReturn

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from preprocessing.io import console
from preprocessing.io.errors import InputError
from pvl_jax.training import peers
from pvl_jax.training import preemption
from pvl_jax.training import train

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and "
                    "results.json.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                  "(multi-host: Slurm or a TPU VM fills in the addresses).")
flags.DEFINE_string("coordinator_address", None, "With --distributed, where "
                    "no cluster tells JAX: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "With --distributed, where no "
                     "cluster tells JAX: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed, where no "
                     "cluster tells JAX: this process's index.")
flags.DEFINE_float("init_timeout_s", 60, "With --distributed: every process "
                   "must connect within this many seconds of its start, or "
                   "all stop (exit 4).")
flags.DEFINE_float("peer_timeout_s", 30, "With --distributed: a process that "
                   "gives no sign of life for this many seconds is taken as "
                   "stopped, and the others stop (exit 4).")
flags.DEFINE_bool("preflight", False, "Prepare the data, plan, compile the "
                  "train step and check its memory, print the report and exit "
                  "without training.")
config_flags.DEFINE_config_file("config", "configs/joint.py",
                                "Training config file (see configs/).",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  watch = None
  if FLAGS.distributed:
    for name in ("init_timeout_s", "peer_timeout_s"):
      if not FLAGS[name].value > 0:
        _exit_with_error(f"--{name}: must be positive, got "
                         f"{FLAGS[name].value:g}")
    watch = peers.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id, FLAGS.init_timeout_s,
                             FLAGS.peer_timeout_s)
  console.configure()
  log.info("JAX: %d %s device(s) (%s), process %d of %d (0-based)",
           jax.device_count(), jax.default_backend(),
           jax.devices()[0].device_kind, jax.process_index(),
           jax.process_count())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             preflight_only=FLAGS.preflight)
  except InputError as e:
    _stop(watch, 2, str(e))
  except train.NonFiniteError as e:
    _stop(watch, 3, str(e))
  except preemption.Preempted as e:
    log.warning("%s", e)
    # All processes stop at the step they agreed on: a normal end.
    if watch:
      watch.finish()
    sys.exit(143)  # the conventional status of a SIGTERM'd process
  except Exception as e:  # pylint: disable=broad-exception-caught
    if watch is None:
      raise
    watch.fail(e)
  if watch:
    watch.finish()


def _stop(watch: peers.PeerWatch | None, status: int,
          message: str) -> NoReturn:
  """Prints `error: <message>` and exits; tells the other processes why."""
  print(f"error: {message}", file=sys.stderr)
  if watch:
    watch.abandon(status, message)
  sys.exit(status)


def _exit_with_error(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with bad flags reported as `error: ...`, exit 2."""
  try:
    remaining = FLAGS(argv)
  except OSError:  # --config.KEY overrides of a config file that is missing
    remaining = None
  except flags.Error as e:
    # config_flags puts the config file's traceback in the message; its last
    # line is the reason.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _exit_with_error(lines[0] if len(lines) == 1 else
                     f"{lines[0]} {lines[-1]}")
  except (KeyError, AttributeError) as e:  # config_flags on an unknown field
    field = str(e).strip("'\"")
    overrides = [arg.split("=", 1)[0] for arg in argv
                 if arg.startswith("--config.")
                 and arg.split("=", 1)[0].endswith(f".{field}")]
    _exit_with_error(f"{overrides[0] if overrides else '--config'}: no such "
                     f"config field '{field}'")
  # config_flags defers a missing config file's error until first use.
  if remaining is None or not isinstance(FLAGS["config"].value,
                                         ml_collections.ConfigDict):
    given = [arg.split("=", 1)[1] for arg in argv
             if arg.startswith("--config=")]
    _exit_with_error(f"--config: cannot load {given[-1] if given else ''} "
                     "(file not found)")
  return remaining


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
