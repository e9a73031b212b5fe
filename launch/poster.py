"""The poster's comparison: the joint model against logistic regression.

Usage:
  python -m launch.poster --workdir=SWEEP_ROOT --cohort=COHORT \
      [--resamples=2000] [--seed=0] [--downsample=2,3,4,6] [--inner_repeats=2]

Per r of a sweep (ROOT/sweep.json; points that differ in anything but
data.fold form one group, e.g. one r and seed), on the subjects of its
finished runs' test splits and with those splits as the outer folds:

  * "joint": the joint model's hand-function probability of each test
    subject (results.json, test.per_subject[].hand_function_prob; r > 0),
    decided at its run's validation-chosen threshold (test.cls_threshold);
  * "LR predicted": the poster's baseline, logistic regression on the masks
    in matrix form, on the cross-fitted masks that the group's own runs
    predicted (`pvl_jax.handfunction.crossfit` refuses any leak);
  * "LR reference": the same on the cohort's reference masks;
  * "LR reference, train split": the same, each fold's model trained on its
    run's train split alone: the subjects the joint model trained on (the
    other rows' models also train on the runs' validation splits).

Accuracy, F1 and AUC are pooled over the group's subjects, with paired
bootstrap 95% intervals (`pvl_jax.evaluation.bootstrap`: subjects resampled
--resamples times, seed --seed) of each value and of the differences joint
minus each baseline. Writes ROOT/poster.md (also printed), poster.json and
poster.png (both classifiers against r with the intervals). Bad input:
`error: <file>: <problem>` on stderr, exit status 2, nothing written.
"""

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from launch import poster_figure
from launch import sweep_points
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import json_number
from preprocessing.io.json_files import read_json
from pvl_jax.evaluation import bootstrap
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import crossfit
from pvl_jax.handfunction import nested_cv

FLAGS = flags.FLAGS

JOINT, PREDICTED, REFERENCE, REFERENCE_TRAIN = poster_figure.CLASSIFIERS
FOLD_KEY = "data.fold"


@dataclasses.dataclass(frozen=True)
class Group:
  """The points of one setting (one r, seed, ...) across folds."""
  label: str
  r: float
  finished: list[Path]
  unfinished: list[str]


def groups_of(root: Path) -> list[Group]:
  """The sweep's points grouped by every override but the fold, by r."""
  points = sweep_points.load_sweep(root)["points"]
  keys = {}
  for point in points:
    if "r" not in point.overrides:
      raise InputError(f"{root / sweep_points.SWEEP_FILE}: point "
                       f"{point.name} sets no 'r'")
    key = tuple(sorted((k, json.dumps(v)) for k, v in point.overrides.items()
                       if k != FOLD_KEY))
    keys.setdefault(key, []).append(point)
  # Only what varies between groups names them, r first.
  varying = {k for key in keys for k, v in key
             if any((k, v) not in other for other in keys)} - {"r"}
  groups = []
  for key, members in keys.items():
    r = float(members[0].overrides["r"])
    label = " ".join([f"r={r:g}"] + [f"{k}={json.loads(v)}" for k, v in key
                                     if k in varying])
    groups.append(Group(
        label, r,
        [root / p.name for p in members
         if sweep_points.is_finished(root, p.name)],
        [p.name for p in members
         if not sweep_points.is_finished(root, p.name)]))
  return sorted(groups, key=lambda g: (g.r, g.label))


def joint_predictions(run_dirs: Sequence[Path],
                      subjects: Sequence[str]) -> bootstrap.Prediction:
  """The joint model's probabilities and decisions of `subjects`.

  Raises:
    InputError: a results.json whose test subjects are not its splits.json's,
      or that lacks the per-subject probability or the threshold of a
      subject in `subjects`.
  """
  wanted = set(subjects)
  prob, decision = {}, {}
  for run_dir in run_dirs:
    path = run_dir / sweep_points.RESULTS_FILE
    test = read_json(path).get("test", {})
    rows = test.get("per_subject", [])
    if ({row.get("subject_id") for row in rows}
        != crossfit.read_run(run_dir).splits["test"]):
      raise InputError(f"{path}: test.per_subject does not hold exactly the "
                       f"test split of {run_dir / crossfit.SPLITS_FILE}")
    rows = [row for row in rows if row["subject_id"] in wanted]
    if rows and ("cls_threshold" not in test
                 or any("hand_function_prob" not in row for row in rows)):
      raise InputError(f"{path}: test has no per-subject hand_function_prob "
                       "and cls_threshold (a run with r = 0?)")
    for row in rows:
      prob[row["subject_id"]] = row["hand_function_prob"]
      decision[row["subject_id"]] = (row["hand_function_prob"]
                                     >= test["cls_threshold"])
  return bootstrap.Prediction(np.array([prob[s] for s in subjects]),
                              np.array([decision[s] for s in subjects]))


def _from_row(row: dict[str, Any],
              subjects: Sequence[str]) -> bootstrap.Prediction:
  """A baseline row's out-of-fold predictions (threshold 0.5)."""
  prob = {e["subject_id"]: e["prob"] for e in row["out_of_fold"]}
  values = np.array([prob[s] for s in subjects])
  return bootstrap.Prediction(values, values >= 0.5)


def compare_group(group: Group, cohort: Path, options: dict[str, Any],
                  reference_cache: dict[Any, dict[str, Any]]
                  ) -> dict[str, Any]:
  """The three classifiers on one group's subjects, with intervals."""
  reading = cohort_reading.of_runs(group.finished)
  subjects_all = reading.load(cohort)
  labels = {s.participant_id: s.hand_function for s in subjects_all
            if s.hand_function is not None}
  fit = crossfit.cross_fit(group.finished,
                           [s.participant_id for s in subjects_all],
                           list(labels), require_all=False)
  # The joint model's results are checked before the slower fits.
  joint = (joint_predictions(group.finished, fit.subjects) if group.r > 0
           else None)
  common = dict(downsample=options["downsample"], seed=options["seed"],
                inner_repeats=options["inner_repeats"],
                feature_sets=[baseline.PRIMARY], require_all=False,
                reading=reading)
  (predicted,) = baseline.run(cohort, group.finished, masks=["predicted"],
                              **common)["rows"]
  folds = tuple(sorted(fit.fold_of.items()))
  train_splits = tuple(sorted((run.fold, tuple(sorted(run.splits["train"])))
                              for run in fit.runs))
  predictions = {PREDICTED: _from_row(predicted, fit.subjects)}
  # The reference rows depend on the folds (and the train splits), and on
  # which masks are read (session, run, entity filter, ignore label,
  # threshold, label column): groups that read the cohort differently never
  # share them.
  for name, train_on, key in ((REFERENCE, "outer", (folds, reading)),
                              (REFERENCE_TRAIN, "runs",
                               (folds, train_splits, reading))):
    if key not in reference_cache:
      reference_cache[key] = baseline.run(
          cohort, group.finished, masks=["reference"], train_on=train_on,
          **common)["rows"][0]
    predictions[name] = _from_row(reference_cache[key], fit.subjects)
  if joint is not None:
    predictions = {JOINT: joint, **predictions}
  y = np.array([labels[s] for s in fit.subjects])
  intervals = bootstrap.paired_intervals(
      y, predictions, [p for p in poster_figure.PAIRS if p[0] in predictions],
      n_resamples=options["resamples"], seed=options["seed"])
  return {"label": group.label, "r": group.r,
          "runs": [str(d) for d in group.finished],
          "unfinished": group.unfinished,
          "folds": sorted({f for _, f in folds}),
          "unlabelled": sorted(s for run in fit.runs
                               for s in run.splits["test"]
                               if s not in labels),
          "subjects": len(y), "bad": int(y.sum()),
          "intervals": {name: {m: dataclasses.asdict(i)
                               for m, i in by_metric.items()}
                        for name, by_metric in intervals.items()}}


def _json_safe(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_json_safe(v) for v in value]
  return json_number(value) if isinstance(value, float) else value


def write_poster(root: Path, cohort: Path, options: dict[str, Any]
                 ) -> dict[str, Path]:
  """Computes every group's comparison, then writes the three files."""
  groups = groups_of(root)
  cache: dict[Any, dict[str, Any]] = {}
  results, skipped = [], []
  for group in groups:
    if len(group.finished) < 2:
      skipped.append(group)
      continue
    results.append(compare_group(group, cohort, options, cache))
  paths = {ext: root / f"poster.{ext}" for ext in ("md", "json", "png")}
  report = {"sweep": str(root), "cohort": str(cohort), **options,
            "confidence": bootstrap.CONFIDENCE, "groups": results,
            "skipped": [{"label": g.label, "finished": len(g.finished),
                         "unfinished": g.unfinished} for g in skipped]}
  text = poster_figure.markdown(report)
  poster_figure.plot(report, paths["png"])
  atomic_write_text(paths["json"], json.dumps(_json_safe(report), indent=2,
                                              allow_nan=False) + "\n")
  atomic_write_text(paths["md"], text)
  return paths


def _factors(values: Sequence[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise InputError(f"--downsample: expected integers, got {list(values)}"
                     ) from None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if FLAGS.resamples < bootstrap.MIN_RESAMPLES:
      raise InputError(f"--resamples: at least {bootstrap.MIN_RESAMPLES}, "
                       f"got {FLAGS.resamples}")
    options = {"resamples": FLAGS.resamples, "seed": FLAGS.seed,
               "downsample": _factors(FLAGS.downsample),
               "inner_repeats": FLAGS.inner_repeats}
    paths = write_poster(Path(FLAGS.workdir), Path(FLAGS.cohort), options)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(paths["md"].read_text())
  print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _define_flags() -> None:
  """Defined here, not at import, so tests can import several CLIs."""
  flags.DEFINE_string("workdir", None, "Sweep root (holds sweep.json).",
                      required=True)
  flags.DEFINE_string("cohort", None, "The sweep's BIDS cohort in template "
                      "space (participants.tsv, reference masks).",
                      required=True)
  flags.DEFINE_integer("resamples", bootstrap.RESAMPLES,
                       "Bootstrap resamples of the subjects.")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap and the inner "
                       "cross-validation.")
  flags.DEFINE_list("downsample", [str(f) for f in nested_cv.BLOCK_FACTORS],
                    "Block factors the baseline's inner CV chooses from.")
  flags.DEFINE_integer("inner_repeats", nested_cv.INNER_REPEATS,
                       "Repeats of the baseline's inner cross-validation.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
