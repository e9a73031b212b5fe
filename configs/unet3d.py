"""Segmentation-only 3D U-Net: configs/joint.py with r = 0.

Usage: python -m pvl_jax.main --config=configs/unet3d.py[:demo] --workdir=DIR
"""

import ml_collections

from configs import joint


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The joint config without the hand-function loss (r = 0)."""
  config = joint.get_config(arg)
  config.r = 0.0
  return config
