"""Segmentation-only 3D U-Net: configs/joint.py with r = 0.

`demo` is the 3D counterpart of `configs/unet2d.py:demo` for the 2D-vs-3D
comparison: the same feature maps per stage (16-32-64-128), pooling stages and
training steps, so the two models differ in what a convolution sees (a
32^3 cube instead of a 64^2 slice), as nnU-Net compares its 2D and 3D
configurations. The joint demo's narrower 8-16-32 network is sized for the
sweep over r.

Usage: python -m pvl_jax.main --config=configs/unet3d.py[:demo] --workdir=DIR
"""

import ml_collections

from configs import joint
from configs import unet2d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The joint config without the hand-function loss (r = 0)."""
  config = joint.get_config(arg)
  config.r = 0.0
  if "demo" in (arg or "").split(","):
    features = unet2d.get_config(arg).model.features
    config.model.features = features
    config.model.strides = ((1, 1, 1),) + ((2, 2, 2),) * (len(features) - 1)
    config.model.kernel_sizes = ((3, 3, 3),) * len(features)
  return config
