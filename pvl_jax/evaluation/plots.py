"""PNG figures: prediction overlays on slices and training curves."""

from collections.abc import Mapping
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from preprocessing import lesion_labels
from preprocessing.io import figures
from pvl_jax.data import records


def prediction_overlays(source: Any, predictions: Mapping[str, np.ndarray],
                        path: Path, num_subjects: int, num_slices: int = 3
                        ) -> None:
  """Axial slices of test subjects: reference (green) vs prediction (red).

  Voxels under the cohort's ignore label, left out of every metric, are
  outlined dotted in gold.

  Slices are the ones with the most reference lesion voxels, so the figure
  shows lesions rather than empty brain.

  Args:
    source: data source of the split (records with image, lesion_mask).
    predictions: subject id -> boolean predicted mask.
    path: output PNG.
    num_subjects: rows in the figure (first subjects of the split).
    num_slices: columns per subject.
  """
  rows = min(num_subjects, len(source))
  if rows == 0:
    return
  fig, axes = plt.subplots(rows, num_slices, figsize=(3 * num_slices, 3 * rows),
                           squeeze=False)
  for row in range(rows):
    record = source[row]
    subject = records.subject_id(record)
    image = record["image"][..., 0]
    ref = record["lesion_mask"] == lesion_labels.LESION
    ignored = record["lesion_mask"] == lesion_labels.IGNORE
    pred = predictions[subject]
    per_slice = ref.sum(axis=(0, 1)) + 1e-3 * pred.sum(axis=(0, 1))
    for col, z in enumerate(sorted(np.argsort(per_slice)[::-1][:num_slices])):
      ax = axes[row, col]
      ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
      if ref[:, :, z].any():
        ax.contour(ref[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.8)
      if ignored[:, :, z].any():
        ax.contour(ignored[:, :, z].T, levels=[0.5], colors="gold",
                   linewidths=0.8, linestyles="dotted")
      if pred[:, :, z].any():
        ax.contour(pred[:, :, z].T, levels=[0.5], colors="red", linewidths=0.8)
      ax.set_title(f"{subject} z={z}", fontsize=8)
      ax.axis("off")
  fig.suptitle("reference (green) vs prediction (red); ignored: dotted gold")
  figures.save_png(fig, path)


def training_curves(history_path: Path, path: Path) -> None:
  """Plots metrics.jsonl: training and validation of a quantity on one axes.

  Scalars `train/X` and `val/X` of the same X (loss, seg_loss, cls_loss)
  share a panel, so the gap between them reads directly; training values are
  averages over `log_every` steps, validation values means over the fixed
  validation patches. Other scalars (gradient norm, patch Dice) get a panel
  each; steps/s is left out. A resumed run logs some steps twice; the later
  entry wins.
  """
  if not history_path.exists():
    return
  series: dict[str, dict[int, float]] = {}
  for line in history_path.read_text().splitlines():
    entry = json.loads(line)
    step = entry.pop("step")
    for key, value in entry.items():
      series.setdefault(key, {})[step] = value
  panels: dict[str, list[str]] = {}
  for key in sorted(series):
    if key.endswith("steps_per_s"):
      continue
    panels.setdefault(key.split("/", 1)[-1], []).append(key)
  # Shared quantities (train and val) first: they are what a reader looks at.
  names = sorted(panels, key=lambda name: (len(panels[name]) < 2, name))
  cols = min(len(names), 3)
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows),
                           squeeze=False)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  for ax, name in zip(axes.flat, names):
    for key in panels[name]:
      steps = sorted(series[key])
      ax.plot(steps, [series[key][s] for s in steps], marker=".",
              label=key.split("/", 1)[0] if "/" in key else key)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step")
    if len(panels[name]) > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save_png(fig, path)
