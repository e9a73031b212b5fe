"""launch.report on fabricated sweeps: aggregates, missing points, baseline."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from launch import report
from launch import sweep_points

R_VALUES = (0.0, 0.3, 1.0)
FOLDS = (0, 1, 2)


def _test_metrics(r, fold, lesion_f1=True):
  """Distinct, reproducible metric values for one point."""
  metrics = {"dice_mean": 0.5 + 0.1 * r + 0.01 * fold,
             "voe_mean": 0.4 - 0.05 * r + 0.02 * fold}
  if lesion_f1:
    metrics["lesion_f1_mean"] = 0.6 + 0.03 * fold
  if r > 0:
    metrics.update(cls_accuracy=0.7 + 0.05 * fold, cls_f1=0.6 + 0.1 * fold,
                   cls_auc=0.8 - 0.02 * fold * r)
  return metrics


def fabricate(root, skip=(), fail=(), lesion_f1=True):
  """A sweep of R_VALUES x FOLDS; `skip`/`fail` are (r, fold) without results."""
  overrides = [{"r": r, "data.fold": fold, "seed": 0}
               for fold in FOLDS for r in R_VALUES]
  points = sweep_points.make_points(overrides, "configs/joint.py", root, {})
  sweep_points.write_sweep_json(root, points, "configs/joint.py", None, {}, root)
  for point in points:
    key = (point.overrides["r"], point.overrides["data.fold"])
    workdir = root / point.name
    workdir.mkdir()
    if key in fail:
      (workdir / sweep_points.STATUS_FILE).write_text('{"returncode": 3}')
    elif key not in skip:
      results = {"val": {}, "test": _test_metrics(*key, lesion_f1=lesion_f1)}
      (workdir / sweep_points.RESULTS_FILE).write_text(json.dumps(results))
  return root


def _group(groups, r):
  return next(g for g in groups if g.r == r)


def test_aggregates_match_numpy(tmp_path):
  groups = report.summarize(report.collect(fabricate(tmp_path)))
  assert [g.r for g in groups] == list(R_VALUES)
  for r in (0.3, 1.0):
    g = _group(groups, r)
    for key in ("dice_mean", "voe_mean", "lesion_f1_mean", "cls_accuracy",
                "cls_f1", "cls_auc"):
      values = [_test_metrics(r, f)[key] for f in FOLDS]
      assert g.stats[key].mean == pytest.approx(np.mean(values))
      assert g.stats[key].std == pytest.approx(np.std(values, ddof=1))
      assert g.stats[key].n == 3


def test_r_zero_has_no_classification_numbers(tmp_path):
  root = fabricate(tmp_path)
  groups = report.summarize(report.collect(root))
  assert _group(groups, 0.0).stats["cls_auc"].n == 0
  report.write_report(root)
  rows = list(csv.DictReader((root / "report.csv").open()))
  assert rows[0]["name"] == "r=0" and rows[0]["auc_mean"] == ""
  assert rows[0]["dice_mean"] != ""
  md = (root / "report.md").read_text()
  r0_line = next(l for l in md.splitlines() if l.startswith("| 0 |"))
  assert r0_line.count(report.NONE) == 3


def test_missing_and_failed_points_are_named(tmp_path):
  root = fabricate(tmp_path, skip={(0.3, 1)}, fail={(1.0, 2)})
  groups = report.summarize(report.collect(root))
  g = _group(groups, 0.3)
  assert (len(g.finished), len(g.points)) == (2, 3)
  values = [_test_metrics(0.3, f)["dice_mean"] for f in (0, 2)]
  assert g.stats["dice_mean"].mean == pytest.approx(np.mean(values))
  report.write_report(root)
  md = (root / "report.md").read_text()
  assert "| 0.3 | 2/3 |" in md
  assert "`r=0.3_fold=1_seed=0`: no results.json" in md
  assert "`r=1.0_fold=2_seed=0`: failed (exit 3)" in md
  rows = {row["name"]: row for row in csv.DictReader((root / "report.csv").open())}
  assert rows["r=0.3"]["missing"] == "r=0.3_fold=1_seed=0"
  assert rows["r=1"]["missing"] == "r=1.0_fold=2_seed=0"
  assert (rows["r=1"]["finished"], rows["r=1"]["expected"]) == ("2", "3")


def test_absent_lesion_f1_is_na(tmp_path):
  root = fabricate(tmp_path, lesion_f1=False)
  report.write_report(root)
  md = (root / "report.md").read_text()
  line = next(l for l in md.splitlines() if l.startswith("| 0.3 |"))
  assert line.split(" | ")[4] == report.NA  # r, finished, Dice, VOE, F1


def test_baseline_rows_and_png(tmp_path):
  root = fabricate(tmp_path)
  baseline = {"rows": [{"name": "lesion volume LR", "accuracy_mean": 0.65,
                        "accuracy_std": 0.05, "f1_mean": 0.5, "f1_std": 0.1,
                        "auc_mean": 0.7, "auc_std": 0.08}]}
  (root / report.BASELINE_FILE).write_text(json.dumps(baseline))
  paths = report.write_report(root)
  md = paths["md"].read_text()
  assert "| baseline: lesion volume LR |" in md
  assert "0.650 ± 0.050" in md
  rows = list(csv.DictReader(paths["csv"].open()))
  assert rows[-1]["name"] == "baseline: lesion volume LR"
  assert float(rows[-1]["auc_std"]) == pytest.approx(0.08)
  png = paths["png"].read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_cli_errors_and_output(tmp_path, request):
  def run(*args):
    return subprocess.run([sys.executable, "-m", "launch.report", *args],
                          capture_output=True, text=True, timeout=120,
                          cwd=request.config.rootpath)

  result = run(f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert result.stderr.startswith(f"error: {tmp_path / 'sweep.json'}: not found")
  assert "Traceback" not in result.stderr
  fabricate(tmp_path)
  (tmp_path / "bad.json").write_text('{"rows": [{"name": "x"}]}')
  result = run(f"--workdir={tmp_path}", f"--baseline={tmp_path / 'bad.json'}")
  assert result.returncode == 2
  assert "rows[0] has no accuracy_mean" in result.stderr
  result = run(f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "report.png").exists()
