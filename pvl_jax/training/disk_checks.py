"""Checks, before any data or training work, that a run can write its output.

A read-only or full workdir otherwise surfaces as a raw OSError from deep
inside orbax or tensorboardX, possibly hours into a run (at the first
checkpoint). These checks run first, in `train.prepare_run`, and raise
`InputError` (printed by `pvl_jax.main` as `error: ...`, exit status 2).

The free-space estimate covers what a run keeps in its workdir: checkpoints
(parameters plus AdamW's two moments in float32, up to
`max_checkpoints_to_keep` of them plus the one being written) and a fixed
allowance for logs, plots and predictions. It is a lower bound: a disk that
passes can still fill up later, which orbax survives without damaging the
previous checkpoint (it writes to a temporary directory and renames it).
"""

import math
import os
from pathlib import Path
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections

from pvl_jax.data import dataset
from pvl_jax.models import unet
from preprocessing.io.errors import InputError

# Logs, TensorBoard events, PNGs and test predictions of one run.
MIN_FREE_BYTES = 64 * 2**20
# Float32 copies of the parameters in a checkpoint: params, AdamW mu and nu.
_COPIES_PER_CHECKPOINT = 3


def check_run_dirs(workdir: str | os.PathLike,
                   config: ml_collections.ConfigDict) -> None:
  """Checks the workdir and the data cache are writable, and disk space.

  Args:
    workdir: the run directory (created if missing).
    config: the validated training config.

  Raises:
    InputError: naming the directory and the problem.
  """
  workdir = Path(workdir)
  check_writable(workdir, "workdir")
  check_writable(dataset.cache_root(config), "data cache (config.data."
                 "cache_dir or $PVL_JAX_CACHE)")
  free = shutil.disk_usage(workdir).free
  needed = required_free_bytes(config, workdir)
  if free < needed:
    raise InputError(
        f"{workdir}: only {free / 2**20:.1f} MiB free on the workdir's "
        f"filesystem, the run needs at least {needed / 2**20:.1f} MiB "
        "(checkpoints and logs); free some space or choose another --workdir")


def check_writable(directory: Path, what: str) -> None:
  """Creates `directory` if needed and writes and removes a probe file.

  Permission bits alone do not tell (root ignores them, a read-only mount
  does not change them), so a real file is written.

  Args:
    directory: the directory to check.
    what: what it is, for the message.

  Raises:
    InputError: the directory cannot be created or written to.
  """
  try:
    directory.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".pvl_jax_write_probe-",
                                 dir=directory)
    os.close(fd)
    os.unlink(probe)
  except OSError as err:
    raise InputError(f"{directory}: {what} is not writable "
                     f"({err.strerror or err})") from None


def checkpoint_bytes(config: ml_collections.ConfigDict) -> int | None:
  """Approximate size of one checkpoint, None if the model is not known yet.

  With `config.plan` the network may be left unset until the dataset has
  been fingerprinted, and the located head's size depends on the records'
  template grid; then only the fixed allowance is checked.

  Args:
    config: the training config.
  """
  model_config, patch = config.model, config.data.patch_size
  if not (model_config.features and model_config.strides
          and model_config.kernel_sizes and patch):
    return None
  if model_config.cls_head == "located" and not model_config.cls_template_shape:
    return None
  model = unet.unet_from_config(model_config)
  sample = jax.ShapeDtypeStruct((1, *patch, len(config.data.modalities)),
                                jnp.float32)
  # Shapes only: nothing is compiled or allocated.
  shapes = jax.eval_shape(model.init, jax.random.key(0), sample)["params"]
  count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
  return _COPIES_PER_CHECKPOINT * 4 * count


def required_free_bytes(config: ml_collections.ConfigDict,
                        workdir: Path) -> int:
  """Free bytes the run still needs in `workdir`.

  Checkpoints already in the workdir (a resumed run) count towards the
  `max_checkpoints_to_keep + 1` that can coexist while one is written.

  Args:
    config: the training config.
    workdir: the run directory.
  """
  per_checkpoint = checkpoint_bytes(config) or 0
  checkpoints = workdir / "checkpoints"
  existing = (sum(1 for p in checkpoints.iterdir() if p.name.isdigit())
              if checkpoints.is_dir() else 0)
  to_write = max(config.max_checkpoints_to_keep + 1 - existing, 1)
  return MIN_FREE_BYTES + to_write * per_checkpoint
