"""The baseline reads a cohort as the training runs read it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import joint
from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import nested_cv
from tests import fake_runs
from tests.test_baseline import AFFINE
from tests.test_baseline import IDS
from tests.test_baseline import synthetic_problem
from tests.test_baseline import write_cohort

NUM_FOLDS = 4
# Voxels of the "other pathology" label, away from every lesion of the
# synthetic problem (which lie at y >= 4 voxels or in its spot).
OTHER = (slice(8, 10), slice(0, 2), slice(0, 2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  """The baseline tests' cohort, plus a 'grip' column that is the opposite
  label, and label-2 voxels in every fourth subject's reference mask."""
  masks, labels = synthetic_problem()
  root = write_cohort(tmp_path_factory.mktemp("reading") / "cohort", masks,
                      labels)
  table = root / "participants.tsv"
  lines = table.read_text().splitlines()
  table.write_text("\n".join(
      [lines[0] + "\tgrip"]
      + [f"{line}\t{1 - label}" for line, label in zip(lines[1:], labels)])
      + "\n")
  for sid in IDS[::4]:
    path = fake_runs.reference_mask(root, sid)
    data = np.asarray(nifti.load_volume(path, kind="mask")[0], np.uint8)
    data[OTHER] = 2
    nifti.save_nifti(data, AFFINE, path, np.uint8)
  return root


@pytest.fixture
def small_grids(monkeypatch):
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


def _runs(root: Path, cohort: Path, **data) -> list[Path]:
  """Fold runs whose predictions are the reference masks without label 2."""
  runs = [fake_runs.write_run(root / f"fold{k}", k, NUM_FOLDS,
                              fake_runs.fold_splits(IDS, k, NUM_FOLDS),
                              cohort, data=data)
          for k in range(NUM_FOLDS)]
  for run in runs:
    for path in (run / "predictions").iterdir():
      volume, affine = nifti.load_volume(path, kind="mask")
      nifti.save_nifti((volume == 1).astype(np.uint8), affine, path, np.uint8)
  return runs


def _run(cohort, runs, **kwargs):
  return baseline.run(cohort, runs, downsample=[4], inner_repeats=1,
                      feature_sets=["lesion_load"], **kwargs)


def test_the_runs_reading_is_used(cohort, tmp_path, small_grids):
  runs = _runs(tmp_path, cohort, ignore_label=2, label_column="grip")
  output = _run(cohort, runs)
  assert output["reading"]["ignore_label"] == 2
  assert output["reading"]["label_column"] == "grip"
  reference, predicted = output["rows"]
  # Label-2 voxels are neither lesion nor background: the reference masks'
  # lesion loads equal those of the predictions, which never held them.
  assert reference["folds"] == predicted["folds"]
  assert reference["out_of_fold"] == predicted["out_of_fold"]
  _, labels = synthetic_problem()
  truth = {e["subject_id"]: e["hand_function"]
           for e in reference["out_of_fold"]}
  assert [truth[s] for s in IDS] == list(1 - labels)


def test_reference_masks_with_a_label_the_runs_did_not_ignore(
    cohort, tmp_path, small_grids):
  runs = _runs(tmp_path, cohort)
  path = fake_runs.reference_mask(cohort, IDS[0])
  with pytest.raises(InputError, match=(
      f"{path}: lesion mask holds values other than 0, 1 \\(e.g. 2\\)")):
    _run(cohort, runs)


def test_runs_that_read_the_cohort_differently(cohort, tmp_path):
  runs = _runs(tmp_path, cohort, ignore_label=2)
  config = runs[2] / "config.json"
  data = json.loads(config.read_text())
  data["data"]["session"] = "last"
  config.write_text(json.dumps(data))
  with pytest.raises(InputError) as error:
    cohort_reading.of_runs(runs)
  assert str(error.value) == (
      f"{config}: read the cohort with session = 'last', but "
      f"{runs[0] / 'config.json'} with 'first'; the runs of one comparison "
      "must read the cohort alike")


def test_run_without_config(cohort, tmp_path):
  runs = _runs(tmp_path, cohort)
  (runs[1] / "config.json").unlink()
  with pytest.raises(InputError, match=f"{runs[1] / 'config.json'}"):
    cohort_reading.of_runs(runs)


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "pvl_jax.handfunction.run", *args],
      capture_output=True, text=True, check=False,
      cwd=Path(__file__).parents[1])


def test_cli_flag_that_contradicts_the_runs(cohort, tmp_path):
  runs = _runs(tmp_path / "runs", cohort, ignore_label=2)
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={cohort}", f"--out={out}", "--ignore_label=3",
              f"--predictions={','.join(map(str, runs))}")
  assert proc.returncode == 2
  assert (f"error: --ignore_label=3: the training runs read the cohort with "
          f"ignore_label = 2 ({runs[0] / 'config.json'}); leave "
          "--ignore_label out to use theirs") in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_cli_flags_without_runs(cohort, tmp_path):
  out = tmp_path / "baseline.json"
  proc = _cli(f"--cohort={cohort}", f"--out={out}", "--ignore_label=2",
              "--label_column=grip", "--folds=2", "--downsample=4",
              "--inner_repeats=1", "--resamples=0")
  assert proc.returncode == 0, proc.stderr[-2000:]
  written = json.loads(out.read_text())
  assert written["reading"]["ignore_label"] == 2
  assert written["reading"]["label_column"] == "grip"
  assert written["rows"][0]["n_subjects"] == len(IDS)


def test_small_class_is_named_by_its_column(tmp_path):
  table = tmp_path / "phenotype.tsv"
  with pytest.raises(InputError, match=(
      f"{table}: grip=1 has 2 subject\\(s\\), fewer than the 7 that 5-fold")):
    nested_cv.check_class_sizes(np.array([0] * 9 + [1] * 2), 5, table,
                                "grip")


# The baseline reads the masks training reads: the scan is chosen first
# (session, run, entity filter), then the lesion mask covering it.


def _volume(path: Path) -> None:
  nifti.save_nifti(np.zeros((4, 4, 4), np.uint8), np.eye(4), path, np.uint8)


def _layout(root: Path, scans: list[str], masks: list[str]) -> Path:
  """One participant's scans (raw folder) and lesion masks, by stem."""
  root.mkdir()
  (root / "participants.tsv").write_text(
      "participant_id\thand_function\nsub-001\t1\n")
  for stem in scans:
    session = stem.split("_")[1]
    _volume(root / "sub-001" / session / "anat" / f"{stem}_FLAIR.nii.gz")
  for stem in masks:
    session = stem.split("_")[1]
    _volume(root / "derivatives" / "lesions" / "sub-001" / session / "anat"
            / f"{stem}_label-lesion_mask.nii.gz")
  return root


THREE_LAYOUTS = {
    # The filter keeps the ses-02 scan: its session's mask, not ses-01's.
    "filter_picks_the_session": (
        ["sub-001_ses-01_acq-2D", "sub-001_ses-02_acq-3D"],
        ["sub-001_ses-01", "sub-001_ses-02"], "acq-3D",
        "sub-001_ses-02_label-lesion_mask.nii.gz"),
    # A mask per acquisition: the chosen scan's, not "ambiguous".
    "a_mask_per_acquisition": (
        ["sub-001_ses-01_acq-2D", "sub-001_ses-01_acq-3D"],
        ["sub-001_ses-01_acq-2D", "sub-001_ses-01_acq-3D"], "acq-3D",
        "sub-001_ses-01_acq-3D_label-lesion_mask.nii.gz"),
    # Runs: the last run's scan, covered by its run's mask (the session's
    # run-less mask is less specific).
    "runs_and_a_session_mask": (
        ["sub-001_ses-01_run-1", "sub-001_ses-01_run-2"],
        ["sub-001_ses-01", "sub-001_ses-01_run-2"], "",
        "sub-001_ses-01_run-2_label-lesion_mask.nii.gz"),
}


@pytest.mark.parametrize("layout", THREE_LAYOUTS)
def test_baseline_reads_the_masks_training_reads(layout, tmp_path):
  scans, masks, bids_filter, expected = THREE_LAYOUTS[layout]
  root = _layout(tmp_path / "cohort", scans, masks)
  config = joint.get_config("demo")
  config.data.update(cohort_dir=str(root), bids_filter=bids_filter)
  # Training's reading: the TFDS builder's config and call.
  builder = dataset.builder_config(config)
  (training,) = bids.load_cohort(root, modalities=builder.modalities,
                                 selection=builder.selection())
  assert training.lesion_mask_path.name == expected
  # The baseline's, through a run's config.json.
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(config.to_json_best_effort())
  (reading,) = cohort_reading.of_runs([run]).load(root)
  assert reading.lesion_mask_path == training.lesion_mask_path
