"""Applying a plan to a training config: fill what the user left unset.

With `config.plan = True`, `apply_plan` fills only the planned fields the
user left at their *unset* value: `()` for `data.patch_size`,
`model.features`, `model.strides`, `model.kernel_sizes`, 0 for `batch_size`
and None for `batch_dice`. Anything set in the config file or on the command
line wins; a patch set by the user is kept and the topology and batch are
planned for it. `data.target_spacing` and, for a 2D plan, `data.slice_axis`
(the axis cut into slices) are always recorded from the plan.

`config.planner`: `dims` (2 or 3), `vram_budget_gb` (nnU-Net's units) and
`suppress_transpose` (nnU-Net's option, default False: a 2D plan slices the
coarsest axis; True: always axis 2).
"""

from collections.abc import Mapping, Sequence
import copy
import logging
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from preprocessing.io.errors import InputError
from pvl_jax.planning import fingerprint as fingerprint_lib
from pvl_jax.planning import planner

log = logging.getLogger(__name__)

# Bytes per stored activation value of each `model.compute_dtype`.
BYTES_PER_VALUE = {"float32": 4, "bfloat16": 2, "float16": 2}

# The config fields a plan fills, and the value that marks them unset.
UNSET = {"data.patch_size": (), "model.features": (), "model.strides": (),
         "model.kernel_sizes": (), "batch_size": 0, "batch_dice": None}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def unset_keys(config: ml_collections.ConfigDict) -> list[str]:
  """The planned keys the config leaves to the planner (at their UNSET)."""
  unset = []
  for key, marker in UNSET.items():
    value = _get(config, key)
    if (tuple(value) if isinstance(value, (tuple, list)) else value) == marker:
      unset.append(key)
  return unset


def apply_plan(config: ml_collections.ConfigDict, p: planner.Plan,
               num_devices: int = 1) -> ml_collections.ConfigDict:
  """A copy of `config` with its unset planned fields filled from `p`.

  Fields the user set are kept. The planned batch size is rounded down to a
  multiple of `num_devices` (data parallelism shards the global batch), but
  not below `num_devices`. `data.target_spacing` is recorded as information;
  a 2D plan's `data.slice_axis` is recorded too, as the planned patch lists
  the other two axes.

  Args:
    config: the training config (may be locked).
    p: the plan.
    num_devices: devices the global batch is sharded over.

  Returns:
    The filled copy.
  """
  config = copy.deepcopy(config)
  overrides = p.to_config_overrides()
  overrides["batch_size"] = max(p.batch_size // num_devices, 1) * num_devices
  for key in unset_keys(config):
    _set(config, key, overrides[key])
  with config.unlocked():
    config.data.target_spacing = p.target_spacing
    if p.slice_axis is not None:
      config.data.slice_axis = p.slice_axis
  return config


def plan_from_config(fp: fingerprint_lib.Fingerprint,
                     config: ml_collections.ConfigDict) -> planner.Plan:
  """Plans with the config's planner settings and the user's fixed patch.

  `config.planner.dims` chooses 2D or 3D unless the user fixed the patch,
  whose length decides. `config.planner.suppress_transpose` defaults to
  False (nnU-Net's default) where the config does not set it.

  Raises:
    InputError: naming the config key that makes planning impossible.
  """
  patch = tuple(config.data.patch_size) or None
  dims = len(patch) if patch else config.planner.dims
  try:
    return planner.plan(
        fp, dims=dims, vram_budget_gb=config.planner.vram_budget_gb,
        bytes_per_value=BYTES_PER_VALUE[config.model.compute_dtype],
        num_classes=config.model.num_classes, patch_size=patch,
        suppress_transpose=config.planner.get("suppress_transpose", False))
  except ValueError as e:
    key = "data.patch_size" if patch else "planner"
    raise InputError(f"config.{key}: {e}") from e


def plan_and_apply(config: ml_collections.ConfigDict,
                   train_source: Sequence[Mapping[str, Any]],
                   data_dir: str | Path, workdir: str | Path,
                   num_devices: int = 1) -> ml_collections.ConfigDict:
  """Fingerprints the training split, plans, saves and applies the plan.

  The fingerprint is cached with the dataset (`<data_dir>/fingerprint-fold
  K.json`: the records never change under a data dir). The plan goes to
  `<workdir>/plan.json` and, named by what it depends on, next to the
  fingerprint.

  Args:
    config: the training config with `config.plan` true.
    train_source: records of the training split.
    data_dir: the TFDS dataset directory (`builder.data_dir`).
    workdir: the run's directory.
    num_devices: devices the global batch is sharded over.

  Returns:
    The config with its unset planned fields filled.
  """
  data_dir = Path(data_dir)
  fp_path = data_dir / f"fingerprint-fold{config.data.fold}.json"
  if fp_path.exists():
    fp = fingerprint_lib.load_fingerprint(fp_path)
  else:
    fp = fingerprint_lib.fingerprint(train_source)
    fingerprint_lib.save_fingerprint(fp, fp_path)
  p = plan_from_config(fp, config)
  planner.save_plan(p, Path(workdir) / "plan.json")
  planner.save_plan(p, data_dir / _plan_name(config, p))
  if not np.allclose(fp.spacings, p.target_spacing, rtol=0.01):
    log.warning("some volumes are not at the planned spacing %s mm; this "
                    "pipeline does not resample them", p.target_spacing)
  log.info("plan: %s (fills %s)", p.describe(),
           ", ".join(unset_keys(config)) or "nothing")
  return apply_plan(config, p, num_devices)


def _plan_name(config: ml_collections.ConfigDict, p: planner.Plan) -> str:
  """A file name that differs whenever the plan's inputs differ."""
  name = (f"plan-fold{config.data.fold}-{p.dims}d-{p.vram_budget_gb:g}GB-"
          f"{config.model.compute_dtype}")
  if config.planner.get("suppress_transpose", False):
    name += "-notranspose"
  if tuple(config.data.patch_size):
    name += "-patch" + "x".join(str(s) for s in p.patch_size)
  return name + ".json"
