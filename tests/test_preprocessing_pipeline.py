"""Preprocessing pipeline tests on raw-space synthetic subjects.

The raw cohort is the generator's raw mode (`raw_cohort` in conftest.py: two
subjects at 2 mm, one with thick slices), whose ground truth
`benchmarks.preprocessing` scores the steps against.
"""

import hashlib
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

from absl import app
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks import preprocessing as benchmark
from preprocessing import bids
from preprocessing import geometry
from preprocessing import pipeline
from preprocessing import qc
from preprocessing import template
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from preprocessing.synthetic import cohort
from preprocessing.synthetic.params import CohortParams

REPO = Path(__file__).resolve().parents[1]
SPACE = template.TEMPLATE_SPACE


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "preprocessing.run", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)


def _tree_hash(root: Path) -> str:
  """Hash of every file's relative path, bytes and modification time."""
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*")):
    if path.is_file():
      digest.update(f"{path.relative_to(root)}:{path.stat().st_mtime_ns}"
                    .encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()


def _copy_subject(source: Path, pid: str, root: Path, new_pid: str) -> None:
  """Copies a raw subject's scan and lesion mask under another id."""
  for folder in (Path(), Path("derivatives", "lesions")):
    for path in (source / folder / pid / "anat").glob("*.nii.gz"):
      target = (root / folder / new_pid / "anat" /
                path.name.replace(pid, new_pid))
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(path, target)


def _no_partial_outputs(out: Path, pid: str) -> bool:
  """No file or folder of `pid`, and no temporary folder, under `out`."""
  leftovers = [p for p in out.rglob("*") if pid in p.name or ".tmp-" in p.name]
  return not leftovers


@pytest.fixture(scope="module")
def prep(raw_cohort, tmp_path_factory):
  """(output dir, CLI result, raw hash before) of one run at 2 mm."""
  before = _tree_hash(raw_cohort)
  out = tmp_path_factory.mktemp("prep") / "prep"
  result = _run_cli(f"--bids={raw_cohort}", f"--out={out}",
                    "--target_spacing=2", "--num_workers=2")
  return out, result, before


def test_image_conversion_matches_itk_geometry(raw_cohort):
  path = raw_cohort / "sub-001" / "anat" / "sub-001_FLAIR.nii.gz"
  data, affine = nifti.load_volume(path)
  image = geometry.image_from_array(data, affine)
  itk = sitk.ReadImage(str(path))
  np.testing.assert_allclose(image.GetOrigin(), itk.GetOrigin(), atol=1e-3)
  np.testing.assert_allclose(image.GetDirection(), itk.GetDirection(),
                             atol=1e-5)
  np.testing.assert_allclose(image.GetSpacing(), itk.GetSpacing(), rtol=1e-6)
  np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                sitk.GetArrayFromImage(itk))
  back, back_affine = geometry.array_from_image(image)
  np.testing.assert_array_equal(back, data)
  np.testing.assert_allclose(back_affine, affine, atol=1e-9)


def test_template_grid_is_nilearns():
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  for mm in (1, 2):
    nilearn_mask = datasets.load_mni152_brain_mask(resolution=mm)
    grid = template.template_grid(float(mm))
    assert grid.GetSize() == nilearn_mask.shape
    np.testing.assert_allclose(geometry.image_affine(grid),
                               nilearn_mask.affine)


def test_cli_writes_the_layout(prep, raw_cohort):
  out, result, raw_hash = prep
  assert result.returncode == 0, result.stderr
  assert "2 subjects in" in result.stdout
  assert _tree_hash(raw_cohort) == raw_hash
  description = json.loads((out / "dataset_description.json").read_text())
  assert description["DatasetType"] == "derivative"
  assert description["GeneratedBy"][0]["Name"] == pipeline.GENERATED_BY
  assert description["SourceDatasets"] == [{"URL": raw_cohort.as_uri()}]
  assert ((out / "participants.tsv").read_text()
          == (raw_cohort / "participants.tsv").read_text())
  grid = template.template_grid(2.0)
  for pid in ("sub-001", "sub-002"):
    image, affine = nifti.load_volume(
        out / pid / "anat" / f"{pid}_FLAIR.nii.gz")
    brain = nifti.load_mask(
        out / pid / "anat" / f"{pid}_desc-brain_mask.nii.gz",
        reference_shape=image.shape, reference_affine=affine)
    lesion_path = (out / "derivatives" / "lesions" / pid / "anat" /
                   f"{pid}_label-lesion_mask.nii.gz")
    nifti.load_mask(lesion_path, reference_shape=image.shape,
                       reference_affine=affine)
    assert nib.load(lesion_path).get_data_dtype() == np.uint8
    # A crop of the 2 mm template grid: same axes, origin on a grid voxel.
    full = geometry.image_affine(grid)
    np.testing.assert_allclose(affine[:3, :3], full[:3, :3])
    start = np.linalg.solve(full[:3, :3], affine[:3, 3] - full[:3, 3])
    np.testing.assert_allclose(start, np.round(start), atol=1e-4)
    # Skull-stripped and z-scored inside the brain (robust statistics).
    assert abs(image[brain].mean()) < 0.1
    assert abs(image[brain].std() - 1) < 0.15
    assert not image[~brain].any()
    native = nifti.load_mask(
        out / pid / "native" / f"{pid}_desc-brain_mask.nii.gz")
    scan, _ = nifti.load_volume(raw_cohort / pid / "anat" /
                                   f"{pid}_FLAIR.nii.gz")
    assert native.shape == scan.shape
    assert (out / "qc" / f"{pid}.png").stat().st_size > 10_000
  steps = (out / "qc" / "steps.csv").read_text().splitlines()
  assert steps[0].split(",") == list(qc.COLUMNS)
  assert [line.split(",")[:2] for line in steps[1:]] == [
      ["sub-001", "ok"], ["sub-002", "ok"]]


def test_steps_score_against_ground_truth(prep, raw_cohort):
  """The benchmark's figures at 2 mm (the targets are for ~1 mm scans)."""
  out, result, _ = prep
  assert result.returncode == 0, result.stderr
  scores = {pid: benchmark.score_subject(raw_cohort, out, pid)
            for pid in ("sub-001", "sub-002")}
  for score in scores.values():
    assert score["brain_dice"] > 0.95, score
    assert score["cv_cut"] > 0.4, score
    assert score["cv_n4"] < 1.6 * score["cv_true"], score
    # Most of what the lesion masks lose, the scan's grid loses.
    assert score["lesion_dice"] > score["lesion_ceil"] - 0.1, score
  # 2.4 mm voxels, and 6 mm slices, which blur the anatomy along one axis.
  assert scores["sub-002"]["reg_mm"] < 1.0, scores
  assert scores["sub-001"]["reg_mm"] < 2.5, scores
  voxel_sizes = {pid: benchmark.voxel_size(raw_cohort, pid)
                 for pid in scores}
  table = benchmark.format_table(scores, voxel_sizes)
  assert "1.8x1.8x6.0 mm (n=1)" in table and "\nmean " in table
  # The time target: the run's wall time per subject (two workers, two
  # subjects, so about one subject's time), not the per-worker mean.
  run = json.loads((out / pipeline.RUN_FILE).read_text())
  assert run["subjects_computed"] == run["num_workers"] == 2
  wall = benchmark.wall_seconds_per_subject(out)
  assert wall == pytest.approx(run["seconds"] / 2)
  slowest = max(score["seconds"] for score in scores.values())
  assert slowest / 2 < wall < slowest + 30, (wall, scores)
  lines = benchmark.format_table(scores, voxel_sizes, wall).splitlines()
  assert f"  wall_s/subj  {wall:8.4f} <= 20" in "\n".join(lines)
  assert not any(line.startswith("  seconds ") for line in lines)


def test_benchmark_scores_run_predictions_against_the_truth(prep, raw_cohort,
                                                          tmp_path):
  """A run's predictions (here the preprocessed masks) against the truth.

  At 2 mm the output grid is the template's, cropped: the reference Dice
  puts each mask into the template grid at its integer offset.
  """
  out, _, _ = prep
  run = tmp_path / "run"
  (run / "predictions").mkdir(parents=True)
  expected = {}
  for pid in ("sub-001", "sub-002"):
    mask_path = (out / "derivatives" / "lesions" / pid / "anat" /
                 f"{pid}_label-lesion_mask.nii.gz")
    shutil.copy(mask_path, run / "predictions" / f"{pid}_pred.nii.gz")
    mask, affine = nifti.load_volume(mask_path)
    truth, truth_affine = nifti.load_volume(
        raw_cohort / "derivatives" / "synthetic" / pid / "anat" /
        f"{pid}_space-{SPACE}_label-lesion_mask.nii.gz")
    offset = np.linalg.solve(truth_affine, affine)[:3, 3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-4)
    placed = np.zeros(truth.shape, bool)
    region = tuple(slice(int(round(o)), int(round(o)) + n)
                   for o, n in zip(offset, mask.shape))
    placed[region] = mask > 0.5
    expected[pid] = 2 * (placed & (truth > 0.5)).sum() / (
        placed.sum() + (truth > 0.5).sum())
  scores = benchmark.score_predictions(raw_cohort, run)
  assert scores == pytest.approx(expected, abs=1e-9)
  assert all(0.3 < dice < 1 for dice in scores.values()), scores
  table = benchmark.format_run_table(scores, {"sub-001": 0.5})
  assert table.splitlines()[1].split() == [
      "sub-001", "0.5000", f"{scores['sub-001']:.4f}"]
  assert "nan" in table.splitlines()[2]  # sub-002: the run did not report
  # A folder without predictions is not a finished run.
  with pytest.raises(app.UsageError, match="no \\*_pred.nii.gz"):
    benchmark.score_predictions(raw_cohort, tmp_path)


def test_transform_takes_masks_back_to_native(prep, raw_cohort):
  """The saved transform's inverse maps template-space outputs to native."""
  out, _, _ = prep
  pid = "sub-001"
  transform = sitk.ReadTransform(
      str(out / pid / "xfm" / f"{pid}_from-native_to-{SPACE}_xfm.tfm"))
  data, affine = nifti.load_volume(out / pid / "anat" /
                                      f"{pid}_desc-brain_mask.nii.gz")
  scan, scan_affine = nifti.load_volume(raw_cohort / pid / "anat" /
                                           f"{pid}_FLAIR.nii.gz")
  back = sitk.Resample(geometry.image_from_array(data, affine),
                       geometry.image_from_array(scan, scan_affine),
                       transform.GetInverse(), sitk.sitkNearestNeighbor)
  back = sitk.GetArrayFromImage(back).T > 0
  native = nifti.load_mask(out / pid / "native" /
                              f"{pid}_desc-brain_mask.nii.gz")
  assert 2 * (back & native).sum() / (back.sum() + native.sum()) > 0.95


def test_output_is_a_cohort_for_training(prep):
  from preprocessing import tfds_builder  # pylint: disable=g-import-not-at-top
  out, _, _ = prep
  subjects = bids.load_cohort(out)
  assert [s.participant_id for s in subjects] == ["sub-001", "sub-002"]
  first = subjects[0]
  assert first.brain_mask_path == (out / "sub-001" / "anat" /
                                   "sub-001_desc-brain_mask.nii.gz")
  example = tfds_builder.encode_subject(
      first, tfds_builder.PVLCohortConfig(name="test"))
  assert example["lesion_mask"].sum() > 0
  np.testing.assert_allclose(example["spacing"], [2, 2, 2])


def test_rerun_is_cached_and_writes_nothing(prep, raw_cohort):
  out, _, _ = prep
  before = _tree_hash(out)
  summary = pipeline.preprocess_cohort(
      raw_cohort, out, pipeline.Params(target_spacing=2.0))
  assert summary.cached == summary.processed == ["sub-001", "sub-002"]
  assert _tree_hash(out) == before


def test_changed_parameters_change_the_cache_key(raw_cohort):
  subject = bids.load_cohort(raw_cohort)[0]
  keys = {pipeline.inputs_hash(raw_cohort, subject, params) for params in (
      pipeline.Params(), pipeline.Params(target_spacing=2.0),
      pipeline.Params(mask_threshold=0.5),
      pipeline.Params(registration="affine"))}
  assert len(keys) == 4


def test_unknown_registration_refused(raw_cohort, tmp_path):
  with pytest.raises(InputError, match="registration: one of rigid, affine"):
    pipeline.preprocess_cohort(raw_cohort, tmp_path / "out",
                               pipeline.Params(registration="elastic"))
  assert not (tmp_path / "out").exists()


def test_dataset_prepare_preprocesses_raw_cohort(prep, raw_cohort, tmp_path,
                                                 monkeypatch):
  """configs: data.preprocess.enabled runs the pipeline, then builds TFDS."""
  from configs import joint  # pylint: disable=g-import-not-at-top
  from pvl_jax.data import dataset  # pylint: disable=g-import-not-at-top
  out, _, _ = prep
  runs = []
  real = pipeline.preprocess_cohort

  def seeded(bids_dir, out_dir, params, **kwargs):
    # Seed the cache with the CLI's output: same inputs and parameters, so
    # the pipeline must find both subjects up to date.
    shutil.copytree(out, out_dir, copy_function=shutil.copy2)
    summary = real(bids_dir, out_dir, params, **kwargs)
    runs.append(summary)
    return summary

  monkeypatch.setattr(pipeline, "preprocess_cohort", seeded)
  config = joint.get_config("demo")
  config.data.cohort_dir = str(raw_cohort)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.num_folds = 2
  config.data.preprocess.enabled = True
  builder = dataset.prepare(config)
  assert runs[0].cached == ["sub-001", "sub-002"]
  assert sum(len(builder.as_data_source(f"fold{k}")) for k in (0, 1)) == 2
  # A preprocessed cohort is used as it is.
  assert dataset.preprocessed_cohort(config, out) == out


def _corrupt(kind: str, raw: Path, pid: str) -> Path:
  """Breaks one of a raw subject's files; returns the broken file."""
  scan = raw / pid / "anat" / f"{pid}_FLAIR.nii.gz"
  lesion = (raw / "derivatives" / "lesions" / pid / "anat" /
            f"{pid}_label-lesion_mask.nii.gz")
  data, affine = nifti.load_volume(scan)
  mask, _ = nifti.load_volume(lesion)
  if kind == "truncated":
    scan.write_bytes(scan.read_bytes()[:5000])
    return scan
  if kind == "4d":
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), affine), scan)
    return scan
  if kind == "nan":
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, affine), scan)
    return scan
  if kind == "mask_shape":
    nib.save(nib.Nifti1Image(mask[:-1].astype(np.uint8), affine), lesion)
    return lesion
  if kind == "mask_affine":
    shifted = affine.copy()
    shifted[:3, 3] += 5
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), shifted), lesion)
    return lesion
  assert kind == "non_binary"
  nib.save(nib.Nifti1Image(mask.astype(np.float32) * 0.7, affine), lesion)
  return lesion


BAD_FILES = {
    "truncated": "truncated gzip stream",
    "4d": "expected a 3D image volume",
    "nan": "1 NaN",
    "mask_shape": "differs from shape",
    "mask_affine": "affine differs",
    "non_binary": "holds values other than 0, 1",
}


@pytest.mark.parametrize("kind", ["truncated", "nan", "mask_affine"])
def test_bad_file_stops_the_run(kind, raw_cohort, tmp_path):
  raw = tmp_path / "raw"
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  (raw / "participants.tsv").write_text("participant_id\thand_function\n"
                                        "sub-001\t1\n")
  broken = _corrupt(kind, raw, "sub-001")
  before = _tree_hash(raw)
  out = tmp_path / "out"
  result = _run_cli(f"--bids={raw}", f"--out={out}", "--num_workers=1")
  assert result.returncode == 2
  # The progress bar comes first on stderr.
  error = result.stderr[result.stderr.index("\nerror: ") + 1:]
  assert error.startswith(f"error: {broken}: ")
  assert BAD_FILES[kind] in error
  assert "Traceback" not in result.stderr
  assert _tree_hash(raw) == before
  assert _no_partial_outputs(out, "sub-001")


def test_skip_failed_reports_every_bad_file_and_continues(prep, raw_cohort,
                                                          tmp_path):
  raw = tmp_path / "raw"
  rows = ["participant_id\thand_function", "sub-001\t1"]
  # sub-001 with its outputs from the CLI run: up to date, not recomputed.
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  out = tmp_path / "out"
  shutil.copytree(prep[0], out, copy_function=shutil.copy2)
  broken = {}
  for i, kind in enumerate(BAD_FILES, start=2):
    pid = f"sub-{i:03d}"
    _copy_subject(raw_cohort, "sub-002", raw, pid)
    broken[pid] = (kind, _corrupt(kind, raw, pid))
    rows.append(f"{pid}\t0")
  (raw / "participants.tsv").write_text("\n".join(rows) + "\n")
  before = _tree_hash(raw)
  result = _run_cli(f"--bids={raw}", f"--out={out}", "--target_spacing=2",
                    "--skip_failed")
  assert result.returncode == 0, result.stderr
  assert (f"1 subjects in {out} (1 up to date already, {len(BAD_FILES)} "
          "skipped)") in result.stdout
  assert _tree_hash(raw) == before
  steps = {line.split(",")[0]: line
           for line in (out / "qc" / "steps.csv").read_text().splitlines()}
  assert steps["sub-001"].startswith("sub-001,ok,")
  for pid, (kind, path) in broken.items():
    assert f"skipped {pid}: {path}: " in result.stderr
    assert BAD_FILES[kind] in steps[pid] and "failed: " in steps[pid]
    assert _no_partial_outputs(out, pid)
  assert bids.read_participants(out / "participants.tsv") == {"sub-001": 1}
  assert [s.participant_id for s in bids.load_cohort(out)] == ["sub-001"]


def test_non_binary_mask_is_binarised_with_a_threshold(raw_cohort, tmp_path):
  raw = tmp_path / "raw"
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  (raw / "participants.tsv").write_text("participant_id\thand_function\n"
                                        "sub-001\t1\n")
  _corrupt("non_binary", raw, "sub-001")  # values 0 and 0.7
  subject = bids.load_cohort(raw)[0]
  out = tmp_path / "out"
  with pytest.raises(InputError, match="holds values other than 0, 1"):
    pipeline.preprocess_subject(subject, out, pipeline.Params(), "digest")
  assert _no_partial_outputs(out, "sub-001")
  record = pipeline.preprocess_subject(
      subject, out, pipeline.Params(target_spacing=2.0, mask_threshold=0.5),
      "digest")
  assert record["qc"]["lesion_volume_template_ml"] > 0
  lesion = nifti.load_mask(out / "derivatives" / "lesions" / "sub-001" /
                              "anat" / "sub-001_label-lesion_mask.nii.gz")
  assert lesion.sum() > 0


def test_ignore_label_is_kept_apart_from_the_lesions(prep, raw_cohort,
                                                    tmp_path):
  """Label-2 voxels come out as 2 and leave the lesion voxels unchanged."""
  raw = tmp_path / "raw"
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  (raw / "participants.tsv").write_text("participant_id\thand_function\n"
                                        "sub-001\tn/a\n")
  path = (raw / "derivatives" / "lesions" / "sub-001" / "anat" /
          "sub-001_label-lesion_mask.nii.gz")
  mask, affine = nifti.load_volume(path)
  brain = nifti.load_mask(raw_cohort / "derivatives" / "synthetic" /
                          "sub-001" / "anat" / "sub-001_desc-brain_mask.nii.gz")
  centre = np.argwhere(brain & (mask == 0)).mean(axis=0).astype(int)
  block = tuple(slice(c - 2, c + 3) for c in centre)
  assert not mask[block].any()
  mask[block] = 2
  path.unlink()
  nifti.save_nifti(mask.astype(np.uint8), affine, path, np.uint8)
  subject = bids.load_cohort(raw, require_label_column=False)[0]
  out = tmp_path / "out"
  with pytest.raises(InputError, match="holds values other than 0, 1"):
    pipeline.preprocess_subject(subject, out, pipeline.Params(
        target_spacing=2.0), "digest")
  pipeline.preprocess_subject(subject, out, pipeline.Params(
      target_spacing=2.0, ignore_label=2), "digest")
  name = Path("derivatives", "lesions", "sub-001", "anat",
              "sub-001_label-lesion_mask.nii.gz")
  labels, _ = nifti.load_volume(out / name)
  clean, _ = nifti.load_volume(prep[0] / name)
  assert set(np.unique(labels)) == {0, 1, 2}
  np.testing.assert_array_equal(labels == 1, clean == 1)
  # 125 native voxels of the scan's size, on the 2 mm grid.
  native_ml = 125 * abs(np.linalg.det(affine[:3, :3])) / 1000
  assert (labels == 2).sum() * 8 / 1000 == pytest.approx(native_ml, rel=0.5)


@pytest.mark.parametrize("tsv, problem", [
    ("participant_id\thand_function\nsub-001\t1\nsub-009\t0\n",
     "sub-009 has no FLAIR scan"),
    ("participant_id\thand_function\n", "no participants"),
    ("participant_id\thand_function\nsub-001\t1\nsub-001\t1\n",
     "duplicate participant ids"),
    ("participant_id\thand_function\nsub-001\t1\n../x\t0\n",
     "'../x' is not of the form sub-<label>"),
])
def test_bad_cohort_stops_before_any_work(tsv, problem, raw_cohort, tmp_path):
  raw = tmp_path / "raw"
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  (raw / "participants.tsv").write_text(tsv)
  before = _tree_hash(raw)
  out = tmp_path / "out"
  result = _run_cli(f"--bids={raw}", f"--out={out}", "--skip_failed")
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and problem in result.stderr
  assert _tree_hash(raw) == before
  assert not out.exists()


def test_scan_without_row(raw_cohort, tmp_path):
  raw = tmp_path / "raw"
  _copy_subject(raw_cohort, "sub-001", raw, "sub-001")
  _copy_subject(raw_cohort, "sub-002", raw, "sub-002")
  (raw / "participants.tsv").write_text("participant_id\thand_function\n"
                                        "sub-001\t1\n")
  result = _run_cli(f"--bids={raw}", f"--out={tmp_path / 'out'}")
  assert result.returncode == 2
  assert "no row for sub-002 (found in " in result.stderr


@pytest.mark.parametrize("where", ["raw", "parent", "foreign"])
def test_unsafe_output_folder_refused(where, raw_cohort, tmp_path):
  out = {"raw": raw_cohort, "parent": raw_cohort.parent,
         "foreign": tmp_path}[where]
  (tmp_path / "notes.txt").write_text("not ours")
  with pytest.raises(InputError, match="must not be|not an output of"):
    pipeline.preprocess_cohort(raw_cohort, out)
  assert (tmp_path / "notes.txt").read_text() == "not ours"


@pytest.mark.slow
def test_benchmark_at_1mm(tmp_path):
  """The targets on three 1 x 1 x 1.2 mm synthetic scans, through the CLIs."""
  raw = cohort.generate_cohort(
      tmp_path / "raw", 3, seed=11,
      params=CohortParams(resolution_mm=1), num_workers=2,
      progress=False)
  out = tmp_path / "prep"
  result = _run_cli(f"--bids={raw}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  table = subprocess.run(
      [sys.executable, "-m", "benchmarks.preprocessing", f"--bids={raw}",
       f"--prep={out}"], cwd=REPO, capture_output=True, text=True,
      timeout=600, check=True).stdout
  print(table)
  assert "1.0x1.0x1.2 mm (n=3)" in table
  scores = [benchmark.score_subject(raw, out, pid)
            for pid in ("sub-001", "sub-002", "sub-003")]
  for score in scores:
    assert score["reg_mm"] <= 1.0, score
    assert score["brain_dice"] >= 0.95, score
    assert score["lesion_dice"] > score["lesion_ceil"] - 0.1, score
  assert np.mean([score["cv_cut"] for score in scores]) >= 0.5, scores


@pytest.mark.slow
def test_changed_input_is_processed_again(prep, raw_cohort, tmp_path):
  out = tmp_path / "prep"
  shutil.copytree(prep[0], out, copy_function=shutil.copy2)
  raw = tmp_path / "raw"
  shutil.copytree(raw_cohort, raw, copy_function=shutil.copy2)
  params = pipeline.Params(target_spacing=2.0)
  # A moved cohort (same relative paths, sizes, times) is up to date.
  summary = pipeline.preprocess_cohort(raw, out, params)
  assert summary.cached == ["sub-001", "sub-002"]
  os.utime(raw / "derivatives" / "lesions" / "sub-002" / "anat" /
           "sub-002_label-lesion_mask.nii.gz")
  summary = pipeline.preprocess_cohort(raw, out, params)
  assert summary.cached == ["sub-001"]
  assert summary.processed == ["sub-001", "sub-002"]
  assert bids.read_participants(out / "participants.tsv") == {
      "sub-001": 1, "sub-002": 0}
