"""Evaluation of a trained model on whole volumes of the held-out splits.

Segmentation metrics are computed per subject on the cropped volume (the
lesion mask lies inside the brain crop, so nothing is lost) and aggregated
as the poster reports them (means over subjects). Predicted masks are
restricted to the subject's brain mask. Voxels of the cohort's ignore label
are scored as the WMH evaluation scores its label 2: the prediction there is
masked out before every metric (and before choosing the postprocessing), so
neither predicting nor missing them counts. For r > 0 the hand-function
probability of a subject is the sigmoid of its logit (the head of its windows'
mean summaries, its mean window logit, or the located head's read-out of its
whole probability map placed at its origin in the template grid,
`template_grid.record_origin`: `model.cls_head`); the decision
threshold is chosen on the validation split's labelled subjects and applied
to the test split's; unlabelled subjects are left out of the classification
metrics (`n_labelled`). `results["split"]` names the split rule and the
labelled subjects per split (`pvl_jax.data.splits`).
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
from preprocessing import lesion_labels
from preprocessing import normalize
from pvl_jax.data import records
from pvl_jax.data import splits as splits_lib
from pvl_jax.data import template_grid
from pvl_jax.inference import sliding_window
from pvl_jax.models import unet
from pvl_jax.evaluation import plots
from pvl_jax.evaluation import qc_report
from pvl_jax.evaluation import classification
from pvl_jax.evaluation import located_readout
from pvl_jax.evaluation import postprocess_choice
from pvl_jax.inference import postprocess
from pvl_jax.evaluation import segmentation
from pvl_jax.evaluation import threshold_baseline


def predict_split(
    window_fn: sliding_window.WindowFn | sliding_window.ImagesFn, source: Any,
    config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  """Predicts every subject of a split (masks at probability 0.5)."""
  split = {"subjects": [], "predictions": {}, "references": {},
           "ignored": {}, "brains": {}, "spacings": {}, "origins": {},
           "inference_s": {}, "logits": [], "labels": []}
  template = template_grid.TemplateGrid.from_config(config.model)
  for i in tqdm.trange(len(source), desc=f"predicting {name}", unit="subject"):
    record = source[i]
    origin = template_grid.record_origin(record, template)
    start = time.perf_counter()
    # predict_volume returns host arrays: the device work is inside the time.
    probs, logit = sliding_window.predict_volume(
        window_fn, record["image"], config.data.patch_size,
        config.inference.overlap, config.inference.batch_size,
        config.data.get("slice_axis", 2), origin)
    seconds = time.perf_counter() - start
    subject = records.subject_id(record)
    split["subjects"].append(subject)
    split["inference_s"][subject] = seconds
    # Lesions lie in the brain by definition; what the network marks in the
    # dark background (it sees little of it in training) is discarded.
    split["brains"][subject] = record["brain_mask"] > 0
    split["predictions"][subject] = (probs > 0.5) & split["brains"][subject]
    split["references"][subject] = (record["lesion_mask"]
                                    == lesion_labels.LESION)
    split["ignored"][subject] = record["lesion_mask"] == lesion_labels.IGNORE
    split["spacings"][subject] = tuple(record["spacing"])
    split["origins"][subject] = origin
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
      split["predictions"][s], split["references"][s], split["spacings"][s],
      ignore=split["ignored"][s]),
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
  apply_fn, head, volume_head = unet.window_functions(model,
                                                      config.model.cls_head)
  window_fn = sliding_window.make_window_fn(
      apply_fn, {"params": params}, config.inference.mirror_axes, head,
      volume_head)
  splits = {"val": predict_split(window_fn, sources["validation"], config,
                                 "validation"),
            "test": predict_split(window_fn, sources["test"], config, "test")}
  refit = located_readout.applies(config)
  if refit:
    # The refitted read-out reads the training subjects' segmentations too.
    splits["train"] = predict_split(window_fn, sources["train"], config,
                                    "train")
  postprocessing = postprocess_splits(splits, config)
  results: dict[str, Any] = {
      name: segmentation_results(splits[name]) for name in ("val", "test")}
  results["postprocessing"] = postprocessing
  if config.r > 0:
    threshold = None
    if refit:
      results["located_readout"] = located_readout.refit(splits, config,
                                                         workdir)
      if results["located_readout"]["refitted"]:
        threshold = located_readout.THRESHOLD
    classification_results({name: splits[name] for name in ("val", "test")},
                           results, threshold)
  summary = splits_lib.summarize(sources, config)
  results["split"] = {"rule": summary["rule"], "fold": summary["fold"],
                      "num_folds": summary["num_folds"],
                      "num_subjects": {n: len(ids) for n, ids in
                                       summary["subjects"].items()},
                      "num_labelled": summary["labelled"],
                      "brain_masks": summary["brain_masks"]}
  results["threshold_baseline"] = threshold_baseline_results(sources)
  plots.prediction_overlays(
      sources["test"], splits["test"]["predictions"],
      workdir / "predictions.png", config.inference.num_plot_subjects)
  save_predictions(sources["test"], splits["test"]["predictions"],
                   workdir / "predictions")
  qc_report.write_test_split(sources["test"], splits["test"], results["test"],
                             workdir)
  return results


def postprocess_splits(splits: Mapping[str, dict[str, Any]],
                       config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Chooses the postprocessing on validation; applies it to every split.

  Returns:
    results.json's `postprocessing` record: the minimum volume (mm^3), the
    same in voxels of the run's grid, the surface shell (mm), the
    candidates, the criterion and the split it was chosen on (what
    `trained_run` applies to new scans).
  """
  val = splits["val"]
  voxel_mm3 = float(np.prod(val["spacings"][val["subjects"][0]]))
  inference = config.inference
  sizes = tuple(float(c) for c in inference.postprocess_candidates_mm3)
  depths = tuple(float(d) for d in inference.postprocess_depth_candidates_mm)
  for split in splits.values():
    split["depths"] = {s: postprocess.brain_depth(split["brains"][s],
                                                  split["spacings"][s])
                       for s in split["subjects"]}
  choice = postprocess_choice.Choice(0.0, 0.0)
  if inference.postprocess:
    choice = postprocess_choice.choose(
        [val["predictions"][s] & ~val["ignored"][s] for s in val["subjects"]],
        [val["references"][s] for s in val["subjects"]],
        [val["depths"][s] for s in val["subjects"]], voxel_mm3, sizes,
        depths)
  for split in splits.values():
    split["predictions"] = {
        s: postprocess_choice.apply(p, split["depths"][s], choice, voxel_mm3)
        for s, p in split["predictions"].items()}
  return {"min_component_mm3": choice.min_mm3,
          "min_component_voxels": postprocess_choice.min_voxels(
              choice.min_mm3, voxel_mm3),
          "min_depth_mm": choice.min_depth_mm,
          "candidates_mm3": list(sizes) if inference.postprocess else [],
          "depth_candidates_mm": list(depths) if inference.postprocess
          else [],
          "criterion": "lesion F1, then Dice", "chosen_on": "validation"}


def classification_results(splits: Mapping[str, Mapping[str, Any]],
                           results: dict[str, Any],
                           threshold: float | None = None) -> None:
  """Adds hand-function metrics of the labelled subjects to `results`.

  The threshold is `threshold` when given (the refitted read-out's, fitted
  on the validation subjects too), else chosen on the validation split's
  labelled subjects; when they do not hold both classes it stays at 0.5
  (`cls_threshold_chosen_on` says which). A split without labelled
  subjects gets `n_labelled` 0 and no metrics. With the located head's
  refitted read-out each subject's row also holds the training read-out's
  probability (`hand_function_prob_training_readout`).
  """
  val = splits["val"]
  labelled = val["labels"] >= 0
  if threshold is not None:
    chosen_on = "the refitted read-out's (the baseline's)"
  elif np.unique(val["labels"][labelled]).size == 2:
    threshold = classification.choose_threshold(val["labels"][labelled],
                                                val["cls_prob"][labelled])
    chosen_on = "validation"
  else:
    threshold, chosen_on = 0.5, "default (validation lacks a class)"
  for name, split in splits.items():
    labelled = split["labels"] >= 0
    results[name]["n_labelled"] = int(labelled.sum())
    for row, prob in zip(results[name]["per_subject"], split["cls_prob"]):
      row["hand_function_prob"] = float(prob)
    for row, prob in zip(results[name]["per_subject"],
                         split.get("cls_prob_training_readout", ())):
      row["hand_function_prob_training_readout"] = float(prob)
    if not labelled.any():
      continue
    cls = classification.classification_metrics(
        split["labels"][labelled], split["cls_prob"][labelled], threshold)
    results[name].update({f"cls_{k}": v for k, v in cls.items()})
    results[name]["cls_threshold"] = threshold
    results[name]["cls_threshold_chosen_on"] = chosen_on


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
  """Tunes the intensity threshold on train, reports test Dice/VOE means.

  Ignored voxels are taken out of the brain mask the baseline thresholds
  inside, so they weigh neither in its tuning nor in its scores.
  """
  train = sources["train"]
  threshold, train_dice = threshold_baseline.tune_threshold(
      _without_ignored(train[i]) for i in range(len(train)))
  test = [_without_ignored(sources["test"][i])
          for i in range(len(sources["test"]))]
  rows = [segmentation.evaluate_subject(
      threshold_baseline.predict(record, threshold),
      record["lesion_mask"] > 0, tuple(record["spacing"]))
          for record in test]
  summary = segmentation.aggregate(rows)
  return {"threshold": threshold, "train_pooled_dice": train_dice,
          "test_dice_mean": summary["dice_mean"],
          "test_voe_mean": summary["voe_mean"]}


def _without_ignored(record: Mapping[str, Any]) -> dict[str, Any]:
  """A record whose ignored voxels are neither lesion nor brain."""
  labels = np.asarray(record["lesion_mask"])
  ignored = labels == lesion_labels.IGNORE
  return {**record,
          "lesion_mask": (labels == lesion_labels.LESION).astype(np.uint8),
          "brain_mask": (np.asarray(record["brain_mask"]) > 0) & ~ignored}


def _metrics_only(row: Mapping[str, Any]) -> dict[str, float]:
  return {k: v for k, v in row.items()
          if k not in ("subject_id", "inference_s")}
