"""The located head's final read-out, refitted as the poster's baseline.

During training the located head's read-out is fitted every step to the
memory of the training subjects' raw 8 mm block fractions, with the penalty
chosen on their reference masks (`models.located_head`,
`training.readout_penalty`): that is what sends L_cls's gradient into the
segmentation. Measured on the 60-subject cohort, that read-out ranks
subjects as well as logistic regression trained on the same 36 subjects, and
below the baseline trained on 48 (docs/results.md, "The located head"): the
baseline's recipe (its block size, lesion-frequency threshold and
standardisation chosen by inner CV) gains from the 12 validation subjects,
the fixed 8 mm raw recipe does not.

So after training, with `model.cls_readout_refit`, the read-out is refitted:
the baseline's matrix model (`handfunction.matrix_readout`) on the network's
own postprocessed segmentations, in the template grid, of every labelled
subject outside the test split (the training and validation splits). The
test split is scored by that model; its decision threshold is 0.5, as the
baseline's, because the validation subjects are among those it was fitted
on. The network and the segmentations are the joint model's; the read-out is
then exactly the baseline with the joint model's masks in place of the
reference masks.
"""

import logging
from pathlib import Path
from typing import Any, Mapping

import ml_collections
import numpy as np
from scipy import sparse

from preprocessing.io.errors import InputError
from pvl_jax.evaluation import classification
from pvl_jax.handfunction import matrix_readout

log = logging.getLogger(__name__)

# The refitted read-out's decision threshold (the baseline's).
THRESHOLD = 0.5
# The splits it is fitted on.
FIT_SPLITS = ("train", "val")


def applies(config: ml_collections.ConfigDict) -> bool:
  """Whether evaluation refits the read-out (a located head, r > 0)."""
  return (config.r > 0 and config.model.cls_head == "located"
          and bool(config.model.get("cls_readout_refit", False)))


def _masks(split: Mapping[str, Any], shape: tuple[int, ...]):
  return matrix_readout.template_masks(
      [split["predictions"][s] for s in split["subjects"]],
      [split["origins"][s] for s in split["subjects"]], shape)


def refit(splits: Mapping[str, dict[str, Any]],
          config: ml_collections.ConfigDict, workdir: Path
          ) -> dict[str, Any]:
  """Fits the read-out on `FIT_SPLITS` and rescores the other splits.

  Each split of `splits` (predicted and postprocessed, `evaluate_run`) gets
  `cls_prob` from the refitted model; the training read-out's
  probabilities move to `cls_prob_training_readout`. The model is saved to
  `workdir / matrix_readout.RUN_FILE`.

  Returns:
    results.json's `located_readout` record: what was fitted on what, the
    chosen hyper-parameters, and the test split's AUC with the training
    read-out beside it. When the labelled subjects outside the test split
    cannot fill the inner CV, nothing is refitted and the record says why
    (the training read-out stays).
  """
  shape = tuple(int(n) for n in config.model.cls_template_shape)
  masks = {name: _masks(split, shape) for name, split in splits.items()}
  labelled = {name: splits[name]["labels"] >= 0 for name in FIT_SPLITS}
  try:
    readout = matrix_readout.fit(
        sparse.vstack([masks[n][labelled[n]] for n in FIT_SPLITS]).tocsr(),
        np.concatenate([splits[n]["labels"][labelled[n]]
                        for n in FIT_SPLITS]),
        shape, int(config.seed))
  except InputError as e:
    log.warning("located head: read-out not refitted (%s); the training "
                "read-out decides", e)
    return {"refitted": False, "reason": str(e)}
  for name, split in splits.items():
    split["cls_prob_training_readout"] = split["cls_prob"]
    split["cls_prob"] = readout.probability(masks[name])
  readout.save(workdir / matrix_readout.RUN_FILE)
  record = {"refitted": True, "fitted_on": list(FIT_SPLITS),
            "subjects": readout.subjects,
            "masks": "the network's postprocessed segmentations",
            "block_mm": readout.factor * float(np.linalg.norm(
                np.asarray(config.model.cls_template_affine)[:3, 0])),
            **readout.hyperparameters,
            "blocks_read": int(readout.kept.size), "threshold": THRESHOLD}
  test = splits["test"]
  labelled = test["labels"] >= 0
  if np.unique(test["labels"][labelled]).size == 2:
    record["test_auc_training_readout"] = classification.classification_metrics(
        test["labels"][labelled],
        test["cls_prob_training_readout"][labelled], THRESHOLD)["auc"]
  log.info("located head: read-out refitted as the baseline on %d "
           "subjects' segmentations (blocks of %g mm, %d read, C=%g)",
           readout.subjects, record["block_mm"], record["blocks_read"],
           readout.hyperparameters["C"])
  return record


