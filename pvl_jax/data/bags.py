"""Bags of patches for the subject-level hand-function head.

The hand-function label belongs to a subject, not to a patch. With
`config.model.cls_head = "subject"` the training batch is made of bags: K
consecutive patches of the batch come from one subject, and the head reads the
mean summaries (pooled bottleneck, soft lesion volume) of the bag's first P
patches, multiple-instance style. Those P patches are drawn uniformly over the
volume, so their mean is an unbiased estimate of the same mean over every
window of the scan, which is what the head reads at inference; the bag's other
K - P patches are forced to hold a lesion (nnU-Net's foreground oversampling,
which forces the last third of its batch) and train only the segmentation.
With `cls_head = "patch"` every patch is classified on its own and the batch
is forced as nnU-Net forces it: its last round(B * foreground_fraction)
patches hold a lesion (`input_pipeline.batch_patches`).
"""

import ml_collections

from pvl_jax.models import unet

CLS_HEADS = ("subject", "patch", "located")


def bag_size(config: ml_collections.ConfigDict) -> int:
  """Patches per hand-function prediction in training (1: per patch)."""
  if config.model.cls_head != "subject":
    return 1  # the per-patch and the located head read single patches
  return int(config.model.cls_bag_size or config.batch_size)


def pooled_patches(config: ml_collections.ConfigDict) -> int:
  """How many of a bag's patches (its first ones) are drawn uniformly.

  As nnU-Net splits its batch, round(K * (1 - foreground_fraction)), but at
  least one, so that every bag has something for the head to read.
  """
  size = bag_size(config)
  if size == 1:
    return 1
  return max(1, round(size * (1 - config.data.foreground_fraction)))


def training_model(model: unet.UNet, config: ml_collections.ConfigDict
                   ) -> unet.UNet:
  """The U-Net that classifies the training batch's bags (same parameters)."""
  return model.clone(cls_bag_size=bag_size(config),
                     cls_bag_pooled=pooled_patches(config))
