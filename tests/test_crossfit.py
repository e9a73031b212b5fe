"""Leak-free cross-fitting of the baseline on the training runs' predictions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import crossfit
from pvl_jax.handfunction import nested_cv
from tests import fake_runs
from tests.test_baseline import IDS
from tests.test_baseline import synthetic_problem
from tests.test_baseline import write_cohort

NUM_FOLDS = 4  # of 10 subjects each: fold k holds IDS[10k:10k + 10]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  masks, labels = synthetic_problem()
  return write_cohort(tmp_path_factory.mktemp("crossfit") / "cohort", masks,
                      labels)


@pytest.fixture
def runs(cohort, tmp_path):
  return fake_runs.write_fold_runs(tmp_path, cohort, IDS, NUM_FOLDS)


@pytest.fixture
def small_grids(monkeypatch):
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


def _run(cohort, runs, **kwargs):
  return baseline.run(cohort, runs, downsample=[4], inner_repeats=1,
                      feature_sets=["lesion_load"], **kwargs)


@pytest.mark.parametrize("subject, source, split", [
    # Fold 2's subject in fold 0's run, whose training split held it.
    ("sub-025", 2, "train"),
    # Fold 1's subject in fold 0's run, whose validation split held it.
    ("sub-015", 1, "validation")])
def test_mask_from_a_run_that_saw_the_subject_is_refused(
    cohort, runs, small_grids, subject, source, split):
  fake_runs.move_prediction(subject, runs[source], runs[0])
  path = runs[0] / "predictions" / f"{subject}_pred.nii.gz"
  with pytest.raises(InputError) as error:
    _run(cohort, runs)
  assert str(error.value).startswith(
      f"{path}: subject {subject} was in the {split} split of run {runs[0]} "
      f"({runs[0] / 'splits.json'}): that network saw its hand-function "
      "label")


def test_cli_refuses_the_leak_and_writes_nothing(cohort, runs, tmp_path):
  fake_runs.move_prediction("sub-025", runs[2], runs[0])
  out = tmp_path / "baseline.json"
  proc = subprocess.run(
      [sys.executable, "-m", "pvl_jax.handfunction.run", f"--cohort={cohort}",
       f"--out={out}", f"--predictions={','.join(map(str, runs))}"],
      capture_output=True, text=True, check=False,
      cwd=Path(__file__).parents[1])
  assert proc.returncode == 2
  assert (f"error: {runs[0] / 'predictions' / 'sub-025_pred.nii.gz'}: "
          f"subject sub-025 was in the train split of run {runs[0]}"
          in proc.stderr)
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_outer_folds_are_the_runs_test_splits(cohort, runs, small_grids):
  rows = _run(cohort, runs)["rows"]
  assert [r["masks"] for r in rows] == ["reference", "predicted"]
  for row in rows:
    assert [f["fold"] for f in row["folds"]] == list(range(NUM_FOLDS))
    assert {f["n_test"] for f in row["folds"]} == {10}
    for entry in row["out_of_fold"]:
      assert entry["fold"] == IDS.index(entry["subject_id"]) // 10
  # Copies of the reference masks: the same subjects, folds and fits.
  assert rows[0]["out_of_fold"] == rows[1]["out_of_fold"]


def test_folds_not_all_done(cohort, runs, small_grids):
  done = runs[:3]
  with pytest.raises(InputError, match=r"no predicted mask for 10 "
                     r"subject\(s\) .*: sub-031, "):
    _run(cohort, done)
  rows = _run(cohort, done, require_all=False)["rows"]
  assert [e["subject_id"] for e in rows[1]["out_of_fold"]] == IDS[:30]


def test_run_without_splits_json(cohort, runs):
  (runs[1] / "splits.json").unlink()
  with pytest.raises(InputError, match=f"{runs[1] / 'splits.json'}: not "
                     "found .*cannot be cross-fitted"):
    crossfit.cross_fit(runs, IDS, IDS)


def _rewrite_splits(run: Path, **changes) -> None:
  path = run / "splits.json"
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data))


def test_runs_of_different_fold_schemes(runs):
  _rewrite_splits(runs[3], num_folds=5)
  with pytest.raises(InputError, match=f"{runs[3] / 'splits.json'}: 5 folds, "
                     "but .*fold0/splits.json has 4"):
    crossfit.cross_fit(runs, IDS, IDS)


def test_runs_of_other_subjects(runs):
  splits = fake_runs.fold_splits(IDS[:36], 3, NUM_FOLDS)
  _rewrite_splits(runs[3], subjects=splits)
  with pytest.raises(InputError, match=f"{runs[3] / 'splits.json'}: its "
                     "splits hold other subjects than those of .*fold0/"
                     r"splits.json \(sub-037, sub-038, sub-039, sub-040"):
    crossfit.cross_fit(runs, IDS, IDS)


def test_the_same_fold_twice(runs, cohort, tmp_path):
  again = fake_runs.write_run(tmp_path / "again", 1, NUM_FOLDS,
                              fake_runs.fold_splits(IDS, 1, NUM_FOLDS),
                              cohort, predicted=[])
  with pytest.raises(InputError, match=r"again/splits.json: test split "
                     r"\(fold 1\) overlaps that of .*fold1/splits.json "
                     r"\(fold 1\) in sub-011, "):
    crossfit.cross_fit(runs + [again], IDS, IDS)


@pytest.mark.parametrize("changes, message", [
    ({"fold": 4}, r"fold 4 not in \[0, num_folds = 4\)"),
    ({"fold": "0"}, "fold must be an integer, got '0'"),
    ({"rule": None}, "rule must be a string"),
    ({"subjects": {"train": [], "validation": []}}, "no 'test'"),
    ({"subjects": {"train": ["sub-001"], "validation": [],
                   "test": ["sub-001"]}},
     r"subject\(s\) sub-001 in both the train and the test split")])
def test_malformed_splits_json(runs, changes, message):
  _rewrite_splits(runs[0], **changes)
  with pytest.raises(InputError, match=f"{runs[0] / 'splits.json'}: "
                     f"{message}"):
    crossfit.read_run(runs[0])


def test_subjects_outside_the_cohort(runs):
  with pytest.raises(InputError, match=r"fold0/splits.json: subject\(s\) "
                     "sub-001, .* not in the cohort"):
    crossfit.cross_fit(runs, IDS[10:], IDS[10:])


def test_cross_fit_of_unlabelled_and_partial_cohorts(runs):
  # Unlabelled subjects (not fitted) may be predicted; they are not kept.
  labelled = [s for s in IDS if s != "sub-012"]
  fit = crossfit.cross_fit(runs, IDS, labelled)
  assert fit.subjects == labelled
  assert fit.fold_of["sub-031"] == 3
  assert fit.predictions["sub-031"] == (runs[3] / "predictions"
                                        / "sub-031_pred.nii.gz")
  assert np.bincount(list(fit.fold_of.values())).tolist() == [10, 9, 10, 10]
