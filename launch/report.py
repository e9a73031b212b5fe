"""Summarises a sweep over r: ROOT/report.md, report.csv and report.png.

Usage:
  python -m launch.report --workdir=ROOT [--baseline=PATH.json]

Points (ROOT/sweep.json) are grouped by r; per r the table gives how many
points finished, and the mean ± sample standard deviation (ddof=1) across
folds/seeds of the test Dice, VOE, lesion-wise F1 and, for r > 0, the
hand-function accuracy, F1 and AUC. Points without results.json are named in
the table and in a section of their own (failed, with their exit status, or
not run yet / still running). Baseline rows come from ROOT/baseline.json or
--baseline: {"rows": [{"name", "accuracy_mean", "accuracy_std", "f1_mean",
"f1_std", "auc_mean", "auc_std"}, ...]}.
"""

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app
from absl import flags
import matplotlib.pyplot as plt
import numpy as np

from launch import sweep_points
from preprocessing.io import figures
from preprocessing.io import tables
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json
from pvl_jax.evaluation import summary

FLAGS = flags.FLAGS

BASELINE_FILE = "baseline.json"
NA = "n/a"  # a metric the results do not hold (older results.json)
NONE = "—"  # a metric that does not exist for the row (cls at r = 0)


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str  # in results["test"]
  label: str
  short: str  # CSV column prefix, baseline key prefix for cls metrics
  cls: bool  # hand-function metric: absent for r = 0


METRICS = (Metric("dice_mean", "Dice", "dice", False),
           Metric("voe_mean", "VOE", "voe", False),
           Metric("lesion_f1_mean", "lesion F1", "lesion_f1", False),
           Metric("cls_accuracy", "accuracy", "accuracy", True),
           Metric("cls_f1", "F1", "f1", True),
           Metric("cls_auc", "AUC", "auc", True))


@dataclasses.dataclass(frozen=True)
class PointResult:
  """A point of the sweep and what its workdir holds."""
  name: str
  r: float
  state: str  # "finished", "failed" or "missing"
  returncode: int | None  # of the last attempt, when known
  test: dict[str, Any] | None  # results["test"] when finished

  def describe(self) -> str:
    if self.state == "failed":
      return f"failed (exit {self.returncode})"
    if self.state == "missing":
      return "no results.json (not run yet, or still running)"
    return "finished"


@dataclasses.dataclass(frozen=True)
class Group:
  """The points of one r value."""
  r: float
  points: list[PointResult]
  stats: dict[str, summary.Summary]  # metric key -> over finished points

  @property
  def finished(self) -> list[PointResult]:
    return [p for p in self.points if p.state == "finished"]

  @property
  def unfinished(self) -> list[PointResult]:
    return [p for p in self.points if p.state != "finished"]


def collect(root: Path) -> list[PointResult]:
  """Reads sweep.json and each point's results.json / exit status."""
  points = []
  for point in sweep_points.load_sweep(root)["points"]:
    if "r" not in point.overrides:
      raise InputError(f"{root / sweep_points.SWEEP_FILE}: point {point.name} "
                       "sets "
                       "no 'r'; the report groups points by r")
    workdir = root / point.name
    status_path = workdir / sweep_points.STATUS_FILE
    returncode = (read_json(status_path)["returncode"]
                  if status_path.exists() else None)
    if (workdir / sweep_points.RESULTS_FILE).exists():
      test = read_json(workdir / sweep_points.RESULTS_FILE)["test"]
      state = "finished"
    else:
      test = None
      state = "failed" if returncode not in (None, 0) else "missing"
    points.append(PointResult(point.name, float(point.overrides["r"]), state,
                              returncode, test))
  return points


def summarize(points: Sequence[PointResult]) -> list[Group]:
  """Groups points by r (ascending) with mean/std of each metric."""
  groups = []
  for r in sorted({p.r for p in points}):
    members = [p for p in points if p.r == r]
    stats = {}
    for metric in METRICS:
      values = [p.test[metric.key] for p in members
                if p.test is not None and metric.key in p.test]
      stats[metric.key] = summary.summarize(values)
    groups.append(Group(r, members, stats))
  return groups


def load_baseline(path: Path) -> list[dict[str, Any]]:
  """The baseline rows, each with a name and mean/std per cls metric."""
  rows = read_json(path)
  if not isinstance(rows, dict) or not isinstance(rows.get("rows"), list):
    raise InputError(f"{path}: expected {{\"rows\": [...]}}")
  for i, row in enumerate(rows["rows"]):
    needed = ["name"] + [f"{m.short}_{s}" for m in METRICS if m.cls
                         for s in ("mean", "std")]
    missing = [k for k in needed if k not in row]
    if missing:
      raise InputError(f"{path}: rows[{i}] has no {', '.join(missing)}")
  return rows["rows"]


def _r_label(r: float) -> str:
  return f"{r:g}"


def _cell(stat: summary.Summary, group: Group, metric: Metric) -> str:
  if metric.cls and group.r == 0:
    return NONE
  if stat.n == 0:
    return NA
  text = summary.format_mean_std(stat.mean, stat.std)
  if stat.n < len(group.finished):  # some results.json lack the metric
    text += f" (n={stat.n})"
  return text


def _baseline_cell(row: dict[str, Any], metric: Metric) -> str:
  if not metric.cls:
    return NONE
  return summary.format_mean_std(row[f"{metric.short}_mean"],
                                 row[f"{metric.short}_std"])


def markdown(root: Path, groups: Sequence[Group],
             baseline: Sequence[dict[str, Any]]) -> str:
  """report.md: summary per r, baseline rows, unfinished points, all points."""
  labels = [m.label for m in METRICS]
  rows = []
  for g in groups:
    missing = ", ".join(p.name for p in g.unfinished) or ""
    rows.append([_r_label(g.r), f"{len(g.finished)}/{len(g.points)}",
                 *(_cell(g.stats[m.key], g, m) for m in METRICS), missing])
  for row in baseline:
    rows.append([f"baseline: {row['name']}", NONE,
                 *(_baseline_cell(row, m) for m in METRICS), ""])
  points = [p for g in groups for p in g.points]
  lines = [f"# Sweep report: {root}", "",
           "Test split; mean ± sample std (ddof=1) across folds/seeds. "
           f"{NONE}: not applicable (no hand-function head at r = 0), "
           f"{NA}: not in results.json.", "",
           tables.markdown_table(["r", "finished", *labels, "missing"], rows)]
  unfinished = [p for p in points if p.state != "finished"]
  lines += ["## Missing or failed points", ""]
  if unfinished:
    lines += [f"- `{p.name}`: {p.describe()}; log: "
              f"{root / p.name / sweep_points.LOG_FILE}" for p in unfinished]
  else:
    lines.append(f"All {len(points)} points finished.")
  point_rows = []
  for p in points:
    values = []
    for m in METRICS:
      if m.cls and p.r == 0:
        values.append(NONE)
      elif p.test is None:
        values.append("")
      else:
        values.append(f"{p.test[m.key]:.3f}" if m.key in p.test else NA)
    point_rows.append([f"`{p.name}`", p.describe(), *values])
  lines += ["", "## Points", "",
            tables.markdown_table(["point", "status", *labels], point_rows)]
  return "\n".join(lines)


def csv_text(groups: Sequence[Group],
             baseline: Sequence[dict[str, Any]]) -> str:
  """report.csv: one row per r and per baseline; empty cells = no value."""
  def number(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else repr(float(x))

  rows = []
  for g in groups:
    row = {"name": f"r={_r_label(g.r)}", "r": repr(g.r),
           "finished": len(g.finished), "expected": len(g.points),
           "missing": ";".join(p.name for p in g.unfinished)}
    for m in METRICS:
      row[f"{m.short}_mean"] = number(g.stats[m.key].mean)
      row[f"{m.short}_std"] = number(g.stats[m.key].std)
    rows.append(row)
  for baseline_row in baseline:
    row = {"name": f"baseline: {baseline_row['name']}"}
    for m in METRICS:
      if m.cls:
        row[f"{m.short}_mean"] = number(baseline_row[f"{m.short}_mean"])
        row[f"{m.short}_std"] = number(baseline_row[f"{m.short}_std"])
    rows.append(row)
  columns = ["name", "r", "finished", "expected", "missing",
             *(f"{m.short}_{s}" for m in METRICS for s in ("mean", "std"))]
  return tables.csv_text(rows, columns)


def plot(groups: Sequence[Group], baseline: Sequence[dict[str, Any]],
         path: Path) -> None:
  """report.png: each metric against r (categorical axis: r includes 0).

  Means with ±std error bars, the individual folds/seeds as dots, baselines
  as horizontal lines with a ±std band on the hand-function panels.
  """
  fig, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
  x = np.arange(len(groups))
  ticks = [f"{_r_label(g.r)}\n{len(g.finished)}/{len(g.points)}"
           for g in groups]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, metric in zip(axes.flat, METRICS):
    rng = np.random.default_rng(0)  # the same jitter in every panel
    for i, g in enumerate(groups):
      if metric.cls and g.r == 0:
        continue
      values = [p.test[metric.key] for p in g.finished
                if metric.key in p.test]
      ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=14,
                 color="0.6", zorder=2)
      stat = g.stats[metric.key]
      if stat.n:
        ax.errorbar(i, stat.mean, yerr=None if math.isnan(stat.std)
                    else stat.std, fmt="o", color=colors[0], ms=7, capsize=5,
                    lw=2, zorder=3)
    if metric.cls:
      for row, color in zip(baseline, colors[1:]):
        mean, std = row[f"{metric.short}_mean"], row[f"{metric.short}_std"]
        if mean is None:
          continue
        ax.axhline(mean, color=color, ls="--", lw=1.5, label=row["name"])
        if std is not None:
          ax.axhspan(mean - std, mean + std, color=color, alpha=0.15, lw=0)
      if groups and groups[0].r == 0:
        ax.text(0, 0.5, "no head\nat r = 0", transform=ax.get_xaxis_transform(),
                ha="center", va="center", color="0.5", fontsize=9)
    ax.set_xticks(x, ticks)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_title(f"test {metric.label}" + (" (hand function)" if metric.cls
                                          else " (lesions)"))
    ax.set_xlabel("r   (finished / expected points)")
    ax.grid(axis="y", alpha=0.3)
  handles, labels = axes[1, 0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, [f"baseline: {l} (± std)" for l in labels],
               loc="outside lower center", ncols=min(len(handles), 3))
  fig.suptitle("L = r·L_cls + L_seg: mean ± std across folds/seeds "
               "(dots: individual runs)")
  figures.save_png(fig, path, dpi=110, tight=False)


def write_report(root: Path, baseline_path: Path | None = None
                 ) -> dict[str, Path]:
  """Writes report.md, report.csv and report.png under `root`."""
  groups = summarize(collect(root))
  if baseline_path is None and (root / BASELINE_FILE).exists():
    baseline_path = root / BASELINE_FILE
  if baseline_path is not None and not baseline_path.exists():
    raise InputError(f"{baseline_path}: not found")
  baseline = load_baseline(baseline_path) if baseline_path else []
  paths = {ext: root / f"report.{ext}" for ext in ("md", "csv", "png")}
  atomic_write_text(paths["md"], markdown(root, groups, baseline))
  atomic_write_text(paths["csv"], csv_text(groups, baseline))
  plot(groups, baseline, paths["png"])
  return paths


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    paths = write_report(Path(FLAGS.workdir),
                         Path(FLAGS.baseline) if FLAGS.baseline else None)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(paths["md"].read_text())
  print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _define_flags() -> None:
  """Defined here, not at import, so tests can import several CLIs."""
  flags.DEFINE_string("workdir", None, "Sweep root (holds sweep.json).",
                      required=True)
  flags.DEFINE_string("baseline", None, "Baseline rows JSON; default "
                      f"WORKDIR/{BASELINE_FILE} when it exists.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
