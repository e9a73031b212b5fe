"""The closing summary of a training run: its tables, then files.

Printed at the end of `pvl_jax.main`: segmentation metrics per split (means
over subjects), hand function where the run has a classification head
(r > 0), the intensity-threshold baseline on the test split; lesion recall
per lesion-size bin per split (the small lesions PVL is made of, with the
counts they rest on); and the paths of what a person opens next.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from preprocessing.io import tables
from pvl_jax.evaluation import lesions

SPLITS = (("val", "validation"), ("test", "test"))
SEGMENTATION = (("dice_mean", "Dice"), ("voe_mean", "VOE"),
                ("hd95_mm_mean", "HD95 (mm)"), ("lesion_f1_mean", "lesion F1"))
HAND_FUNCTION = (("cls_accuracy", "hand fn. accuracy"), ("cls_f1", "F1"),
                 ("cls_auc", "AUC"))
OUTPUT_FILES = ("results.json", "predictions.png", "training_curves.png")


def summary_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list]]:
  """Header and rows of the summary table (None where a metric is absent)."""
  has_cls = any("cls_accuracy" in results.get(key, {}) for key, _ in SPLITS)
  metrics = SEGMENTATION + (HAND_FUNCTION if has_cls else ())
  header = ["split", "subjects"] + [label for _, label in metrics]
  rows = [[name, results[key].get("n_subjects")]
          + [results[key].get(metric) for metric, _ in metrics]
          for key, name in SPLITS if key in results]
  baseline = results.get("threshold_baseline")
  if baseline:
    rows.append(["test: intensity threshold tuned on train",
                 results["test"].get("n_subjects"),
                 baseline["test_dice_mean"], baseline["test_voe_mean"]]
                + [None] * (len(metrics) - 2))
  return header, rows


def size_recall_rows(results: Mapping[str, Any]
                     ) -> tuple[list[str], list[list]]:
  """Header and rows of lesion recall per size bin: "recall (found/all)"."""
  bins = {key: lesions.size_bins(results[key]) for key, _ in SPLITS
          if key in results}
  labels = [label for label, _, _ in next(iter(bins.values()), [])]
  header = ["lesion recall by size"] + [label.replace("-", " - ", 1)
                                        for label in labels]
  rows = [[name] + [f"{found / n:.2f} ({found}/{n})" if n else "no lesion"
                    for _, n, found in bins[key]]
          for key, name in SPLITS if key in bins]
  return header, rows


def summary_text(results: Mapping[str, Any], workdir: Path) -> str:
  """The tables and the paths of the run's results and figures."""
  header, rows = summary_rows(results)
  table = tables.markdown_table(
      header, rows, lambda v: "" if v is None else tables.format_cell(v))
  table += "\n" + tables.markdown_table(*size_recall_rows(results))
  files = [str(Path(workdir) / name) for name in OUTPUT_FILES
           if (Path(workdir) / name).exists()]
  return table + "\n" + "\n".join(files)
