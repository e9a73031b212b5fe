"""Entry point: `python -m pvl_jax.main --config=configs/joint.py --workdir=DIR`.

Kept thin (as flax's examples): flags, logging, multi-host setup, then
`train.train_and_evaluate`. Bad input (a config value, a file) ends the run
with `error: <message>` on stderr and exit status 2, before training starts.
"""

import logging as py_logging
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pvl_jax import preemption
from pvl_jax import train
from preprocessing.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and "
                    "results.json.", required=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                  "(multi-host: Slurm or a TPU VM fills in the addresses).")
config_flags.DEFINE_config_file("config", "configs/joint.py",
                                "Training config file (see configs/).",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.distributed:
    jax.distributed.initialize()
  # Libraries log through the standard logging module; show their INFO lines.
  py_logging.getLogger().setLevel(py_logging.INFO)
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(),
               jax.process_index(), jax.process_count())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(143)  # the conventional status of a SIGTERM'd process


if __name__ == "__main__":
  app.run(main)
