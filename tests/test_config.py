"""Config argument parsing, the sweep definition and config validation."""

import pytest

from configs import common
from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.training import config_validation


def test_parse_arg_types_and_flags():
  arg = common.parse_arg("demo,r=0.3,fold=2", demo=False, r=1.0, fold=0)
  assert arg.demo is True and arg.r == 0.3 and arg.fold == 2


def test_parse_arg_rejects_unknown_key():
  with pytest.raises(ValueError, match="'depth' is unknown"):
    common.parse_arg("depth=3", demo=False)


def test_parse_arg_rejects_bad_value():
  with pytest.raises(ValueError, match="r=abc"):
    common.parse_arg("r=abc", r=1.0)


def test_demo_and_full_configs_validate():
  config_validation.validate_config(joint.get_config())
  config_validation.validate_config(joint.get_config("demo"))


def test_sweep_crosses_r_folds_and_seeds():
  points = []
  joint.sweep(lambda **kw: points.append(kw), "folds=2,seeds=2")
  assert len(points) == len(joint.SWEEP_R) * 4
  assert {p["r"] for p in points} == set(joint.SWEEP_R)
  assert {p["data.fold"] for p in points} == {0, 1}
  assert 0.0 in joint.SWEEP_R  # r = 0: segmentation only


@pytest.mark.parametrize("key,value,message", [
    ("r", -0.1, "config.r: must be >= 0"),
    ("small_lesion_weight", -1.0, "config.small_lesion_weight: must be >= 0"),
    ("batch_size", 0, "config.batch_size: must be >= 1"),
    ("num_steps", 0, "config.num_steps"),
    ("data.fold", 7, "config.data.fold: must be in"),
    ("data.foreground_fraction", 1.5, "config.data.foreground_fraction"),
    ("data.patch_size", (30, 32, 32), "divisible by the network's total stride"),
    ("data.patch_size", (32, 32, 32, 32), "needs 2 (2D) or 3 (3D) entries"),
    ("model.compute_dtype", "float8", "unknown dtype"),
    ("inference.overlap", 1.0, "config.inference.overlap"),
    ("inference.mirror_axes", (0, 3), "config.inference.mirror_axes: axes must"),
    ("inference.mirror_axes", (1, 1), "config.inference.mirror_axes: repeats"),
    ("inference.mirror_axes", ("x",), "config.inference.mirror_axes: must be a"),
    ("data.synthetic.num_subjects", 3, "cannot fill 5 folds"),
    ("inference.postprocess_candidates_mm3", (0.0, -8.0),
     "config.inference.postprocess_candidates_mm3: volumes must be numbers >= 0"),
    ("inference.postprocess_candidates_mm3", (0.0, "big"),
     "config.inference.postprocess_candidates_mm3: volumes must be numbers"),
    ("inference.postprocess_candidates_mm3", (),
     "config.inference.postprocess_candidates_mm3: must be a non-empty"),
    ("inference.postprocess_depth_candidates_mm", (0.0, -2.0),
     "config.inference.postprocess_depth_candidates_mm: depths must be numbers >= 0"),
    ("inference.postprocess_depth_candidates_mm", (float("nan"),),
     "config.inference.postprocess_depth_candidates_mm: depths must be numbers"),
    ("deep_supervision.targets", "mean",
     "config.deep_supervision.targets: must be one of"),
    ("deep_supervision.weights", (1.0, 0.5, 0.25),
     "config.deep_supervision.weights: needs one weight per output of the network (2"),
    ("deep_supervision.weights", (0.0, 0.0),
     "config.deep_supervision.weights: weights must be >= 0 with a positive sum"),
])
def test_out_of_range_values_name_the_key(key, value, message):
  config = joint.get_config("demo")
  *parents, leaf = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_validation.validate_config(config)


@pytest.mark.parametrize("arg", [None, "demo"])
def test_unet3d_is_joint_with_r_zero(arg):
  from configs import unet3d  # pylint: disable=g-import-not-at-top
  config = unet3d.get_config(arg)
  assert config.r == 0.0
  config_validation.validate_config(config)


def test_unet3d_demo_matches_unet2d_demo_feature_maps():
  """The 2D-vs-3D comparison pair: same features, stages and steps."""
  from configs import unet2d  # pylint: disable=g-import-not-at-top
  from configs import unet3d  # pylint: disable=g-import-not-at-top
  config3d, config2d = unet3d.get_config("demo"), unet2d.get_config("demo")
  assert config3d.model.features == config2d.model.features == (16, 32, 64,
                                                                  128)
  assert config3d.model.strides == ((1, 1, 1),) + ((2, 2, 2),) * 3
  assert config3d.model.kernel_sizes == ((3, 3, 3),) * 4
  assert config3d.num_steps == config2d.num_steps
  assert config3d.data.patch_size == (32, 32, 32)
  # The non-demo configs are planned: nothing is fixed by hand.
  assert unet3d.get_config().model.features == ()


@pytest.mark.parametrize("arg", [None, "demo"])
def test_unet2d_config_is_2d_and_valid(arg):
  from configs import unet2d  # pylint: disable=g-import-not-at-top
  config = unet2d.get_config(arg)
  assert config.planner.dims == 2
  if arg == "demo":
    assert len(config.data.patch_size) == 2
    assert all(len(s) == 2 for s in config.model.strides)
  config_validation.validate_config(config)
