"""Segmentation-only 2D U-Net on axial slices, for the 2D-vs-3D comparison.

Trains on the same TFDS records as the 3D models (axial slabs of thickness one
cut by the same patch sampler); its slice predictions are stacked back into
volumes and evaluated with the same code.

Usage: python -m pvl_jax.main --config=configs/unet2d.py[:demo] --workdir=DIR
"""

import ml_collections

from configs import joint


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """2D variant of configs/joint.py (r = 0; 2D patches, strides, kernels)."""
  config = joint.get_config(arg)
  demo = "demo" in (arg or "").split(",")
  config.r = 0.0
  # nnU-Net's 2D plans use whole slices and more feature maps per stage than
  # 3D (cheap in 2D); the 1 mm template brain is about 160 x 190 voxels.
  config.data.patch_size = (64, 64) if demo else (192, 160)
  features = (16, 32, 64, 128) if demo else (32, 64, 128, 256, 512, 512)
  config.model.features = features
  config.model.strides = ((1, 1),) + ((2, 2),) * (len(features) - 1)
  config.model.kernel_sizes = ((3, 3),) * len(features)
  config.batch_size = 8 if demo else 12
  config.inference.batch_size = 8
  return config
