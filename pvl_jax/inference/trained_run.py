"""A training run, loaded from its workdir to segment new volumes.

What inference needs from a run: the resolved config (`config.json`), the
parameters of the latest checkpoint, and what evaluation chose on the
validation split (`results.json`: the postprocessing minimum component size
and, for r > 0, the hand-function decision threshold), and the located
head's refitted read-out where evaluation wrote one. A run whose
evaluation has not finished has no results.json; it predicts without
postprocessing and without a decision threshold.
"""

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from preprocessing.io import console
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json
from pvl_jax.data import dataset
from pvl_jax.handfunction import matrix_readout
from pvl_jax.inference import sliding_window
from pvl_jax.inference import postprocess
from pvl_jax.models import unet

_NOT_A_RUN = "(is this the workdir of a training run?)"


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A run's model and the settings it was evaluated with.

  Attributes:
    config: the run's resolved config.
    step: the training step of the restored checkpoint.
    window_fn: the network and its parameters for the sliding window (with
      the run's `inference.mirror_axes`).
    min_component_voxels: lesion components smaller than this are removed
      (chosen on validation; 0 without results.json or postprocessing).
    min_depth_mm: lesion components that do not reach this deep into the
      brain are removed (chosen on validation; 0: none).
    cls_threshold: P(bad hand function) at or above which a scan is called
      bad (chosen on validation; 0.5 with the located head's refitted
      read-out); None for r = 0 or without results.json.
    readout: the located head's refitted read-out
      (`evaluation.located_readout`), which then decides P(bad) from the
      scan's segmentation; None: the network's own head decides.
  """
  config: ml_collections.ConfigDict
  step: int
  window_fn: sliding_window.WindowFn
  min_component_voxels: int
  min_depth_mm: float
  cls_threshold: float | None
  readout: matrix_readout.MatrixReadout | None = None

  @property
  def modalities(self) -> tuple[str, ...]:
    """The input channels, in order."""
    return tuple(self.config.data.modalities)

  @property
  def template_spacing(self) -> float:
    """Voxel size (mm) of the template grid the model was trained on."""
    return dataset.template_spacing(self.config)

  @property
  def classifies(self) -> bool:
    """Whether the run trained the hand-function head (r > 0)."""
    return self.config.r > 0

  def predict(self, image: np.ndarray, brain: np.ndarray,
              origin: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """Segments one template-space volume.

    Args:
      image: (X, Y, Z, channels), z-scored and brain-cropped as training
        volumes are.
      brain: the brain mask on the same grid.
      origin: the template voxel of the crop's voxel 0 (where the located
        head reads the map).

    Returns:
      (lesion probability per voxel: 0 outside the brain and in the
      components that postprocessing removes, so that the mask is
      probability > 0.5; P(bad hand function), meaningful only if
      `classifies`).
    """
    inference_config = self.config.inference
    probs, logit = sliding_window.predict_volume(
        self.window_fn, image, self.config.data.patch_size,
        inference_config.overlap, inference_config.batch_size,
        self.config.data.get("slice_axis", 2), origin)
    # Lesions lie in the brain; what the network marks in the zeroed
    # background, which training patches show little of, is discarded.
    probs = np.where(brain, probs, 0.0)
    mask = probs > 0.5
    kept = postprocess.remove_small_components(mask, self.min_component_voxels)
    if self.min_depth_mm > 0:
      # The distance map costs a second or so on a 1 mm grid: only when the
      # run chose a shell.
      kept = postprocess.remove_surface_components(
          kept, postprocess.brain_depth(brain,
                                        (self.template_spacing,) * brain.ndim),
          self.min_depth_mm)
    removed = mask & ~kept
    if self.readout is not None:
      prob = float(self.readout.probability(matrix_readout.template_masks(
          [kept], [origin], self.readout.shape))[0])
    else:
      prob = float(1 / (1 + np.exp(-logit)))
    return np.where(removed, 0.0, probs), prob


def load(workdir: str | Path) -> TrainedRun:
  """Loads a run's config, latest checkpoint and validation choices.

  Args:
    workdir: the run directory (`--workdir` of `pvl_jax.main`).

  Returns:
    The run, ready to predict.

  Raises:
    InputError: naming the missing or unreadable file.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise InputError(f"{workdir}: run directory does not exist")
  config = ml_collections.ConfigDict(
      read_json(workdir / "config.json", _NOT_A_RUN))
  step, params = _restore_params(workdir / "checkpoints")
  results = (read_json(workdir / "results.json", _NOT_A_RUN)
             if (workdir / "results.json").exists() else {})
  # 0 when evaluation did not postprocess (config.inference.postprocess).
  postprocessing = results.get("postprocessing", {})
  min_size = postprocessing.get("min_component_voxels", 0)
  # Runs evaluated before the surface rule removed no surface components.
  min_depth = postprocessing.get("min_depth_mm", 0.0)
  threshold = results.get("val", {}).get("cls_threshold")
  model = unet.unet_from_config(config.model)
  _check_params_fit(model, config, params, workdir / "checkpoints")
  # Runs older than the subject-level head have the per-patch one.
  apply_fn, head, volume_head = unet.window_functions(
      model, config.model.get("cls_head", "patch"))
  window_fn = sliding_window.make_window_fn(
      apply_fn, {"params": params},
      tuple(config.inference.get("mirror_axes", ())), head, volume_head)
  readout_path = workdir / matrix_readout.RUN_FILE
  return TrainedRun(config=config, step=step,
                    window_fn=window_fn, min_component_voxels=int(min_size),
                    min_depth_mm=float(min_depth),
                    cls_threshold=threshold if config.r > 0 else None,
                    readout=(matrix_readout.MatrixReadout.load(readout_path)
                             if readout_path.exists() else None))


def _check_params_fit(model: unet.UNet, config: ml_collections.ConfigDict,
                      params: dict, checkpoints: Path) -> None:
  """Raises InputError unless `params` are those of `config`'s model."""
  window = np.zeros((1, *config.data.patch_size, len(config.data.modalities)),
                    np.float32)
  expected = jax.eval_shape(model.init, unet.init_key(0), window)["params"]

  def shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  stored, wanted = shapes(params), shapes(expected)
  differ = sorted(k for k in stored.keys() | wanted.keys()
                  if stored.get(k) != wanted.get(k))
  if differ:
    raise InputError(
        f"{checkpoints}: the checkpoint's parameters do not fit the model "
        f"that config.json describes ({len(differ)} differ, e.g. "
        f"{differ[0]}: stored {stored.get(differ[0])}, expected "
        f"{wanted.get(differ[0])}); was it written by another version of "
        "pvl_jax or with another config?")


def _restore_params(checkpoints: Path) -> tuple[int, dict]:
  """(step, parameters) of the latest checkpoint, on the inference device.

  Only the parameters are read (not the optimizer state), onto one local
  device whatever mesh the run was trained on.
  """
  latest = (ocp.path.step.latest_step_metadata(
      checkpoints, ocp.path.step.standard_name_format())
            if checkpoints.is_dir() else None)
  if latest is None:
    raise InputError(f"{checkpoints}: no checkpoint (has the run trained?)")
  path = Path(latest.path) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    with console.library_errors_only():
      stored = checkpointer.metadata(path).item_metadata["params"]
    device = jax.sharding.SingleDeviceSharding(
        sliding_window.inference_device())
    target = {"params": jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=device), stored)}
    with console.library_errors_only():
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  except (OSError, ValueError, KeyError) as err:
    raise InputError(f"{path}: unreadable checkpoint ({err})") from err
  return latest.step, restored["params"]
