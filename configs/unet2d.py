"""Segmentation-only 2D U-Net on axial slices, for the 2D-vs-3D comparison.

Trains on the same TFDS records as the 3D models (axial slabs of thickness one
cut by the same patch sampler); its slice predictions are stacked back into
volumes and evaluated with the same code.

Usage: python -m pvl_jax.main --config=configs/unet2d.py[:demo] --workdir=DIR
"""

import ml_collections

from configs import joint


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """2D variant of configs/joint.py (r = 0; planned 2D patch and topology)."""
  config = joint.get_config(arg)
  demo = "demo" in (arg or "").split(",")
  config.r = 0.0
  config.planner.dims = 2
  config.inference.batch_size = 8
  if demo:  # sized by hand for a 2-core CPU; the full config is planned
    config.data.patch_size = (64, 64)
    config.model.features = (16, 32, 64, 128)
    config.model.strides = ((1, 1),) + ((2, 2),) * 3
    config.model.kernel_sizes = ((3, 3),) * 4
    config.batch_size = 8
  return config
