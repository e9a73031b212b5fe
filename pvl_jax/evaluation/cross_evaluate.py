"""Each group's models on every group's test data: is a gap the model or data?

  python -m pvl_jax.evaluation.cross_evaluate \
      --runs=template=RUN_A0,template=RUN_A1,raw=RUN_B0,raw=RUN_B1 --out=DIR

Runs are grouped by name (e.g. training seeds of one setting). Every run's
model segments the test split of every group's data (the cohort its first
run's config names, prepared as that run prepared it) and the table gives,
per (model group, data group), the mean and standard deviation over the
group's runs of the per-subject mean Dice, without postprocessing. When
models trained on A score on B's test data as B's own models do, B's test
data is harder and training on B is not what costs the Dice.

Writes DIR/cross_evaluation.md and DIR/cross_evaluation.csv.
"""

import sys
from pathlib import Path

from absl import app
from absl import flags

from preprocessing.io import tables
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.evaluation import compare
from pvl_jax.evaluation import evaluate_run
from pvl_jax.evaluation import summary
from pvl_jax.inference import trained_run


def parse_groups(spec: str) -> dict[str, list[Path]]:
  """Parses `name=dir,name=dir2,other=dir3` into runs per group, in order.

  Raises:
    InputError: on a malformed entry, a run given twice or no run.
  """
  groups: dict[str, list[Path]] = {}
  for name, directory in compare.parse_named_runs(spec):
    if any(directory in runs for runs in groups.values()):
      raise InputError(f"--runs: {directory} given twice")
    groups.setdefault(name, []).append(directory)
  return groups


def cross_dice(groups: dict[str, list[Path]]
               ) -> dict[tuple[str, str], list[float]]:
  """Test Dice of every run's model on every group's test split.

  Args:
    groups: run directories per group name (`parse_groups`).

  Returns:
    (model group, data group) -> the per-subject mean Dice of each of the
    model group's runs, in order.

  Raises:
    InputError: a run cannot be loaded, or groups' inputs differ (input
      channels or template spacing), so one's model cannot read another's
      data.
  """
  runs = {group: [trained_run.load(d) for d in dirs]
          for group, dirs in groups.items()}
  first = {group: group_runs[0] for group, group_runs in runs.items()}
  reference = next(iter(first.values()))
  for group, group_runs in runs.items():
    for directory, run in zip(groups[group], group_runs):
      if (run.modalities, run.template_spacing) != (
          reference.modalities, reference.template_spacing):
        raise InputError(
            f"{directory}: inputs {run.modalities} at "
            f"{run.template_spacing} mm differ from the first run's "
            f"{reference.modalities} at {reference.template_spacing} mm")
  tests = {group: dataset.split_sources(dataset.prepare(run.config),
                                        run.config)["test"]
           for group, run in first.items()}
  dice: dict[tuple[str, str], list[float]] = {}
  for model_group, group_runs in runs.items():
    for run in group_runs:
      for data_group, source in tests.items():
        split = evaluate_run.predict_split(run.window_fn, source, run.config,
                                       f"{data_group} test")
        dice.setdefault((model_group, data_group), []).append(
            evaluate_run.segmentation_results(split)["dice_mean"])
  return dice


def to_rows(dice: dict[tuple[str, str], list[float]]) -> list[dict[str, str]]:
  """One row per model group: "mean ± std (n)" per data group."""
  rows: dict[str, dict[str, str]] = {}
  for (model_group, data_group), values in dice.items():
    stats = summary.summarize(values)
    rows.setdefault(model_group, {"model": model_group})[
        data_group] = (f"{summary.format_mean_std(stats.mean, stats.std)} "
                       f"({stats.n})")
  return list(rows.values())


def to_markdown(rows: list[dict[str, str]]) -> str:
  """The table, models down, test data across."""
  columns = list(rows[0])
  return tables.markdown_table(["model \\ test data"] + columns[1:],
                               [[row[c] for c in columns] for row in rows])


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    rows = to_rows(cross_dice(parse_groups(FLAGS.runs)))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  tables.write_table(Path(FLAGS.out), "cross_evaluation", rows,
                     to_markdown(rows))


if __name__ == "__main__":
  flags.DEFINE_string("runs", None, "NAME=RUN_DIR,... of finished runs; "
                      "runs sharing a name form a group.", required=True)
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  app.run(main)
