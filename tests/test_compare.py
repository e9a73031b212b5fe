"""The 2D-vs-3D comparison table."""

import json
import subprocess
import sys

import pytest

from preprocessing.io.errors import InputError
from pvl_jax.evaluation import compare


def _run(tmp_path, name, dice, subjects=("sub-001", "sub-002")):
  run = tmp_path / name
  run.mkdir()
  test = {"dice_mean": dice, "voe_mean": 1 - dice / (2 - dice),
          "hd95_mm_mean": 3.0, "avd_pct_mean": 10.0,
          "lesion_recall_mean": 0.5, "lesion_f1_mean": 0.6,
          "size_0-0.05ml_recall": 0.25, "size_0-0.05ml_n_ref": 4,
          "size_0-0.05ml_n_detected": 1,
          "per_subject": [{"subject_id": s} for s in subjects]}
  (run / "results.json").write_text(json.dumps({"test": test}))
  return run


def test_rows_in_poster_units(tmp_path):
  rows = compare.comparison_rows({"2D": _run(tmp_path, "a", 0.7),
                                  "3D": _run(tmp_path, "b", 0.8)})
  assert rows[1]["Dice (%)"] == pytest.approx(80.0)
  assert rows[1]["VOE (%)"] == pytest.approx(100 * (1 - 0.8 / 1.2))
  assert rows[0]["recall 0-0.05ml"] == 0.25
  table = compare.to_markdown(rows)
  assert table.splitlines()[0].startswith("| model | n_subjects | Dice (%)")
  assert "| 3D | 2 | 80.00 |" in table


def test_different_test_subjects_are_rejected(tmp_path):
  with pytest.raises(InputError, match="different subjects"):
    compare.comparison_rows({
        "2D": _run(tmp_path, "a", 0.7),
        "3D": _run(tmp_path, "b", 0.8, subjects=("sub-003", "sub-004"))})


def test_cli_writes_md_and_csv_and_rejects_missing_run(tmp_path):
  a, b = _run(tmp_path, "a", 0.7), _run(tmp_path, "b", 0.8)
  ok = subprocess.run([sys.executable, "-m", "pvl_jax.evaluation.compare",
                       f"--runs=2D={a},3D={b}", f"--out={tmp_path / 'o'}"],
                      capture_output=True, text=True, timeout=60)
  assert ok.returncode == 0, ok.stderr
  assert (tmp_path / "o" / "comparison.csv").read_text().startswith("model,")
  bad = subprocess.run([sys.executable, "-m", "pvl_jax.evaluation.compare",
                        f"--runs=2D={tmp_path / 'nope'}",
                        f"--out={tmp_path / 'p'}"],
                       capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2
  assert "results.json: not found" in bad.stderr
  assert not (tmp_path / "p").exists()
