"""Logistic-regression hand-function baseline on lesion masks (CLI).

Usage:
  python -m pvl_jax.handfunction.run --cohort=DIR --out=FILE.json \
      [--predictions=RUN_DIR1,RUN_DIR2,...] [--folds=5] \
      [--downsample=2,3,4,6] [--seed=0] [--inner_repeats=2] \
      [--atlas=LABELS.nii.gz --atlas_names=NAMES.tsv] \
      [--regions=NAME1,NAME2,...] [--tract=NAME1,...] [--resamples=2000]
      [--label_column=hand_function] [--phenotype=FILE] [--session=first]
      [--run=last] [--bids_filter=acq-3D] [--ignore_label=2]
      [--mask_threshold=0.5] [--train_on=outer|runs]

Nested cross-validated logistic regression on the "matrix" (block-averaged
mask, the poster's form and the primary row; the inner CV chooses the block
factor among --downsample) and "lesion_load" (total, tract and regional
volumes; the inner CV chooses all of them or total + tract, log or plain)
features of the cohort's reference masks and, with --predictions, of the
cross-fitted predicted masks of the given training runs (one per fold, each
with splits.json; the outer folds of every row are then the runs' test
splits, and a mask from a run that trained or validated on its subject is
refused; see `pvl_jax.handfunction.crossfit`). Subjects whose label is n/a
are left out. The regions are the built-in ones (`regions`) or, with
--atlas, the labels of a user's atlas (`atlas`) in the masks' grid: for a
`preprocessing` output, whose masks are crops of the template grid, each
placed at its origin in it, that template grid (`features.cohort_grid`);
--regions picks some, --tract names those whose union is the tract load.
The cohort is read as the training runs read it (their config.json: label
column, phenotype file, session, run, entity filter, ignore label, mask
threshold; `cohort_reading`); without runs, as the flags of the same names
say, whose defaults are the training config's. A flag that contradicts the
runs is an error. Each outer fold's model trains on every subject outside
the fold (--train_on=outer) or, with --predictions, on its run's train split
alone (--train_on=runs: the subjects the joint model trained on).
Writes {"rows": [...], ...} to --out (the format launch/report.py reads as
--baseline) and prints a markdown table: per row the pooled out-of-fold
accuracy, F1 and AUC with paired-bootstrap 95% intervals over --resamples
resamples of the subjects (seed --seed). Bad input: `error: <file>:
<problem>` on stderr, exit status 2, nothing written.
"""

import json
import logging as py_logging
from pathlib import Path
import sys

from absl import app
from absl import flags

from preprocessing import selection_flags
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import bootstrap
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import nested_cv

FLAGS = flags.FLAGS
flags.DEFINE_string("cohort", None, "BIDS cohort directory (participants.tsv "
                    "with hand_function, reference lesion masks).",
                    required=True)
flags.DEFINE_list("predictions", [], "Training run workdirs whose "
                  "predictions/sub-XXX_pred.nii.gz together cover every "
                  "subject once (one run per test fold).")
flags.DEFINE_string("out", None, "Output JSON file.", required=True)
flags.DEFINE_integer("folds", 5, "Outer stratified cross-validation folds.")
flags.DEFINE_list("downsample", [str(f) for f in nested_cv.BLOCK_FACTORS],
                  "Block-averaging factors of the matrix features, in voxels; "
                  "the inner cross-validation chooses one per outer fold.")
flags.DEFINE_integer("seed", 0, "Seed of the fold assignment.")
flags.DEFINE_string("atlas", None, "Label map (NIfTI, non-negative integer "
                    "labels, 0 background) in the masks' grid (a "
                    "preprocessing output's: its template grid) whose labels "
                    "replace the built-in regions; needs --atlas_names.")
flags.DEFINE_string("atlas_names", None, "The atlas's names table: TSV "
                    "(.tsv) or CSV with columns 'index' and 'name'.")
flags.DEFINE_list("regions", [], "Lesion-load regions to use (names of the "
                  "built-in regions or of the atlas's table); default all.")
flags.DEFINE_list("tract", [], "Regions whose union is the tract load; "
                  "default: the built-in corticospinal tract, or with "
                  "--atlas every region used.")
flags.DEFINE_integer("resamples", bootstrap.RESAMPLES, "Bootstrap resamples "
                     "of the subjects for each row's 95% intervals (pooled "
                     "out-of-fold accuracy, F1, AUC); 0: none.")
flags.DEFINE_string("label_column", "hand_function", "The label's column "
                    "(participants.tsv or --phenotype).")
flags.DEFINE_string("phenotype", "", "A table the labels come from instead "
                    "of participants.tsv.")
flags.DEFINE_integer("ignore_label", None, "Reference-mask value that is "
                     "neither lesion nor background.")
flags.DEFINE_float("mask_threshold", None, "Binarise reference masks with "
                   "mask >= threshold.")
flags.DEFINE_integer("inner_repeats", nested_cv.INNER_REPEATS,
                     "Repeats of the inner cross-validation: more make the "
                     "choice of hyper-parameters less noisy, at proportional "
                     "cost.")

flags.DEFINE_enum("train_on", "outer", baseline.TRAIN_ON, "Whom each outer "
                  "fold's model trains on: every subject outside the fold, "
                  "or (with --predictions) its run's train split alone.")

flags.adopt_module_key_flags(selection_flags)


def _factors(values: list[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise InputError(f"--downsample: expected integers, got {values}") from None


# The reading's other fields are the selection flags.
_READING_FLAGS = ("label_column", "phenotype", "ignore_label", "mask_threshold")


def _reading() -> cohort_reading.CohortReading:
  """The runs' reading of the cohort, or the flags' without runs."""
  given = {name: FLAGS[name].value for name in _READING_FLAGS
           if FLAGS[name].present} | selection_flags.given()
  if given.get("phenotype"):
    given["phenotype"] = str(Path(given["phenotype"]).expanduser().resolve())
  if not FLAGS.predictions:
    return cohort_reading.CohortReading(**given)
  reading = cohort_reading.of_runs(FLAGS.predictions)
  cohort_reading.check_flags_agree(reading, given, FLAGS.predictions[0])
  return reading


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Our progress lines, not third-party INFO chatter (e.g. pybids).
  py_logging.getLogger("pvl_jax").setLevel(py_logging.INFO)
  try:
    downsample = _factors(FLAGS.downsample)
    options = baseline.RegionOptions(FLAGS.atlas, FLAGS.atlas_names,
                                     tuple(FLAGS.regions), tuple(FLAGS.tract))
    output = baseline.run(FLAGS.cohort, FLAGS.predictions, folds=FLAGS.folds,
                          downsample=downsample, seed=FLAGS.seed,
                          inner_repeats=FLAGS.inner_repeats,
                          region_options=options,
                          resamples=FLAGS.resamples, reading=_reading(),
                          train_on=FLAGS.train_on)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  result = {"cohort": FLAGS.cohort, "predictions": FLAGS.predictions,
            "folds": (FLAGS.folds if output["folds"] == "stratified"
                      else "the runs' test splits"),
            "downsample": downsample,
            "seed": FLAGS.seed, "c_grid": list(nested_cv.C_GRID),
            "min_lesion_fractions": list(nested_cv.MIN_LESION_FRACTIONS),
            "inner_folds": nested_cv.INNER_FOLDS,
            "inner_repeats": FLAGS.inner_repeats,
            "resamples": FLAGS.resamples, "regions": output["regions"],
            "unlabelled": output["unlabelled"], "reading": output["reading"],
            "rows": output["rows"]}
  atomic_write_text(FLAGS.out, json.dumps(result, indent=2,
                                          allow_nan=False) + "\n")
  print(baseline.markdown_table(output["rows"]))


if __name__ == "__main__":
  app.run(main)
