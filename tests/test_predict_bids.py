"""`pvl_jax.predict` on a BIDS dataset: selection, derivatives, resuming.

The fast tests replace the network and the preprocessing by a stand-in
(`_stand_in`: the scan is still loaded and checked as predict checks it, and
the bright voxels are the "lesions"), so that they test the dataset's
reading and writing; the slow one runs the real command.
"""

import io
import json
from pathlib import Path
import re
import shutil
import subprocess
import sys
import threading
import types

import nibabel as nib
import numpy as np
import pytest

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import qc_report
from pvl_jax.inference import bids_prediction
from pvl_jax.inference import derivatives
from pvl_jax.inference import native_space

REPO = Path(__file__).resolve().parents[1]


def _stand_in(run, paths) -> native_space.Prediction:
  """The scan's brightest 0.5% as lesions, P(bad) 0.7 (no network)."""
  data, affine = native_space.load_scan(run, paths)
  scan = data[..., 0]
  probabilities = (scan > np.percentile(scan, 99.5)).astype(np.float32)
  return native_space.Prediction(
      mask=(probabilities > 0.5).astype(np.uint8),
      probabilities=probabilities, affine=affine, hand_function_prob=0.7,
      scan=scan, brain_template_dice=0.98)


def _checked(run, paths):
  """The preprocessing's stand-in: predict's checks of the scan, no more."""
  native_space.load_scan(run, paths)
  return paths


@pytest.fixture
def segmented(monkeypatch) -> list[Path]:
  """Every scan the stand-in segments, in order."""
  calls = []

  def recorded(run, paths):
    calls.append(Path(paths[0]))
    return _stand_in(run, paths)

  monkeypatch.setattr(native_space, "to_template", _checked)
  monkeypatch.setattr(native_space, "segment_template_scan", recorded)
  return calls


@pytest.fixture(scope="module")
def dataset(raw_cohort, tmp_path_factory) -> Path:
  """A BIDS dataset of raw scans: sessions, runs, acquisitions, no masks.

  sub-001: ses-01 and ses-02; sub-002: run-1 and run-2 (no sessions);
  sub-003: an acq-2D and an acq-3D scan; every other scan acq-3D. No
  participants.tsv.
  """
  root = tmp_path_factory.mktemp("bids") / "dataset"
  scans = [raw_cohort / f"sub-00{i}" / "anat" / f"sub-00{i}_FLAIR.nii.gz"
           for i in (1, 2)]
  layout = {
      "sub-001/ses-01/anat/sub-001_ses-01_acq-3D_FLAIR.nii.gz": scans[0],
      "sub-001/ses-02/anat/sub-001_ses-02_acq-3D_FLAIR.nii.gz": scans[1],
      "sub-002/anat/sub-002_acq-3D_run-1_FLAIR.nii.gz": scans[0],
      "sub-002/anat/sub-002_acq-3D_run-2_FLAIR.nii.gz": scans[1],
      "sub-003/anat/sub-003_acq-2D_FLAIR.nii.gz": scans[0],
      "sub-003/anat/sub-003_acq-3D_FLAIR.nii.gz": scans[1]}
  for name, source in layout.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, root / name)
  (root / "sub-002" / "anat" / "sub-002_acq-3D_run-2_FLAIR.json").write_text(
      "{}")
  (root / "dataset_description.json").write_text(
      '{"Name": "new scans", "BIDSVersion": "1.9.0"}')
  return root


def _predict(run_dir, dataset, out, **selection) -> bids_prediction.Summary:
  """predict_bids with --session=last --bids_filter=acq-3D (or others)."""
  return bids_prediction.predict_bids(
      run_dir, dataset, out,
      bids.Selection(**{"session": "last", "entities": "acq-3D",
                        **selection}), stdout=io.StringIO())


def _outputs(out: Path, folder: str, stem: str) -> list[Path]:
  base = out / folder / stem
  return [Path(f"{base}_space-orig_desc-lesion_mask.nii.gz"),
          Path(f"{base}_space-orig_label-lesion_probseg.nii.gz"),
          Path(f"{base}_space-orig_desc-lesion_mask.json")]


# participant -> (folder, scan name up to its suffix) under _predict's rules.
CHOSEN = {
    "sub-001": ("sub-001/ses-02/anat", "sub-001_ses-02_acq-3D"),
    "sub-002": ("sub-002/anat", "sub-002_acq-3D_run-2"),
    "sub-003": ("sub-003/anat", "sub-003_acq-3D"),
}


def test_rules_that_do_not_choose_stop_before_any_output(tiny_run, dataset,
                                                         tmp_path, segmented):
  out = tmp_path / "out"
  with pytest.raises(InputError, match=r"sub-003: FLAIR: the session and run "
                     "rules match 2 scans"):
    _predict(tiny_run[0], dataset, out, entities="")
  with pytest.raises(InputError, match=r"sub-001: FLAIR: session rule "
                     r"\(data.session, --session\) '03' matches no scan"):
    _predict(tiny_run[0], dataset, out, session="03")
  assert not out.exists() and not segmented


def test_a_bids_dataset_becomes_a_derivatives_dataset(
    tiny_run, dataset, tmp_path, segmented):
  out = tmp_path / "derivatives" / "pvl_jax"
  summary = _predict(tiny_run[0], dataset, out)
  assert not summary.failed and not summary.skipped
  assert [p.name for p in segmented] == [
      f"{stem}_FLAIR.nii.gz" for _, stem in CHOSEN.values()]
  description = json.loads((out / "dataset_description.json").read_text())
  assert description["DatasetType"] == "derivative"
  generated = description["GeneratedBy"][0]
  assert generated["Name"] == "pvl_jax" and generated["Version"]
  assert generated["ModelRun"] == {
      "Workdir": str(Path(tiny_run[0]).resolve()), "CheckpointStep": 4}
  rows = (out / "lesions.tsv").read_text().splitlines()
  assert rows[0].split("\t") == list(derivatives.TABLE_COLUMNS)
  assert [r.split("\t")[:2] for r in rows[1:]] == [
      ["sub-001", "ses-02"], ["sub-002", "n/a"], ["sub-003", "n/a"]]
  for (folder, stem), row in zip(CHOSEN.values(), rows[1:]):
    scan_path = dataset / folder / f"{stem}_FLAIR.nii.gz"
    mask_path, probseg_path, sidecar_path = _outputs(out, folder, stem)
    scan = nib.load(scan_path)
    mask, probseg = nib.load(mask_path), nib.load(probseg_path)
    assert mask.shape == probseg.shape == scan.shape
    np.testing.assert_array_equal(mask.affine, scan.affine)
    assert mask.get_data_dtype() == np.uint8
    assert probseg.get_data_dtype() == np.float32
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["Sources"] == [f"bids:raw:{folder}/{scan_path.name}"]
    assert sidecar["Threshold"] == 0.5
    assert set(sidecar["Postprocessing"]) == {"MinComponentVoxels",
                                              "MinDepthMm", "ChosenOn"}
    assert sidecar["ModelRun"] == generated["ModelRun"]
    assert sidecar["HandFunction"]["ProbabilityBad"] == pytest.approx(0.7)
    assert sidecar["QCWarnings"] == []
    volume, count = qc_report.lesion_stats(np.asarray(mask.dataobj),
                                           mask.affine)
    assert count > 0
    assert (sidecar["LesionVolumeMl"], sidecar["LesionCount"]) == (
        pytest.approx(volume, abs=1e-4), count)
    assert row.split("\t")[2:] == [f"{volume:.4f}", str(count), "0.7000"]
  report = (out / qc_report.REPORT_FILE).read_text()
  assert report.count("<tr") == 1 + 3  # the header and a row per scan
  assert report.count("data:image/png;base64,") == 3


def test_rerun_skips_complete_scans(tiny_run, dataset, tmp_path, segmented):
  out = tmp_path / "out"
  _predict(tiny_run[0], dataset, out)
  assert len(segmented) == 3
  again = _predict(tiny_run[0], dataset, out)
  assert len(segmented) == 3 and len(again.skipped) == 3
  assert not again.segmented
  # An incomplete scan (no sidecar: the run stopped while writing) is redone.
  _outputs(out, *CHOSEN["sub-003"])[2].unlink()
  third = _predict(tiny_run[0], dataset, out)
  assert [o.scans.participant_id for o in third.segmented] == ["sub-003"]
  assert len(third.skipped) == 2
  # The report and the table still cover every scan.
  assert (out / qc_report.REPORT_FILE).read_text().count("<tr") == 4
  assert (out / "lesions.tsv").read_text().count("\n") == 4


def _empty_scan(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  nifti.save_nifti(np.zeros((20, 20, 20), np.float32), np.eye(4), path,
                   np.float32)
  return path


def test_a_bad_scan_fails_alone(tiny_run, dataset, tmp_path, segmented):
  root = Path(shutil.copytree(dataset, tmp_path / "dataset"))
  bad = _empty_scan(root / "sub-004" / "anat" / "sub-004_acq-3D_FLAIR.nii.gz")
  out = tmp_path / "out"
  summary = _predict(tiny_run[0], root, out)
  assert [o.scans.participant_id for o in summary.segmented] == [
      "sub-001", "sub-002", "sub-003"]
  assert summary.failed == [
      (bad, f"{bad}: image is empty (every voxel is 0)")]
  assert not (out / "sub-004").exists()
  assert (out / "lesions.tsv").read_text().count("\n") == 4
  # Only the bad scan: nothing is written at all.
  only_bad = tmp_path / "only_bad"
  _empty_scan(only_bad / "sub-004" / "anat" / "sub-004_acq-3D_FLAIR.nii.gz")
  summary = _predict(tiny_run[0], only_bad, tmp_path / "out2")
  assert len(summary.failed) == 1
  assert not (tmp_path / "out2").exists()


def test_the_next_scan_is_preprocessed_while_one_is_segmented(
    tiny_run, dataset, tmp_path, monkeypatch):
  preprocessed = []
  second_started = threading.Event()

  def preprocessing(run, paths):
    preprocessed.append(Path(paths[0]))
    if len(preprocessed) == 2:
      second_started.set()
    return _checked(run, paths)

  def segmenting(run, paths):
    if Path(paths[0]) == preprocessed[0]:
      # Without the overlap the second scan's preprocessing starts only
      # after this returns, and the wait times out.
      assert second_started.wait(timeout=60)
    return _stand_in(run, paths)

  monkeypatch.setattr(native_space, "to_template", preprocessing)
  monkeypatch.setattr(native_space, "segment_template_scan", segmenting)
  summary = _predict(tiny_run[0], dataset, tmp_path / "out")
  assert len(summary.segmented) == len(preprocessed) == 3


@pytest.mark.parametrize("scans_ahead", [1, 2])
def test_preprocessing_runs_scans_ahead_in_order(monkeypatch, scans_ahead):
  paths = [f"sub-{k}" for k in range(5)]
  started, lock = [], threading.Lock()
  ahead_started = threading.Event()

  def preprocessing(run, path):
    with lock:
      started.append(path)
      if len(started) == 1 + scans_ahead:
        ahead_started.set()
    return path

  monkeypatch.setattr(native_space, "to_template", preprocessing)
  given = []
  for k, future in enumerate(
      native_space.preprocessed_ahead(None, paths, scans_ahead)):
    if k == 0:
      # The scans after this one are being preprocessed while it is used.
      assert ahead_started.wait(timeout=60)
      with lock:
        # Never more than `scans_ahead` beyond the scan handed out.
        assert len(started) == 1 + scans_ahead
    given.append(future.result())
  assert given == paths


def test_no_scan_matching_the_selection(tiny_run, dataset, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(InputError) as info:
    _predict(tiny_run[0], dataset, out, entities="acq-4D")
  assert str(info.value) == (
      f"{dataset}: no FLAIR scan in the BIDS folder with acq-4D "
      "(--bids_filter) (looked for sub-*/[ses-*/]anat/sub-*_FLAIR.nii[.gz])")
  assert not out.exists()


def test_output_of_another_model_is_refused(tiny_run, dataset, tmp_path,
                                            segmented):
  out = tmp_path / "out"
  _predict(tiny_run[0], dataset, out)
  path = out / "dataset_description.json"
  content = json.loads(path.read_text())
  content["GeneratedBy"][0]["ModelRun"]["CheckpointStep"] = 99
  path.write_text(json.dumps(content))
  before = sorted(p for p in out.rglob("*"))
  with pytest.raises(InputError, match=(
      f"{path}: the folder holds the derivatives of another model")):
    _predict(tiny_run[0], dataset, out)
  assert sorted(p for p in out.rglob("*")) == before
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match="not empty and not a pvl_jax "
                     "derivatives folder"):
    _predict(tiny_run[0], dataset, tmp_path / "other")


def test_is_bids_dataset(dataset, raw_cohort, tmp_path):
  assert bids_prediction.is_bids_dataset(dataset)
  loose = tmp_path / "loose"
  loose.mkdir()
  shutil.copy(raw_cohort / "sub-001" / "anat" / "sub-001_FLAIR.nii.gz",
              loose)
  assert not bids_prediction.is_bids_dataset(loose)
  assert not bids_prediction.is_bids_dataset(loose / "sub-001_FLAIR.nii.gz")


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pvl_jax.predict", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900,
                        check=False)


@pytest.mark.slow
def test_cli_on_a_bids_dataset(tiny_run, dataset, tmp_path):
  """The real command: progress bar, outputs, a bad scan, exit status."""
  root = Path(shutil.copytree(dataset, tmp_path / "dataset"))
  for name in ("sub-002", "sub-003"):
    shutil.rmtree(root / name)
  bad = _empty_scan(root / "sub-004" / "anat" / "sub-004_acq-3D_FLAIR.nii.gz")
  out = tmp_path / "out"
  args = (f"--workdir={tiny_run[0]}", f"--input={root}", f"--output={out}",
          "--session=last", "--bids_filter=acq-3D")
  result = _cli(*args)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "predicting" in result.stderr  # the progress bar, rate and ETA
  assert re.search(r"<\d\d:\d\d, +\d+\.\d+s/scan\]", result.stderr)
  assert result.stderr.splitlines()[-1] == (
      f"error: {bad}: image is empty (every voxel is 0)")
  assert "1 scan(s) segmented" in result.stdout and "1 failed" in (
      result.stdout)
  folder, stem = CHOSEN["sub-001"]
  np.testing.assert_array_equal(
      nib.load(_outputs(out, folder, stem)[0]).affine,
      nib.load(root / folder / f"{stem}_FLAIR.nii.gz").affine)
  shutil.rmtree(root / "sub-004")
  again = _cli(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "0 scan(s) segmented" in again.stdout
  assert "1 skipped (outputs complete)" in again.stdout


def test_one_file_per_modality(tmp_path):
  """A BIDS dataset's FLAIR and T1w files are stacked in the run's order."""
  run = types.SimpleNamespace(modalities=("FLAIR", "T1w"))
  rng = np.random.default_rng(0)
  paths = []
  for name, affine in (("FLAIR", np.eye(4)), ("T1w", np.eye(4)),
                       ("T1w_moved", np.diag([2.0, 1, 1, 1]))):
    paths.append(tmp_path / f"{name}.nii.gz")
    nifti.save_nifti(rng.uniform(1, 2, (8, 9, 10)).astype(np.float32),
                     affine, paths[-1], np.float32)
  data, affine = native_space.load_scan(run, paths[:2])
  assert data.shape == (8, 9, 10, 2)
  np.testing.assert_allclose(data[..., 1],
                             nifti.load_volume(paths[1])[0])
  with pytest.raises(InputError, match=str(paths[2])):
    native_space.load_scan(run, [paths[0], paths[2]])
