"""Poster-style comparison of trained runs (e.g. 2D vs 3D U-Net).

  python -m pvl_jax.evaluation.compare --runs=2D=/runs/unet2d,3D=/runs/unet3d --out=DIR

Reads each run's results.json, checks that all runs were tested on the same
subjects, and writes DIR/comparison.md and DIR/comparison.csv: Dice and VOE
(in percent, per-subject means as the poster reports them) plus HD95, volume
difference, lesion-wise recall/F1 and the pooled recall per lesion-size bin,
which shows the small-lesion weakness.
"""

import sys
from pathlib import Path
from typing import Any

from absl import app
from absl import flags

from preprocessing.io import tables
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json
from pvl_jax.evaluation import lesions

# (column title, results key, scale) for the headline columns.
COLUMNS = (
    ("Dice (%)", "dice_mean", 100.0),
    ("VOE (%)", "voe_mean", 100.0),
    ("HD95 (mm)", "hd95_mm_mean", 1.0),
    ("AVD (%)", "avd_pct_mean", 1.0),
    ("lesion recall", "lesion_recall_mean", 1.0),
    ("lesion F1", "lesion_f1_mean", 1.0),
)


def load_test_results(run_dir: Path) -> dict[str, Any]:
  """The "test" block of a run's results.json (InputError if unusable)."""
  path = run_dir / "results.json"
  results = read_json(path, "(has the run finished?)")
  try:
    return results["test"]
  except (KeyError, TypeError) as e:
    raise InputError(f"{path}: not a results.json with a 'test' block "
                     f"({e!r})") from None


def comparison_rows(runs: dict[str, Path]) -> list[dict[str, Any]]:
  """One row per run; raises InputError if the runs' test subjects differ."""
  rows, subjects = [], {}
  for name, run_dir in runs.items():
    test = load_test_results(run_dir)
    subjects[name] = sorted(r["subject_id"] for r in test["per_subject"])
    row = {"model": name, "n_subjects": len(subjects[name])}
    for title, key, scale in COLUMNS:
      value = test.get(key)
      row[title] = None if value is None else value * scale
    for label, _, _ in lesions.size_bins(test):
      row[f"recall {label}"] = test[f"size_{label}_recall"]
    rows.append(row)
  reference = next(iter(subjects.values()))
  for name, ids in subjects.items():
    if ids != reference:
      raise InputError(f"{runs[name] / 'results.json'}: tested on different "
                       f"subjects than {next(iter(runs))}; compare runs of the "
                       "same fold")
  return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
  """A markdown table of the rows (columns in order of first appearance)."""
  return tables.markdown_from_dicts(rows, lambda v: tables.format_cell(v, 2))


def parse_named_runs(spec: str) -> list[tuple[str, Path]]:
  """Parses `name=dir,name2=dir2` into (name, dir) pairs, in order.

  Raises:
    InputError: on a malformed entry or no entry at all.
  """
  pairs = []
  for item in filter(None, spec.split(",")):
    name, sep, directory = item.partition("=")
    if not sep or not name or not directory:
      raise InputError(f"--runs: '{item}' is not NAME=RUN_DIR")
    pairs.append((name, Path(directory)))
  if not pairs:
    raise InputError("--runs: no runs given")
  return pairs


FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    rows = comparison_rows(dict(parse_named_runs(FLAGS.runs)))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  tables.write_table(Path(FLAGS.out), "comparison", rows, to_markdown(rows))


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "NAME=RUN_DIR,... of finished runs.",
                      required=True)
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  app.run(main)
