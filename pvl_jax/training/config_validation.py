"""Checks a training config before any work starts; errors name the key."""

import math

import jax
import ml_collections

from preprocessing import bids
from preprocessing import skull_strip_rules
from preprocessing.io.errors import InputError
from pvl_jax.data import bags
from pvl_jax.planning import config_plan
from pvl_jax.training import losses
from pvl_jax.training import readout_penalty


# config.platform values: "" accepts whatever JAX finds.
PLATFORMS = ("", "cpu", "gpu", "tpu")
AUGMENT_RECIPES = ("nnunet", "basic", "none")
# data.augment.nnunet's (low, high) ranges: the smallest low allowed, and
# whether low may equal it; low_res_scale_range must also stay <= 1.
_NNUNET_RANGES = {"scaling_range": (0.0, False),
                  "noise_std_range": (0.0, True),
                  "blur_sigma_range": (0.0, True),
                  "brightness_range": (0.0, False),
                  "contrast_range": (0.0, False),
                  "low_res_scale_range": (0.0, False),
                  "gamma_range": (0.0, False)}


def _require(condition: bool, key: str, problem: str) -> None:
  if not condition:
    raise InputError(f"config.{key}: {problem}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises InputError naming the first out-of-range or inconsistent key.

  Only what can be checked without data is checked here. A patch larger
  than a volume is allowed: the sampler pads it, as nnU-Net's does.

  Args:
    config: the full training config.
  """
  _require(config.r >= 0, "r", f"must be >= 0 (got {config.r})")
  _require(config.num_steps >= 1, "num_steps",
           f"must be >= 1 (got {config.num_steps})")
  for key in ("log_every", "eval_every", "checkpoint_every"):
    _require(config[key] >= 1, key, f"must be >= 1 (got {config[key]})")
  _require(config.nonfinite in ("stop", "skip"), "nonfinite",
           f"must be 'stop' or 'skip' (got {config.nonfinite!r})")
  _require(config.optimizer.learning_rate > 0, "optimizer.learning_rate",
           f"must be > 0 (got {config.optimizer.learning_rate})")
  _validate_platform(config.platform)
  _require(config.device_memory_gb >= 0, "device_memory_gb",
           f"must be >= 0 (0: ask the runtime; got {config.device_memory_gb})")

  data = config.data
  _require(len(data.modalities) >= 1, "data.modalities", "is empty")
  _require(data.num_folds >= 3, "data.num_folds",
           f"needs >= 3 folds for train/validation/test (got {data.num_folds})")
  _require(0 <= data.fold < data.num_folds, "data.fold",
           f"must be in [0, {data.num_folds}) (got {data.fold})")
  _require(0.0 <= data.foreground_fraction <= 1.0, "data.foreground_fraction",
           f"must be in [0, 1] (got {data.foreground_fraction})")
  _require(data.foreground_sampling in ("voxel", "lesion"),
           "data.foreground_sampling",
           f"must be 'voxel' or 'lesion' (got {data.foreground_sampling!r})")
  _require(data.num_workers >= 0, "data.num_workers", "must be >= 0")
  _require(data.max_train_subjects >= 0, "data.max_train_subjects",
           f"must be >= 0 (0: all; got {data.max_train_subjects})")
  _validate_augment(data.augment)
  _validate_cohort_options(data)
  if not data.cohort_dir:
    _require(data.synthetic.num_subjects >= data.num_folds,
             "data.synthetic.num_subjects",
             f"{data.synthetic.num_subjects} subjects cannot fill "
             f"{data.num_folds} folds")

  dtype = config.model.compute_dtype
  _require(dtype in ("float32", "bfloat16", "float16"),
           "model.compute_dtype", f"unknown dtype '{dtype}'")
  _require(0.0 <= config.inference.overlap < 1.0, "inference.overlap",
           f"must be in [0, 1) (got {config.inference.overlap})")
  _require(config.inference.batch_size >= 1, "inference.batch_size",
           "must be >= 1")
  _validate_mirror_axes(config.inference.mirror_axes, "inference.mirror_axes")
  _validate_candidates(config.inference.postprocess_candidates_mm3,
                       "inference.postprocess_candidates_mm3", "volumes",
                       "mm^3")
  _validate_candidates(config.inference.postprocess_depth_candidates_mm,
                       "inference.postprocess_depth_candidates_mm", "depths",
                       "mm")
  _require(config.small_lesion_weight >= 0, "small_lesion_weight",
           f"must be >= 0 (got {config.small_lesion_weight})")
  _require(config.deep_supervision.targets in losses.TARGET_RULES,
           "deep_supervision.targets",
           f"must be one of {losses.TARGET_RULES} (got "
           f"{config.deep_supervision.targets!r})")

  if config.plan and config_plan.unset_keys(config):
    return  # checked again once the planner has filled them
  _validate_batch_and_topology(config)


def _validate_cls_head(config: ml_collections.ConfigDict) -> None:
  """The hand-function head and its bags (see `pvl_jax.data.bags`)."""
  head = config.model.cls_head
  _require(head in bags.CLS_HEADS, "model.cls_head",
           f"must be one of {bags.CLS_HEADS} (got {head!r})")
  _require(config.model.cls_bag_size >= 0, "model.cls_bag_size",
           f"must be >= 0 (0: the batch size; got {config.model.cls_bag_size})")
  if head == "subject":
    size = bags.bag_size(config)
    _require(size >= 2, "model.cls_bag_size",
             f"a subject-level head needs bags of at least 2 patches (got "
             f"{size}, batch_size {config.batch_size}); use "
             "model.cls_head='patch' to classify single patches")
    _require(config.batch_size % size == 0, "model.cls_bag_size",
             f"batch_size {config.batch_size} is not a multiple of the bag "
             f"size {size}")
  if head == "located":
    _require(len(config.data.patch_size) == 3, "model.cls_head",
             "'located' reads 3D template blocks; a 2D model has none")
    _require(config.model.cls_block >= 1, "model.cls_block",
             f"must be >= 1 voxel (got {config.model.cls_block})")
    l2 = config.model.cls_readout_l2
    _require(l2 > 0 or readout_penalty.is_chosen(l2), "model.cls_readout_l2",
             f"must be > 0, or {readout_penalty.CHOOSE:g} to choose it on "
             f"the training split (got {l2})")


def _validate_batch_and_topology(config: ml_collections.ConfigDict) -> None:
  """Checks the fields the planner may fill: batch, patch, topology."""
  data = config.data
  _require(config.batch_dice in (True, False), "batch_dice",
           "must be True or False (None is planned, which needs config.plan;"
           f" got {config.batch_dice})")
  _require(data.get("slice_axis", 2) in (0, 1, 2), "data.slice_axis",
           f"must be 0, 1 or 2 (got {data.get('slice_axis')})")
  _require(config.batch_size >= 1, "batch_size",
           f"must be >= 1 (got {config.batch_size})")
  devices = jax.device_count()
  _require(config.batch_size % devices == 0, "batch_size",
           f"{config.batch_size} is not divisible by the {devices} devices")
  _validate_cls_head(config)
  _validate_ds_weights(config)
  _require(len(data.patch_size) in (2, 3), "data.patch_size",
           f"needs 2 (2D) or 3 (3D) entries (got {tuple(data.patch_size)})")
  _require(all(p >= 1 for p in data.patch_size), "data.patch_size",
           f"entries must be >= 1 (got {tuple(data.patch_size)})")
  model = config.model
  stages = len(model.features)
  _require(stages >= 2, "model.features", "needs at least 2 stages")
  _require(len(model.strides) == stages, "model.strides",
           f"needs one entry per stage ({stages})")
  _require(len(model.kernel_sizes) == stages, "model.kernel_sizes",
           f"needs one entry per stage ({stages})")
  ndim = len(data.patch_size)
  for key in ("strides", "kernel_sizes"):
    _require(all(len(s) == ndim for s in model[key]), f"model.{key}",
             f"every entry needs {ndim} values to match data.patch_size")
  total_stride = [1] * ndim
  for stride in model.strides:
    total_stride = [t * s for t, s in zip(total_stride, stride)]
  _require(all(p % t == 0 for p, t in zip(data.patch_size, total_stride)),
           "data.patch_size",
           f"{tuple(data.patch_size)} must be divisible by the network's "
           f"total stride {tuple(total_stride)}")


def _validate_candidates(values, key: str, what: str, unit: str) -> None:
  """Postprocessing candidates: a non-empty tuple of numbers >= 0."""
  _require(isinstance(values, (tuple, list)) and len(values) >= 1, key,
           f"must be a non-empty tuple of {what} in {unit}, e.g. (0, 8, 16) "
           f"(got {values!r})")
  for value in values:
    _require(isinstance(value, (int, float)) and not isinstance(value, bool)
             and math.isfinite(value) and value >= 0, key,
             f"{what} must be numbers >= 0 {unit} (got {value!r})")


def _validate_ds_weights(config: ml_collections.ConfigDict) -> None:
  """deep_supervision.weights: () or one weight >= 0 per decoder output."""
  weights = tuple(config.deep_supervision.weights)
  if not weights:
    return
  outputs = (len(config.model.features) - 1
             if config.model.deep_supervision else 1)
  _require(len(weights) == outputs, "deep_supervision.weights",
           f"needs one weight per output of the network ({outputs}, finest "
           f"first; () for nnU-Net's rule), got {weights}")
  _require(all(w >= 0 for w in weights) and sum(weights) > 0,
           "deep_supervision.weights",
           f"weights must be >= 0 with a positive sum (got {weights})")


def backend_name() -> str:
  """JAX's default backend as a platform name: cpu, gpu or tpu."""
  backend = jax.default_backend()
  return "gpu" if backend in ("cuda", "rocm", "gpu") else backend


def _validate_platform(platform: str) -> None:
  """A requested platform must be the one JAX found (no silent CPU run)."""
  _require(platform in PLATFORMS, "platform",
           f"must be one of {PLATFORMS} (got {platform!r})")
  if platform:
    found = backend_name()
    _require(found == platform, "platform",
             f"'{platform}' requested but JAX found {found} devices only "
             f"({', '.join(sorted({d.device_kind for d in jax.devices()}))})"
             "; is JAX's GPU/TPU plugin installed and working (e.g. "
             "pip install 'jax[cuda12]'; python -c 'import jax; "
             "print(jax.devices())')?")


def _validate_cohort_options(data: ml_collections.ConfigDict) -> None:
  """Labels, scan choice, ignore label, brain masks, template."""
  ignore = data.ignore_label
  _require(ignore == -1 or ignore >= 2, "data.ignore_label",
           f"{ignore} is the {'lesion' if ignore == 1 else 'background'} "
           "label; use another mask value, or -1 for none"
           if ignore in (0, 1) else f"must be -1 (none) or >= 2 (got {ignore})")
  _require(bool(data.label_column), "data.label_column", "is empty")
  _require(data.brain_mask in skull_strip_rules.RULES, "data.brain_mask",
           f"must be one of {skull_strip_rules.RULES} (got "
           f"{data.brain_mask!r})")
  bids.Selection(data.session, data.run, data.bids_filter).check()
  preprocess = data.preprocess
  for key, other in (("template", "template_mask"),
                     ("template_mask", "template")):
    _require(bool(preprocess[key]) or not preprocess[other],
             f"data.preprocess.{key}",
             f"not set, but data.preprocess.{other} is; a template needs "
             "both its image and its brain mask")


def _validate_augment(augment: ml_collections.ConfigDict) -> None:
  """data.augment: a known recipe, probabilities and ranges in domain."""
  _require(augment.recipe in AUGMENT_RECIPES, "data.augment.recipe",
           f"must be one of {AUGMENT_RECIPES} (got {augment.recipe!r})")
  basic = augment.basic
  _require(0 <= basic.noise_prob <= 1, "data.augment.basic.noise_prob",
           f"is a probability, must be in [0, 1] (got {basic.noise_prob})")
  for key in ("intensity_scale", "intensity_shift", "noise_std"):
    _require(basic[key] >= 0, f"data.augment.basic.{key}",
             f"must be >= 0 (got {basic[key]})")
  nnunet = augment.nnunet
  for key, value in nnunet.items():
    if key.endswith("_prob"):
      _require(0 <= value <= 1, f"data.augment.nnunet.{key}",
               f"is a probability, must be in [0, 1] (got {value})")
  for key, (floor, inclusive) in _NNUNET_RANGES.items():
    bounds = nnunet[key]
    relation = "<=" if inclusive else "<"
    _require(len(bounds) == 2 and (floor <= bounds[0] if inclusive
                                   else floor < bounds[0])
             and bounds[0] <= bounds[1], f"data.augment.nnunet.{key}",
             f"must be (low, high) with {floor:g} {relation} low <= high "
             f"(got {tuple(bounds)})")
  _require(nnunet.low_res_scale_range[1] <= 1,
           "data.augment.nnunet.low_res_scale_range",
           f"scales must be <= 1 (got {tuple(nnunet.low_res_scale_range)})")
  rotation = nnunet.rotation_max_deg
  _require(rotation is None or 0 <= rotation <= 180,
           "data.augment.nnunet.rotation_max_deg",
           f"must be in [0, 180] degrees, or None for nnU-Net's rule (got "
           f"{rotation})")
  _validate_mirror_axes(nnunet.mirror_axes, "data.augment.nnunet.mirror_axes")


def _validate_mirror_axes(axes, key: str) -> None:
  """Mirror axes: distinct spatial axes 0-2 (axis 2 is ignored by 2D models)."""
  _require(isinstance(axes, (tuple, list)) and all(
      isinstance(a, int) and not isinstance(a, bool) for a in axes), key,
           f"must be a tuple of spatial axes, e.g. (0, 1, 2) (got {axes!r})")
  _require(all(0 <= a <= 2 for a in axes), key,
           f"axes must be 0, 1 or 2 (got {tuple(axes)})")
  _require(len(set(axes)) == len(axes), key,
           f"repeats an axis (got {tuple(axes)})")
