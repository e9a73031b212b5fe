"""Cross-fitted predicted masks: which training run predicted each subject.

With r > 0 a run's training split's labels train its head, and its
validation split's pick the decision threshold and the checkpoint. What the
cross-fitting here guarantees, and what it does not:

* guaranteed: every subject's mask comes from the run whose test split held
  it, so no subject's own mask comes from a network that saw the subject
  (its image or its label); a mask from a run that trained or validated on
  its subject is refused, naming both. The baseline's outer folds are the
  runs' test splits, so its rows pair with the joint model's.
* not guaranteed: strict nesting. For outer fold k the baseline's training
  subjects' masks come from the other runs, each of which trained or
  validated on fold k's subjects. So the features the baseline learns from
  were made by networks that saw its test subjects (with r > 0, their labels
  too). A strictly nested comparison would need, per outer fold, networks
  trained without that fold for every training subject's mask (K x (K - 1)
  runs instead of K); it is not offered.

Contract with training: each run writes `<workdir>/splits.json`,
{"rule": str, "fold": int, "num_folds": int,
 "subjects": {"train": [ids], "validation": [ids], "test": [ids]}},
and its test predictions as `<workdir>/predictions/<subject>_pred.nii.gz`
(`pvl_jax.evaluation.evaluate_run.save_predictions`).
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json

SPLITS_FILE = "splits.json"
PREDICTIONS_DIR = "predictions"
PRED_SUFFIX = "_pred.nii.gz"
SPLIT_NAMES = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Run:
  """A training run's workdir and its splits.json."""
  workdir: Path
  rule: str
  fold: int
  num_folds: int
  splits: dict[str, frozenset[str]]

  @property
  def splits_path(self) -> Path:
    return self.workdir / SPLITS_FILE

  @property
  def subjects(self) -> frozenset[str]:
    return frozenset().union(*self.splits.values())

  def split_of(self, subject: str) -> str | None:
    return next((name for name in SPLIT_NAMES
                 if subject in self.splits[name]), None)


@dataclasses.dataclass(frozen=True)
class CrossFit:
  """Cross-fitted masks and the outer folds they imply.

  Attributes:
    subjects: the subjects with a mask, sorted.
    predictions: subject -> its predicted mask.
    fold_of: subject -> the fold of the run whose test split held it.
    runs: the runs, in the order given.
  """
  subjects: list[str]
  predictions: dict[str, Path]
  fold_of: dict[str, int]
  runs: list[Run]


_KINDS = {int: "an integer", str: "a string", list: "a list"}


def _expect(path: Path, value: Any, kind: type, what: str) -> Any:
  if not isinstance(value, kind) or isinstance(value, bool):
    raise InputError(f"{path}: {what} must be {_KINDS[kind]}, got "
                     f"{value!r}")
  return value


def read_run(workdir: str | os.PathLike) -> Run:
  """Reads and checks a run's splits.json.

  Raises:
    InputError: the file is missing, or malformed: a missing key, a value of
      the wrong type, or a subject in two splits.
  """
  workdir = Path(workdir)
  path = workdir / SPLITS_FILE
  data = read_json(path, missing_hint=(
      "(every training run writes it; a run without it cannot show which "
      "subjects its network saw, so its masks cannot be cross-fitted)"))
  try:
    rule, fold, num_folds = data["rule"], data["fold"], data["num_folds"]
    listed = {name: data["subjects"][name] for name in SPLIT_NAMES}
  except (KeyError, TypeError) as err:
    raise InputError(f"{path}: no {err} (expected {{\"rule\", \"fold\", "
                     "\"num_folds\", \"subjects\": {\"train\", "
                     "\"validation\", \"test\"}})") from None
  _expect(path, rule, str, "rule")
  _expect(path, fold, int, "fold")
  _expect(path, num_folds, int, "num_folds")
  if not 0 <= fold < num_folds:
    raise InputError(f"{path}: fold {fold} not in [0, num_folds = "
                     f"{num_folds})")
  splits = {}
  for name, ids in listed.items():
    _expect(path, ids, list, f"subjects.{name}")
    for subject in ids:
      _expect(path, subject, str, f"a subject id of subjects.{name}")
    splits[name] = frozenset(ids)
  for i, first in enumerate(SPLIT_NAMES):
    for second in SPLIT_NAMES[i + 1:]:
      both = sorted(splits[first] & splits[second])
      if both:
        raise InputError(f"{path}: subject(s) {', '.join(both)} in both "
                         f"the {first} and the {second} split")
  return Run(workdir, rule, fold, num_folds, splits)


def _check_runs_agree(runs: Sequence[Run]) -> None:
  """One fold scheme: same fold count and subjects, distinct disjoint folds.

  (The rule text names the run's own fold, so it is not compared.)
  """
  first = runs[0]
  for run in runs[1:]:
    if run.num_folds != first.num_folds:
      raise InputError(
          f"{run.splits_path}: {run.num_folds} folds, but "
          f"{first.splits_path} has {first.num_folds} (the runs must come "
          "from one fold scheme)")
    if run.subjects != first.subjects:
      differ = sorted(run.subjects ^ first.subjects)
      raise InputError(
          f"{run.splits_path}: its splits hold other subjects than those of "
          f"{first.splits_path} ({', '.join(differ[:5])}"
          f"{', ...' if len(differ) > 5 else ''}; runs of another cohort?)")
  for i, run in enumerate(runs):
    for other in runs[:i]:
      shared = sorted(run.splits["test"] & other.splits["test"])
      if run.fold == other.fold or shared:
        raise InputError(
            f"{run.splits_path}: test split (fold {run.fold}) overlaps that "
            f"of {other.splits_path} (fold {other.fold})"
            + (f" in {', '.join(shared)}" if shared else "")
            + "; pass one run per fold")


def _found_predictions(runs: Sequence[Run]) -> dict[str, list[tuple[Path,
                                                                    Run]]]:
  found: dict[str, list[tuple[Path, Run]]] = {}
  for run in runs:
    folder = run.workdir / PREDICTIONS_DIR
    files = sorted(folder.glob(f"*{PRED_SUFFIX}"))
    if not files:
      raise InputError(f"{run.workdir}: no predicted masks (expected "
                       f"{PREDICTIONS_DIR}/sub-XXX{PRED_SUFFIX})")
    for path in files:
      found.setdefault(path.name[:-len(PRED_SUFFIX)], []).append((path, run))
  return found


def cross_fit(run_dirs: Sequence[str | os.PathLike],
              cohort_ids: Sequence[str], subjects: Sequence[str],
              require_all: bool = True) -> CrossFit:
  """Each subject's predicted mask and outer fold, refusing any leak.

  Args:
    run_dirs: training run workdirs, one per fold of one fold scheme.
    cohort_ids: every participant of the cohort (labelled or not).
    subjects: the participants the baseline fits (the labelled ones).
    require_all: every one of `subjects` needs a mask (else only those in
      the runs' test splits are kept: a sweep whose folds are not all done).

  Returns:
    The masks and folds of the kept subjects.

  Raises:
    InputError: a run has no splits.json or no predictions, the runs'
      splits disagree, a mask names a subject outside the cohort or twice,
      a subject's mask comes from a run whose training or validation split
      held it (naming subject and run), or a subject lacks its mask.
  """
  if not run_dirs:
    raise InputError("--predictions: no training runs given")
  runs = [read_run(d) for d in run_dirs]
  _check_runs_agree(runs)
  cohort = set(cohort_ids)
  for run in runs:
    outside = sorted(run.subjects - cohort)
    if outside:
      raise InputError(f"{run.splits_path}: subject(s) {', '.join(outside)} "
                       "not in the cohort's participants.tsv (a run of "
                       "another cohort?)")
  found = _found_predictions(runs)
  for subject, masks in sorted(found.items()):
    if subject not in cohort:
      raise InputError(f"{masks[0][0]}: subject {subject} is not in the "
                       "cohort's participants.tsv")
    if len(masks) > 1:
      raise InputError(f"subject {subject} is predicted by more than one "
                       "run: " + ", ".join(str(p) for p, _ in masks))
    path, run = masks[0]
    split = run.split_of(subject)
    if split != "test":
      held = (f"was in the {split} split" if split
              else "is in no split")
      raise InputError(
          f"{path}: subject {subject} {held} of run {run.workdir} "
          f"({run.splits_path}): that network "
          + ("saw its hand-function label, so a baseline fitted on this mask "
             "would leak it" if split else "did not test it")
          + "; use the run whose test split held the subject")
  tested = {s: run for run in runs for s in run.splits["test"]}
  keep = sorted(subjects) if require_all else sorted(
      s for s in subjects if s in tested)
  missing = [s for s in keep if s not in found]
  if missing:
    raise InputError(
        f"{', '.join(str(run.workdir) for run in runs)}: no predicted mask "
        f"for {len(missing)} subject(s) (the runs must cover every test "
        f"fold): {', '.join(missing)}")
  return CrossFit(keep, {s: found[s][0][0] for s in keep},
                  {s: tested[s].fold for s in keep}, runs)
