"""PNG figures: prediction overlays on slices and training curves."""

from collections.abc import Mapping
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from preprocessing.io.atomic import atomic_write_bytes


def _save(fig: plt.Figure, path: Path) -> None:
  """Renders `fig` to PNG bytes and writes them atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  atomic_write_bytes(path, buffer.getvalue())


def prediction_overlays(source: Any, predictions: Mapping[str, np.ndarray],
                        path: Path, num_subjects: int, num_slices: int = 3
                        ) -> None:
  """Axial slices of test subjects: reference (green) vs prediction (red).

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
    subject = record["subject_id"]
    subject = subject.decode() if isinstance(subject, bytes) else str(subject)
    image = record["image"][..., 0]
    ref = record["lesion_mask"] > 0
    pred = predictions[subject]
    per_slice = ref.sum(axis=(0, 1)) + 1e-3 * pred.sum(axis=(0, 1))
    for col, z in enumerate(sorted(np.argsort(per_slice)[::-1][:num_slices])):
      ax = axes[row, col]
      ax.imshow(image[:, :, z].T, cmap="gray", origin="lower")
      if ref[:, :, z].any():
        ax.contour(ref[:, :, z].T, levels=[0.5], colors="lime", linewidths=0.8)
      if pred[:, :, z].any():
        ax.contour(pred[:, :, z].T, levels=[0.5], colors="red", linewidths=0.8)
      ax.set_title(f"{subject} z={z}", fontsize=8)
      ax.axis("off")
  fig.suptitle("reference (green) vs prediction (red)")
  _save(fig, path)


def training_curves(history_path: Path, path: Path) -> None:
  """Plots every scalar of metrics.jsonl against the step.

  A resumed run logs some steps twice; the later entry wins.
  """
  if not history_path.exists():
    return
  series: dict[str, dict[int, float]] = {}
  for line in history_path.read_text().splitlines():
    entry = json.loads(line)
    step = entry.pop("step")
    for key, value in entry.items():
      series.setdefault(key, {})[step] = value
  keys = sorted(k for k in series if not k.endswith("steps_per_s"))
  cols = min(len(keys), 4)
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows),
                           squeeze=False)
  for ax in axes.flat[len(keys):]:
    ax.axis("off")
  for ax, key in zip(axes.flat, keys):
    steps = sorted(series[key])
    ax.plot(steps, [series[key][s] for s in steps], marker=".")
    ax.set_title(key, fontsize=8)
    ax.set_xlabel("step")
  fig.tight_layout()
  _save(fig, path)
