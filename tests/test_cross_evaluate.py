"""Cross-evaluation of run groups on each other's test data."""

import json
from pathlib import Path
import shutil
import subprocess
import sys

import numpy as np
import pytest

from preprocessing.io import tables
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import cross_evaluate


def test_runs_are_grouped_by_name_in_order():
  groups = cross_evaluate.parse_groups("a=/r/1,b=/r/2,a=/r/3")
  assert groups == {"a": [Path("/r/1"), Path("/r/3")], "b": [Path("/r/2")]}


@pytest.mark.parametrize("spec, message", [
    ("", "no runs given"), ("a", "'a' is not NAME=RUN_DIR"),
    ("=/r", "'=/r' is not NAME=RUN_DIR"), ("a=/r,b=/r", "/r given twice"),
])
def test_bad_run_lists(spec, message):
  with pytest.raises(InputError, match=message):
    cross_evaluate.parse_groups(spec)


def test_table_holds_mean_and_sample_std_per_cell():
  dice = {("template", "template"): [0.9, 0.8, 0.85],
          ("template", "raw"): [0.7, 0.9, 0.8],
          ("raw", "template"): [0.6], ("raw", "raw"): [0.75]}
  rows = cross_evaluate.to_rows(dice)
  # Sample standard deviations by hand: sqrt(0.005 / 2) and sqrt(0.02 / 2).
  assert rows == [
      {"model": "template", "template": "0.850 ± 0.050 (3)",
       "raw": "0.800 ± 0.100 (3)"},
      {"model": "raw", "template": "0.600 (1)", "raw": "0.750 (1)"}]
  lines = cross_evaluate.to_markdown(rows).splitlines()
  assert lines[0] == "| model \\ test data | template | raw |"
  # One run: no spread to show (sample std undefined), not "± 0.000".
  assert lines[3] == "| raw | 0.600 (1) | 0.750 (1) |"
  assert tables.csv_text(rows).splitlines()[0] == "model,template,raw"


def _copy_run(run: Path, to: Path, **data_changes) -> Path:
  shutil.copytree(run, to)
  config = json.loads((to / "config.json").read_text())
  config["data"].update(data_changes)
  (to / "config.json").write_text(json.dumps(config))
  return to


def test_every_model_on_every_groups_test_split(tiny_run, tmp_path,
                                                monkeypatch):
  workdir, cache, results = tiny_run
  monkeypatch.setenv("PVL_JAX_CACHE", str(cache))
  other = _copy_run(workdir, tmp_path / "copy")
  dice = cross_evaluate.cross_dice({"a": [workdir], "b": [other]})
  assert sorted(dice) == [("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
  # The same model on the same data: every cell is the run's own test Dice
  # (the tiny run's validation chose no postprocessing, so evaluation saw
  # the same masks).
  assert results["postprocessing"]["min_component_voxels"] == 0
  values = [v for cell in dice.values() for v in cell]
  np.testing.assert_allclose(values, results["test"]["dice_mean"], rtol=1e-6)


def test_groups_whose_inputs_differ_are_refused(tiny_run, tmp_path):
  workdir, _, _ = tiny_run
  other = _copy_run(workdir, tmp_path / "t1w", modalities=["T1w"])
  with pytest.raises(InputError, match=r"t1w: inputs \('T1w',\) at .* differ"
                     r" from the first run's \('FLAIR',\)"):
    cross_evaluate.cross_dice({"a": [workdir], "b": [other]})


def test_cli_error_names_the_missing_run(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "pvl_jax.evaluation.cross_evaluate",
       f"--runs=a={tmp_path / 'nope'}", f"--out={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert f"error: {tmp_path / 'nope'}: run directory does not exist" in (
      result.stderr)
  assert not (tmp_path / "out").exists()
