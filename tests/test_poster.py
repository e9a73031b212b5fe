"""launch.poster on a fabricated sweep: numbers against direct computation."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from launch import poster
from launch import sweep_points
from preprocessing import bids
from pvl_jax.evaluation import bootstrap
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import nested_cv
from tests import fake_runs
from tests.test_baseline import IDS
from tests.test_baseline import synthetic_problem
from tests.test_baseline import write_cohort

NUM_FOLDS = 4
THRESHOLDS = (0.4, 0.5, 0.6, 0.5)  # each run's validation-chosen threshold
RESAMPLES = 200
OPTIONS = {"resamples": RESAMPLES, "seed": 0, "downsample": [4],
           "inner_repeats": 1}


def joint_prob(labels: np.ndarray, r: float) -> np.ndarray:
  """A fake joint model's probabilities: informative, noisy."""
  rng = np.random.default_rng(int(10 * r))
  return np.clip(0.5 + 0.2 * (2 * labels - 1) + rng.normal(0, 0.2,
                                                           labels.size), 0, 1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  masks, labels = synthetic_problem()
  return write_cohort(tmp_path_factory.mktemp("poster") / "cohort", masks,
                      labels), labels


def fabricate(root: Path, cohort: Path, labels: np.ndarray,
              r_values=(0.0, 1.0), unfinished=()) -> Path:
  """A sweep of r_values x NUM_FOLDS; `unfinished`: (r, fold) not run."""
  overrides = [{"r": r, "data.fold": k, "seed": 0}
               for r in r_values for k in range(NUM_FOLDS)]
  points = sweep_points.make_points(overrides, "configs/joint.py", root, {})
  sweep_points.write_sweep_json(root, points, "configs/joint.py", None, {},
                                root)
  for point in points:
    r, k = point.overrides["r"], point.overrides["data.fold"]
    if (r, k) in unfinished:
      continue
    splits = fake_runs.fold_splits(IDS, k, NUM_FOLDS)
    prob = joint_prob(labels, r)
    per_subject = [{"subject_id": s, "dice": 0.5}
                   | ({"hand_function_prob": float(prob[IDS.index(s)])}
                      if r > 0 else {}) for s in splits["test"]]
    test = {"per_subject": per_subject}
    if r > 0:
      test["cls_threshold"] = THRESHOLDS[k]
    fake_runs.write_run(root / point.name, k, NUM_FOLDS, splits, cohort,
                        results={"val": {}, "test": test})
  return root


@pytest.fixture
def small_grids(monkeypatch):
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


def _auc(y, prob):
  ranks = stats.rankdata(prob)
  pos, neg = y.sum(), y.size - y.sum()
  return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


@pytest.fixture(scope="module")
def report(cohort, tmp_path_factory):
  path, labels = cohort
  root = fabricate(tmp_path_factory.mktemp("sweep"), path, labels,
                   r_values=(0.0, 1.0, 3.0),
                   unfinished={(3.0, k) for k in range(1, NUM_FOLDS)})
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(nested_cv, "C_GRID", (1.0,))
    patch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))
    paths = poster.write_poster(root, path, OPTIONS)
  return root, json.loads(paths["json"].read_text()), paths


def test_joint_numbers_against_direct_computation(cohort, report):
  _, labels = cohort
  _, result, _ = report
  group = next(g for g in result["groups"] if g["r"] == 1.0)
  assert (group["subjects"], group["bad"]) == (40, int(labels.sum()))
  assert group["folds"] == list(range(NUM_FOLDS))
  prob = joint_prob(labels, 1.0)
  threshold = np.repeat(THRESHOLDS, 10)  # fold k: subjects 10k..10k+9
  decision = (prob >= threshold).astype(int)
  joint = group["intervals"]["joint"]
  assert joint["accuracy"]["estimate"] == pytest.approx(
      np.mean(decision == labels))
  tp = np.sum(decision & labels)
  assert joint["f1"]["estimate"] == pytest.approx(
      2 * tp / (decision.sum() + labels.sum()))
  assert joint["auc"]["estimate"] == pytest.approx(_auc(labels, prob))


def test_baselines_are_the_cross_fitted_rows(cohort, report, small_grids):
  path, labels = cohort
  root, result, _ = report
  group = next(g for g in result["groups"] if g["r"] == 1.0)
  runs = [Path(d) for d in group["runs"]]
  rows = baseline.run(path, runs, downsample=[4], inner_repeats=1,
                      feature_sets=["matrix"])["rows"]
  for row, name in zip(rows, ("LR reference", "LR predicted")):
    assert row["masks"] in name
    assert {e["fold"] for e in row["out_of_fold"]} == set(range(NUM_FOLDS))
    prob = np.array([e["prob"] for e in row["out_of_fold"]])
    y = np.array([e["hand_function"] for e in row["out_of_fold"]])
    found = group["intervals"][name]
    assert found["accuracy"]["estimate"] == pytest.approx(
        np.mean((prob >= 0.5) == y))
    assert found["auc"]["estimate"] == pytest.approx(_auc(y, prob))
  # Differences are paired: joint minus baseline, on the same resamples.
  joint, lr = group["intervals"]["joint"], group["intervals"]["LR predicted"]
  difference = group["intervals"]["joint - LR predicted"]
  for metric in bootstrap.METRICS:
    assert difference[metric]["estimate"] == pytest.approx(
        joint[metric]["estimate"] - lr[metric]["estimate"])
    assert (difference[metric]["low"] <= difference[metric]["estimate"]
            <= difference[metric]["high"])
    assert difference[metric]["resamples"] == RESAMPLES
  del root


def test_r_zero_and_unfinished_settings(cohort, report):
  _, result, paths = report
  assert [g["label"] for g in result["groups"]] == ["r=0", "r=1"]
  r0 = result["groups"][0]
  assert "joint" not in r0["intervals"]
  assert r0["unlabelled"] == []
  assert "## Left out" not in paths["md"].read_text()
  assert set(r0["intervals"]) == {"LR predicted", "LR reference",
                                  "LR reference, train split",
                                  "LR predicted - LR reference"}
  assert set(result["groups"][1]["intervals"]) == set(r0["intervals"]) | {
      "joint", "joint - LR predicted", "joint - LR reference",
      "joint - LR reference, train split"}
  assert result["skipped"] == [{
      "label": "r=3", "finished": 1,
      "unfinished": [f"r=3.0_fold={k}_seed=0" for k in range(1, NUM_FOLDS)]}]
  md = paths["md"].read_text()
  bad = int(cohort[1].sum())
  assert f"| r=0 | 40 ({bad}) | 0, 1, 2, 3 | joint | — | — | — |" in md
  assert "- r=3: 1 finished; not finished: r=3.0_fold=1_seed=0" in md
  assert f"over {RESAMPLES} resamples" in md
  png = paths["png"].read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_reference_rows_are_shared_between_settings(report):
  _, result, _ = report
  r0, r1 = result["groups"]
  # The same folds: one reference fit, the same out-of-fold predictions.
  assert (r0["intervals"]["LR reference"]
          == r1["intervals"]["LR reference"])


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "launch.poster", *args],
                        capture_output=True, text=True, check=False,
                        cwd=Path(__file__).parents[1])


def test_cli_refuses_a_leak_and_writes_nothing(cohort, tmp_path):
  path, labels = cohort
  root = fabricate(tmp_path, path, labels, r_values=(1.0,))
  fold0, fold2 = root / "r=1.0_fold=0_seed=0", root / "r=1.0_fold=2_seed=0"
  fake_runs.move_prediction("sub-025", fold2, fold0)
  proc = _cli(f"--workdir={root}", f"--cohort={path}", "--resamples=100")
  assert proc.returncode == 2
  assert (f"sub-025 was in the train split of run {fold0}" in proc.stderr)
  assert not any(root.glob("poster.*"))


def test_cli_missing_probabilities_and_sweep(cohort, tmp_path):
  path, labels = cohort
  proc = _cli(f"--workdir={tmp_path}", f"--cohort={path}")
  assert proc.returncode == 2
  assert f"error: {tmp_path / 'sweep.json'}: not found" in proc.stderr
  root = fabricate(tmp_path, path, labels, r_values=(1.0,))
  results = root / "r=1.0_fold=1_seed=0" / "results.json"
  data = json.loads(results.read_text())
  del data["test"]["per_subject"][3]["hand_function_prob"]
  results.write_text(json.dumps(data))
  proc = _cli(f"--workdir={root}", f"--cohort={path}", "--resamples=100",
              "--downsample=4", "--inner_repeats=1")
  assert proc.returncode == 2
  assert (f"error: {results}: test has no per-subject hand_function_prob"
          in proc.stderr)
  assert not any(root.glob("poster.*"))


def test_unlabelled_subjects_are_left_out(cohort, tmp_path, monkeypatch,
                                          small_grids):
  path, labels = cohort
  root = fabricate(tmp_path, path, labels, r_values=(1.0,))
  load_cohort = bids.load_cohort

  def with_one_unlabelled(*args, **kwargs):
    return [dataclasses.replace(s, hand_function=None)
            if s.participant_id == "sub-017" else s
            for s in load_cohort(*args, **kwargs)]
  monkeypatch.setattr(bids, "load_cohort", with_one_unlabelled)
  paths = poster.write_poster(root, path, OPTIONS | {"resamples": 100})
  (group,) = json.loads(paths["json"].read_text())["groups"]
  assert (group["subjects"], group["unlabelled"]) == (39, ["sub-017"])
  assert ("- r=1: 1 unlabelled test subject(s) left out: sub-017"
          in paths["md"].read_text())


def test_reference_rows_are_keyed_by_how_the_cohort_is_read(
    cohort, tmp_path, monkeypatch, small_grids):
  path, labels = cohort
  (group,) = poster.groups_of(fabricate(tmp_path / "sweep", path, labels,
                                        r_values=(0.0,)))
  fitted = []
  run = baseline.run

  def recording(*args, masks, **kwargs):
    fitted.extend(masks)
    return run(*args, masks=masks, **kwargs)

  monkeypatch.setattr(baseline, "run", recording)
  cache = {}
  poster.compare_group(group, path, OPTIONS, cache)
  poster.compare_group(group, path, OPTIONS, cache)
  # One fit per reference row (all outside the fold; the train splits) for
  # the same folds and reading.
  assert fitted.count("reference") == 2
  # Masks read another way (here binarised at a threshold) are refitted.
  reading = cohort_reading.of_runs(group.finished)
  monkeypatch.setattr(cohort_reading, "of_runs", lambda runs: (
      dataclasses.replace(reading, mask_threshold=0.5)))
  poster.compare_group(group, path, OPTIONS, cache)
  assert fitted.count("reference") == 4
