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

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from launch import sweep
from preprocessing.io.atomic import atomic_write_bytes, atomic_write_text
from preprocessing.io.errors import InputError

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
class Stat:
  mean: float
  std: float  # nan for a single value
  n: int


@dataclasses.dataclass(frozen=True)
class Group:
  """The points of one r value."""
  r: float
  points: list[PointResult]
  stats: dict[str, Stat | None]  # metric key -> None: no values

  @property
  def finished(self) -> list[PointResult]:
    return [p for p in self.points if p.state == "finished"]

  @property
  def unfinished(self) -> list[PointResult]:
    return [p for p in self.points if p.state != "finished"]


def _read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise InputError(f"{path}: not valid JSON ({e})") from None


def collect(root: Path) -> list[PointResult]:
  """Reads sweep.json and each point's results.json / exit status."""
  points = []
  for point in sweep.load_sweep(root)["points"]:
    if "r" not in point.overrides:
      raise InputError(f"{root / sweep.SWEEP_FILE}: point {point.name} sets "
                       "no 'r'; the report groups points by r")
    workdir = root / point.name
    status_path = workdir / sweep.STATUS_FILE
    returncode = (_read_json(status_path)["returncode"]
                  if status_path.exists() else None)
    if (workdir / sweep.RESULTS_FILE).exists():
      test = _read_json(workdir / sweep.RESULTS_FILE)["test"]
      state = "finished"
    else:
      test = None
      state = "failed" if returncode not in (None, 0) else "missing"
    points.append(PointResult(point.name, float(point.overrides["r"]), state,
                              returncode, test))
  return points


def _stat(values: Sequence[float]) -> Stat | None:
  if not values:
    return None
  std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
  return Stat(float(np.mean(values)), std, len(values))


def summarize(points: Sequence[PointResult]) -> list[Group]:
  """Groups points by r (ascending) with mean/std of each metric."""
  groups = []
  for r in sorted({p.r for p in points}):
    members = [p for p in points if p.r == r]
    stats = {}
    for metric in METRICS:
      values = [p.test[metric.key] for p in members
                if p.test is not None and metric.key in p.test]
      stats[metric.key] = _stat(values)
    groups.append(Group(r, members, stats))
  return groups


def load_baseline(path: Path) -> list[dict[str, Any]]:
  """The baseline rows, each with a name and mean/std per cls metric."""
  rows = _read_json(path)
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


def _cell(stat: Stat | None, group: Group, metric: Metric) -> str:
  if metric.cls and group.r == 0:
    return NONE
  if stat is None:
    return NA
  text = f"{stat.mean:.3f}"
  if not math.isnan(stat.std):
    text += f" ± {stat.std:.3f}"
  if stat.n < len(group.finished):  # some results.json lack the metric
    text += f" (n={stat.n})"
  return text


def _baseline_cell(row: dict[str, Any], metric: Metric) -> str:
  if not metric.cls:
    return NONE
  mean, std = row[f"{metric.short}_mean"], row[f"{metric.short}_std"]
  if mean is None:
    return NA
  return f"{mean:.3f}" + ("" if std is None else f" ± {std:.3f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(" --- " for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


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
           *_table(["r", "finished", *labels, "missing"], rows), ""]
  unfinished = [p for p in points if p.state != "finished"]
  lines += ["## Missing or failed points", ""]
  if unfinished:
    lines += [f"- `{p.name}`: {p.describe()}; log: "
              f"{root / p.name / sweep.LOG_FILE}" for p in unfinished]
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
            *_table(["point", "status", *labels], point_rows), ""]
  return "\n".join(lines)


def csv_text(groups: Sequence[Group],
             baseline: Sequence[dict[str, Any]]) -> str:
  """report.csv: one row per r and per baseline; empty cells = no value."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["name", "r", "finished", "expected", "missing",
                   *(f"{m.short}_{s}" for m in METRICS
                     for s in ("mean", "std"))])

  def number(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else repr(float(x))

  for g in groups:
    values = []
    for m in METRICS:
      stat = g.stats[m.key]
      values += ([number(stat.mean), number(stat.std)] if stat else ["", ""])
    writer.writerow([f"r={_r_label(g.r)}", repr(g.r), len(g.finished),
                     len(g.points), ";".join(p.name for p in g.unfinished),
                     *values])
  for row in baseline:
    values = []
    for m in METRICS:
      values += ([number(row[f"{m.short}_mean"]), number(row[f"{m.short}_std"])]
                 if m.cls else ["", ""])
    writer.writerow([f"baseline: {row['name']}", "", "", "", "", *values])
  return out.getvalue()


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
      if stat is not None:
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
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  atomic_write_bytes(path, buffer.getvalue())


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
