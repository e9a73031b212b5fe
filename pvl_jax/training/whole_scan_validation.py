"""The located head's validation loss, scored on whole validation scans.

The located head decides per subject from the whole brain, so a patch has
no logit of its own to score. Validation reads it as inference does: each
validation scan's sliding-window probability map, placed in the template
grid at the record's origin (`template_grid.record_origin`), read once by
the head (`unet.window_functions`).
Validation subjects have no memory rows, and need none: the map covers the
whole brain. Mirroring is left out (it multiplies the cost by 2^axes and
the curve only has to be comparable between steps). The loss is the mean
binary cross-entropy over the labelled subjects (`losses.classification_loss`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pvl_jax.data import template_grid
from pvl_jax.inference import sliding_window
from pvl_jax.models import unet
from pvl_jax.training import losses


class WholeScanValidation:
  """Scores the located head's loss on every scan of a split."""

  def __init__(self, model: unet.UNet, source: Any,
               config: ml_collections.ConfigDict):
    """Builds the window function once (its identity keys the compile).

    Args:
      model: the U-Net with the located head.
      source: the validation split.
      config: the run's config (patch size, inference overlap and batch).
    """
    apply, head, volume_head = unet.window_functions(model, "located")
    self._window_fn = sliding_window.make_window_fn(apply, None, (), head,
                                                    volume_head)
    self._source = source
    self._config = config
    self._template = template_grid.TemplateGrid.from_config(config.model)

  def __call__(self, params: Any) -> dict[str, float]:
    """{"val/cls_loss": ...} for the parameters `params`."""
    window_fn = dataclasses.replace(
        self._window_fn, variables=jax.device_put(
            {"params": params}, sliding_window.inference_device()))
    logits, labels = [], []
    for i in range(len(self._source)):
      record = self._source[i]
      _, logit = sliding_window.predict_volume(
          window_fn, record["image"], self._config.data.patch_size,
          self._config.inference.overlap, self._config.inference.batch_size,
          origin=template_grid.record_origin(record, self._template))
      logits.append(logit)
      labels.append(int(record["hand_function"]))
    loss = losses.classification_loss(jnp.asarray(logits, jnp.float32),
                                      jnp.asarray(np.asarray(labels)))
    return {"val/cls_loss": float(loss)}
