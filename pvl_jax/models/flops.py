"""Analytic FLOP count of the U-Net's convolutions.

Used to turn measured step times into achieved TFLOP/s. Only convolutions
are counted (normalisation, activations and the classification head are
negligible next to them); a multiply-add is two FLOPs. A training step costs
about three forward passes: the forward, the input gradient and the weight
gradient of every convolution, each as expensive as the forward.
"""

from collections.abc import Sequence
import math

TRAIN_STEP_FORWARDS = 3


def unet_forward_flops(patch: Sequence[int], in_channels: int,
                       features: Sequence[int],
                       strides: Sequence[Sequence[int]],
                       kernel_sizes: Sequence[Sequence[int]],
                       num_classes: int = 2,
                       deep_supervision: bool = True) -> int:
  """Convolution FLOPs of one sample's forward pass through `unet.UNet`.

  Args:
    patch: spatial input shape.
    in_channels: input channels.
    features, strides, kernel_sizes: the U-Net's per-stage topology.
    num_classes: segmentation classes.
    deep_supervision: whether every decoder stage has a segmentation head.

  Returns:
    FLOPs (2 per multiply-add).
  """
  def conv(voxels: int, kernel: Sequence[int], c_in: int, c_out: int) -> int:
    return 2 * voxels * math.prod(kernel) * c_in * c_out

  shape = list(patch)
  voxels_per_stage = []
  flops, channels = 0, in_channels
  for feats, stride, kernel in zip(features, strides, kernel_sizes):
    shape = [s // f for s, f in zip(shape, stride)]
    voxels = math.prod(shape)
    voxels_per_stage.append(voxels)
    flops += conv(voxels, kernel, channels, feats) + conv(voxels, kernel,
                                                          feats, feats)
    channels = feats
  for level in reversed(range(len(features) - 1)):
    voxels = voxels_per_stage[level]
    # 1x1 conv to prod(stride) * C channels at the coarse resolution.
    coarse = voxels // math.prod(strides[level + 1])
    flops += conv(coarse, (1,), channels,
                  features[level] * math.prod(strides[level + 1]))
    kernel = kernel_sizes[level]
    flops += conv(voxels, kernel, 2 * features[level], features[level])
    flops += conv(voxels, kernel, features[level], features[level])
    if deep_supervision or level == 0:
      flops += conv(voxels, (1,), features[level], num_classes)
    channels = features[level]
  return flops
