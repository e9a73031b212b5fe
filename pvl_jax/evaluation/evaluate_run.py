"""Evaluation of a trained model on whole volumes of the held-out splits.

Segmentation metrics are computed per subject on the cropped volume (the
lesion mask lies inside the brain crop, so nothing is lost) and aggregated
as the poster reports them (means over subjects). Predicted masks are
restricted to the subject's brain mask. For r > 0 the hand-function
probability of a subject is the sigmoid of its logit (the head of its windows'
mean summaries, or its mean window logit: `model.cls_head`); the decision
threshold is chosen on the validation split and applied to the test split.
Each subject's prediction time is recorded (`inference_s`), until its
probability map is on the host.
"""

from collections.abc import Mapping
from pathlib import Path
import time
from typing import Any

import ml_collections
import numpy as np
import tqdm

from preprocessing.io import nifti
from preprocessing import normalize
from pvl_jax.data import records
from pvl_jax.inference import sliding_window
from pvl_jax.models import unet
from pvl_jax.evaluation import plots
from pvl_jax.evaluation import classification
from pvl_jax.evaluation import postprocess_choice
from pvl_jax.inference.postprocess import remove_small_components
from pvl_jax.evaluation import segmentation
from pvl_jax.evaluation import threshold_baseline


def predict_split(
    window_fn: sliding_window.WindowFn | sliding_window.ImagesFn, source: Any,
    config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  """Predicts every subject of a split (masks at probability 0.5)."""
  split = {"subjects": [], "predictions": {}, "references": {},
           "spacings": {}, "inference_s": {}, "logits": [], "labels": []}
  for i in tqdm.trange(len(source), desc=f"predicting {name}", unit="subject"):
    record = source[i]
    start = time.perf_counter()
    # predict_volume returns host arrays: the device work is inside the time.
    probs, logit = sliding_window.predict_volume(
        window_fn, record["image"], config.data.patch_size,
        config.inference.overlap, config.inference.batch_size,
        config.data.get("slice_axis", 2))
    seconds = time.perf_counter() - start
    subject = records.subject_id(record)
    split["subjects"].append(subject)
    split["inference_s"][subject] = seconds
    # Lesions lie in the brain by definition; what the network marks in the
    # dark background (it sees little of it in training) is discarded.
    split["predictions"][subject] = (probs > 0.5) & (record["brain_mask"] > 0)
    split["references"][subject] = record["lesion_mask"] > 0
    split["spacings"][subject] = tuple(record["spacing"])
    split["logits"].append(logit)
    split["labels"].append(int(record["hand_function"]))
  split["cls_prob"] = 1 / (1 + np.exp(-np.asarray(split["logits"])))
  split["labels"] = np.asarray(split["labels"])
  return split


def segmentation_results(split: Mapping[str, Any]) -> dict[str, Any]:
  """Per-subject metrics and their aggregate for a predicted split.

  Besides the metrics: `inference_s_mean`, the mean prediction time over the
  split's subjects, and `inference_s_mean_after_first`, the same without the
  first subject, whose time includes compiling in the first split predicted
  (later subjects compile only if their padded shape,
  `sliding_window.BUCKET`, is new; null for a single subject).
  """
  rows = [{"subject_id": s, **segmentation.evaluate_subject(
      split["predictions"][s], split["references"][s], split["spacings"][s]),
           "inference_s": split["inference_s"][s]}
          for s in split["subjects"]]
  seconds = [row["inference_s"] for row in rows]
  return {**segmentation.aggregate([_metrics_only(row) for row in rows]),
          "inference_s_mean": float(np.mean(seconds)),
          "inference_s_mean_after_first": (
              float(np.mean(seconds[1:])) if len(seconds) > 1 else None),
          "per_subject": rows}


def evaluate_model(model, params, sources: Mapping[str, Any],
                   config: ml_collections.ConfigDict, workdir: Path
                   ) -> dict[str, Any]:
  """Full-volume evaluation of validation and test splits.

  Returns:
    {"val": {...}, "test": {...}, "threshold_baseline": {...}} where each
    split holds aggregated segmentation metrics (dice_mean, voe_mean, ...),
    for r > 0 cls_accuracy / cls_f1 / cls_auc, and per-subject rows.
  """
  apply_fn, head = unet.window_functions(model, config.model.cls_head)
  window_fn = sliding_window.make_window_fn(
      apply_fn, {"params": params}, config.inference.mirror_axes, head)
  splits = {"val": predict_split(window_fn, sources["validation"], config,
                                 "validation"),
            "test": predict_split(window_fn, sources["test"], config, "test")}
  min_size = 0
  if config.inference.postprocess:
    val = splits["val"]
    min_size = postprocess_choice.choose_min_size(
        [val["predictions"][s] for s in val["subjects"]],
        [val["references"][s] for s in val["subjects"]])
    for split in splits.values():
      split["predictions"] = {
          s: remove_small_components(p, min_size)
          for s, p in split["predictions"].items()}
  results: dict[str, Any] = {
      name: segmentation_results(split) for name, split in splits.items()}
  results["postprocessing"] = {"min_component_voxels": min_size,
                               "chosen_on": "validation"}
  if config.r > 0:
    threshold = classification.choose_threshold(splits["val"]["labels"],
                                                splits["val"]["cls_prob"])
    for name, split in splits.items():
      cls = classification.classification_metrics(
          split["labels"], split["cls_prob"], threshold)
      results[name].update({f"cls_{k}": v for k, v in cls.items()})
      results[name]["cls_threshold"] = threshold
      for row, prob in zip(results[name]["per_subject"], split["cls_prob"]):
        row["hand_function_prob"] = float(prob)
  results["threshold_baseline"] = threshold_baseline_results(sources)
  plots.prediction_overlays(
      sources["test"], splits["test"]["predictions"],
      workdir / "predictions.png", config.inference.num_plot_subjects)
  save_predictions(sources["test"], splits["test"]["predictions"],
                   workdir / "predictions")
  return results


def save_predictions(source: Any, predictions: Mapping[str, np.ndarray],
                     out_dir: Path) -> None:
  """Writes each predicted mask as NIfTI in its subject's original grid.

  The crop is undone (zero outside it) and the original affine restored, so
  `<out_dir>/<subject>_pred.nii.gz` overlays the scan the record came from
  (for the template-space cohort: template space, as the baseline needs).
  """
  for i in range(len(source)):
    record = source[i]
    subject = records.subject_id(record)
    start = np.asarray(record["crop_start"])
    full = np.zeros(tuple(record["original_shape"]), np.uint8)
    pred = predictions[subject]
    full[tuple(slice(a, a + n) for a, n in zip(start, pred.shape))] = pred
    affine = normalize.crop_affine(np.asarray(record["affine"]), tuple(-start))
    nifti.save_nifti(full, affine, out_dir / f"{subject}_pred.nii.gz",
                        np.uint8)


def threshold_baseline_results(sources: Mapping[str, Any]) -> dict[str, float]:
  """Tunes the intensity threshold on train, reports test Dice/VOE means."""
  train = sources["train"]
  threshold, train_dice = threshold_baseline.tune_threshold(
      train[i] for i in range(len(train)))
  test = sources["test"]
  rows = [segmentation.evaluate_subject(
      threshold_baseline.predict(test[i], threshold),
      test[i]["lesion_mask"] > 0, tuple(test[i]["spacing"]))
          for i in range(len(test))]
  summary = segmentation.aggregate(rows)
  return {"threshold": threshold, "train_pooled_dice": train_dice,
          "test_dice_mean": summary["dice_mean"],
          "test_voe_mean": summary["voe_mean"]}


def _metrics_only(row: Mapping[str, Any]) -> dict[str, float]:
  return {k: v for k, v in row.items()
          if k not in ("subject_id", "inference_s")}
