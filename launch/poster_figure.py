"""launch.poster's outputs: the markdown tables and the plot against r."""

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt

from preprocessing.io import figures
from preprocessing.io import tables
from pvl_jax.evaluation import bootstrap

NONE = "—"  # no joint model at r = 0
METRIC_LABELS = dict(zip(bootstrap.METRICS, ("accuracy", "F1", "AUC")))
JOINT, PREDICTED, REFERENCE = "joint", "LR predicted", "LR reference"
# Logistic regression on the reference masks of the subjects the joint
# model trained on (each run's train split, without its validation split).
REFERENCE_TRAIN = "LR reference, train split"
CLASSIFIERS = (JOINT, PREDICTED, REFERENCE, REFERENCE_TRAIN)
# Each pair's difference is the first minus the second.
PAIRS = ((JOINT, PREDICTED), (JOINT, REFERENCE), (JOINT, REFERENCE_TRAIN),
         (PREDICTED, REFERENCE))
DIFFERENCES = tuple(f"{a} - {b}" for a, b in PAIRS)
# The plot's bottom row: the joint model against each baseline.
JOINT_DIFFERENCES = tuple(f"{a} - {b}" for a, b in PAIRS if a == JOINT)


def cell(interval: Mapping[str, Any] | None, resamples: int,
         signed: bool = False) -> str:
  """`bootstrap.format_interval`, or `NONE` for a classifier not there."""
  if interval is None:
    return NONE
  return bootstrap.format_interval(interval, resamples, signed)


def _folds(group: Mapping[str, Any]) -> str:
  return ", ".join(map(str, group["folds"]))


def markdown(report: Mapping[str, Any]) -> str:
  """poster.md: the classifiers, their differences, what was not compared."""
  resamples = report["resamples"]
  rows, differences = [], []
  for group in report["groups"]:
    setting = [group["label"], f"{group['subjects']} ({group['bad']})",
               _folds(group)]
    for name in CLASSIFIERS:
      found = group["intervals"].get(name)
      rows.append(setting + [name] + [
          cell(found and found[m], resamples) for m in METRIC_LABELS])
    for name in DIFFERENCES:
      if name in group["intervals"]:
        differences.append(setting[:2] + [name] + [
            cell(group["intervals"][name][m], resamples, signed=True)
            for m in METRIC_LABELS])
  labels = list(METRIC_LABELS.values())
  lines = [
      f"# The poster's comparison: {report['sweep']}", "",
      "Hand function of the subjects in the test splits of each setting's "
      "finished runs, which are also the baselines' outer folds; values "
      "pooled over those subjects, [low, high]: paired bootstrap "
      f"{report['confidence']:.0%} interval over {resamples} resamples of "
      f"the subjects (seed {report['seed']}). joint: the joint model at its "
      "validation-chosen threshold; LR predicted / LR reference: logistic "
      "regression on the masks in matrix form, on the masks the setting's "
      "own runs predicted (cross-fitted) / on the reference masks, each "
      "fold's model trained on every subject outside the fold; "
      f"{REFERENCE_TRAIN}: the same on the reference masks of the fold's "
      "run's train split alone, the subjects the joint model trained on "
      "(its validation split stays out). "
      f"{NONE}: no joint model at r = 0; {bootstrap.UNDEFINED}: undefined.",
      "",
      "## Classifiers", "",
      tables.markdown_table(
          ["setting", "subjects (bad)", "test folds", "classifier", *labels],
          rows).rstrip(), "",
      "## Differences", "",
      tables.markdown_table(["setting", "subjects (bad)", "difference",
                             *labels], differences).rstrip()]
  unlabelled = [f"- {g['label']}: {len(g['unlabelled'])} unlabelled test "
                f"subject(s) left out: {', '.join(g['unlabelled'])}"
                for g in report["groups"] if g["unlabelled"]]
  if unlabelled:
    lines += ["", "## Left out", ""] + unlabelled
  if report["skipped"]:
    lines += ["", "## Not compared (fewer than two finished runs)", ""]
    lines += [f"- {g['label']}: {g['finished']} finished; not finished: "
              f"{', '.join(g['unfinished']) or 'none'}"
              for g in report["skipped"]]
  return "\n".join(lines) + "\n"


def _errorbar(ax, x: float, interval: Mapping[str, Any] | None, **style):
  if interval is None or interval["estimate"] is None:
    return
  estimate, low, high = (interval[k] for k in ("estimate", "low", "high"))
  yerr = None if low is None or math.isnan(low) else [[estimate - low],
                                                       [high - estimate]]
  ax.errorbar(x, estimate, yerr=yerr, fmt="o", capsize=4, ms=6, **style)


def plot(report: Mapping[str, Any], path: Path) -> None:
  """poster.png: the classifiers (top) and differences (bottom) against r."""
  groups = report["groups"]
  fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True,
                           squeeze=False)
  ticks = [f"{g['label']}\nn={g['subjects']} ({g['bad']} bad)"
           for g in groups]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for row, names in enumerate((CLASSIFIERS, JOINT_DIFFERENCES)):
    for ax, (metric, label) in zip(axes[row], METRIC_LABELS.items()):
      for k, name in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * 0.15
        for i, group in enumerate(groups):
          found = group["intervals"].get(name)
          # Differences in colours of their own, not their classifiers'.
          _errorbar(ax, i + offset, found and found[metric],
                    color=colors[k + len(CLASSIFIERS) * row], label=name)
      if row:
        ax.axhline(0, color="0.4", lw=1)
      ax.set_xticks(range(len(groups)), ticks, fontsize=8)
      ax.set_xlim(-0.5, max(len(groups), 1) - 0.5)
      ax.set_title(label + (" difference" if row else ""))
      ax.grid(axis="y", alpha=0.3)
  for row in range(2):
    handles, labels = [], []
    for ax in axes[row]:
      for handle, text in zip(*ax.get_legend_handles_labels()):
        if text not in labels:
          handles.append(handle)
          labels.append(text)
    axes[row, 0].legend(handles, labels, fontsize=8, loc="lower left")
  fig.suptitle(
      "Hand function: joint model vs logistic regression on the masks "
      f"(points: pooled over the test subjects; bars: paired bootstrap "
      f"{report['confidence']:.0%} intervals, {report['resamples']} "
      "resamples)", fontsize=10)
  figures.save_png(fig, path, dpi=110, tight=False)

