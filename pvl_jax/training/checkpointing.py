"""Orbax checkpoints of the train state and the grain iterator position.

Saving both lets a rerun continue the data stream exactly where the saved
step left it (exact resume).
"""

from pathlib import Path

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from preprocessing.io.errors import InputError


def checkpoint_manager(workdir: Path, config: ml_collections.ConfigDict
                       ) -> ocp.CheckpointManager:
  """Orbax manager for the train state and the grain iterator state."""
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.max_checkpoints_to_keep, create=True))


def save(manager, step, state, data_iter) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data_iter=grain.checkpoint.CheckpointSave(data_iter)))


def restore(manager, step, state, data_iter):
  """The train state (and, in place, the data iterator) of checkpoint `step`.

  Raises:
    InputError: the checkpoint's arrays do not fit the configured model
      (orbax's ValueError, e.g. a workdir written by another version).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter)))
  except ValueError as err:
    # Orbax's first sentence names the shapes; the rest suggests padding or
    # truncating the stored arrays, which would be wrong here.
    reason = str(err).split(". ")[0]
    raise InputError(
        f"{manager.directory / str(step)}: cannot resume from this checkpoint "
        f"({reason}); it does not fit the configured model (another version "
        "of pvl_jax or another config?); use a new --workdir") from err
  return restored["state"]
