"""`pvl_jax.predict` on a raw-space scan: geometry, outputs, bad input.

The model is the session's 4-step tiny run, so its masks say nothing about
accuracy. The geometry is checked without it: the known template-space
lesion mask, sent back onto the scan's grid, must land on the scan's own
lesion mask.
"""

import dataclasses
import gzip
import io
import json
from pathlib import Path
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from configs import joint
from preprocessing import geometry
from preprocessing import pipeline
from preprocessing import template
from preprocessing import template_space
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from preprocessing.synthetic import acquisition
from preprocessing.synthetic import cohort as synthetic_cohort
from pvl_jax import predict
from pvl_jax.data import dataset
from pvl_jax.inference import native_space
from pvl_jax.inference import trained_run

REPO = Path(__file__).resolve().parents[1]
PID = "sub-001"
SCAN = Path(PID, "anat", f"{PID}_FLAIR.nii.gz")
NATIVE_LESIONS = Path("derivatives", "lesions", PID, "anat",
                      f"{PID}_label-lesion_mask.nii.gz")
TRUTH = Path("derivatives", "synthetic", PID, "anat")
TEMPLATE_LESIONS = TRUTH / (
    f"{PID}_space-{template.TEMPLATE_SPACE}_label-lesion_mask.nii.gz")
POSE = TRUTH / f"{PID}_from-{template.TEMPLATE_SPACE}_to-native_xfm.tfm"
# A subject with lesions large enough to score (about 1000 native voxels).
RAW_SEED = 1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
  """One raw synthetic subject (head, pose, bias field, noise).

  Its grid is oblique, of 2 x 2 x 2.4 mm voxels stored L-I-A (not RAS).
  """
  return synthetic_cohort.generate_cohort(
      tmp_path_factory.mktemp("raw") / "cohort", 1, seed=RAW_SEED,
      progress=False, acquisition_params=acquisition.AcquisitionParams(
          spacings_mm=((1.0, 1.0, 1.2),), spacing_probs=(1.0,),
          orientations=("LIA",)))


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory) -> Path:
  """A copy of the tiny run, with windows that do not overlap.

  Predict takes its overlap from the run's config.json; without overlap the
  sliding window needs about a third of the windows, and this test checks
  geometry, not accuracy.
  """
  workdir = tmp_path_factory.mktemp("run") / "run"
  shutil.copytree(tiny_run[0] / "checkpoints", workdir / "checkpoints")
  shutil.copy(tiny_run[0] / "results.json", workdir)
  config = json.loads((tiny_run[0] / "config.json").read_text())
  config["inference"].update(overlap=0.0, batch_size=8)
  (workdir / "config.json").write_text(json.dumps(config))
  return workdir


def _record_to_template(patch: pytest.MonkeyPatch
                        ) -> list[template_space.TemplateScans]:
  """Makes every `to_template` result (predict's preprocessing) be kept."""
  results = []
  to_template = template_space.to_template

  def recorded(*args, **kwargs):
    results.append(to_template(*args, **kwargs))
    return results[-1]

  patch.setattr(template_space, "to_template", recorded)
  return results


@pytest.fixture(scope="module")
def predicted(run_dir, raw, tmp_path_factory):
  """(output dir, stdout, the scan's `to_template` result) of one predict."""
  out = tmp_path_factory.mktemp("predicted")
  stdout = io.StringIO()
  with pytest.MonkeyPatch.context() as patch:
    captured = _record_to_template(patch)
    predict.predict_files(run_dir, raw / SCAN, out / "mask.nii.gz",
                          out / "prob.nii.gz", stdout=stdout)
  return out, stdout.getvalue(), captured[0]


def test_outputs_are_on_the_scans_grid(predicted, raw):
  out, stdout, _ = predicted
  scan = nib.load(raw / SCAN)
  assert nib.aff2axcodes(scan.affine) != ("R", "A", "S")
  assert np.count_nonzero(scan.affine[:3, :3]) > 3  # oblique
  for name, dtype in (("mask.nii.gz", np.uint8), ("prob.nii.gz", np.float32)):
    image = nib.load(out / name)
    assert image.shape == scan.shape
    np.testing.assert_array_equal(image.affine, scan.affine)
    assert image.get_data_dtype() == dtype
  mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj)
  prob = np.asarray(nib.load(out / "prob.nii.gz").dataobj)
  assert set(np.unique(mask)) <= {0, 1}
  np.testing.assert_array_equal(mask, prob > 0.5)
  assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz",
                                                   "prob.nii.gz"]
  assert f"{raw / SCAN} -> {out / 'mask.nii.gz'}" in stdout
  assert "P(bad hand function) = " in stdout
  assert "chosen on validation" in stdout


def _template_lesions_on(grid: sitk.Image, raw: Path) -> np.ndarray:
  """The known template-space lesion mask on a crop of the template grid."""
  truth = sitk.ReadImage(str(raw / TEMPLATE_LESIONS))
  on_grid = sitk.GetArrayFromImage(sitk.Resample(
      truth, grid, sitk.Transform(), sitk.sitkNearestNeighbor)).T
  assert on_grid.sum() == sitk.GetArrayFromImage(truth).sum() > 0
  return on_grid


def test_back_transform_with_the_true_pose_is_exact(predicted, raw):
  """The geometry of the way back alone: grid, crop, affines, directions."""
  _, _, scans = predicted
  data, affine = nifti.load_volume(raw / SCAN)
  back = native_space.to_native(
      _template_lesions_on(scans.grid, raw), scans.grid,
      sitk.ReadTransform(str(raw / POSE)), data.shape, affine) > 0.5
  assert _dice(back, nifti.load_mask(raw / NATIVE_LESIONS)) >= 0.95


def test_template_origin_is_the_crop_start_in_the_template(predicted,
                                                          run_dir):
  """Where the located head reads the map: the crop's voxel 0 in the grid."""
  run = trained_run.load(run_dir)
  grid = predicted[2].grid
  origin = native_space.template_origin(run, grid, None)
  full = template.template_grid(run.template_spacing)
  np.testing.assert_allclose(full.TransformIndexToPhysicalPoint(origin),
                             grid.GetOrigin(), atol=1e-4)
  assert all(0 <= o and o + n <= f for o, n, f in
             zip(origin, grid.GetSize(), full.GetSize()))
  # A located head trained on the blocks of another grid cannot read it.
  config = run.config.copy_and_resolve_references()
  config.model.cls_template_shape = (28, 32, 24)
  with pytest.raises(InputError, match=r"located hand-function head reads "
                     r"blocks of a \(28, 32, 24\) template grid"):
    native_space.template_origin(dataclasses.replace(run, config=config),
                                 grid, None)
  # A located head on the box of its records' lattice (a cohort without the
  # template's own grid) places the scan in that box.
  config.model.cls_head = "located"
  box = geometry.image_affine(full)
  box[:3, 3] += box[:3, :3] @ (-3, 2, 1)
  config.model.cls_template_affine = box.tolist()
  located = dataclasses.replace(run, config=config)
  assert native_space.template_origin(located, grid, None) == (
      origin[0] + 3, origin[1] - 2, origin[2] - 1)
  box[:3, 3] += box[:3, :3] @ (0, 0.5, 0)
  config.model.cls_template_affine = box.tolist()
  with pytest.raises(InputError, match=r"reads blocks of a \(28, 32, 24\) "
                     r"template grid, but the scan was brought to a grid off "
                     r"its lattice"):
    native_space.template_origin(located, grid, None)


def test_template_lesions_land_on_the_native_lesions(predicted, raw):
  """Predict's own way back, through the registration it estimated."""
  _, _, scans = predicted
  data, affine = nifti.load_volume(raw / SCAN)
  back = native_space.to_native(_template_lesions_on(scans.grid, raw), scans.grid,
                           scans.to_native, data.shape, affine) > 0.5
  # Registration is off by about 1 mm on these scans (preprocessing.benchmark
  # scores it), which small lesions feel: 0.90 measured.
  assert _dice(back, nifti.load_mask(raw / NATIVE_LESIONS)) >= 0.8


def _save(path: Path, data: np.ndarray) -> Path:
  nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2, 2, 2, 1.0])),
           path)
  return path


def _truncated(path: Path) -> Path:
  payload = gzip.compress(nib.Nifti1Image(
      np.ones((20, 20, 20), np.float32), np.eye(4)).to_bytes())
  path.write_bytes(payload[:len(payload) // 2])
  return path


BAD_SCANS = {
    "4d": (lambda p: _save(p, np.ones((20, 20, 20, 2))),
           "expected a 3D FLAIR image volume, got 4D data"),
    "2d": (lambda p: _save(p, np.ones((20, 20))), "got 2D data"),
    "single_slice": (lambda p: _save(p, np.ones((20, 20, 1))),
                     "a single slice"),
    "empty": (lambda p: _save(p, np.zeros((20, 20, 20))),
              "image is empty (every voxel is 0)"),
    "truncated": (_truncated, "truncated gzip stream"),
}


@pytest.mark.parametrize("kind", BAD_SCANS)
def test_bad_scan_is_named_and_nothing_is_written(kind, run_dir, tmp_path):
  make, problem = BAD_SCANS[kind]
  scan = make(tmp_path / "scan.nii.gz")
  out = tmp_path / "out"
  with pytest.raises(InputError) as info:
    predict.predict_files(run_dir, scan, out / "mask.nii.gz",
                          out / "prob.nii.gz")
  assert str(info.value).startswith(f"{scan}: ")
  assert problem in str(info.value)
  assert not out.exists()


def _workdir_without_checkpoint(run_dir: Path, workdir: Path) -> None:
  workdir.mkdir()
  shutil.copy(run_dir / "config.json", workdir)


def _workdir_of_another_model(run_dir: Path, workdir: Path) -> None:
  """The run's checkpoint under a config whose head is twice as wide."""
  shutil.copytree(run_dir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["model"]["cls_hidden"] *= 2
  (workdir / "config.json").write_text(json.dumps(config))


BAD_WORKDIRS = {
    "no_checkpoint": (_workdir_without_checkpoint,
                      "checkpoints: no checkpoint"),
    "other_model": (_workdir_of_another_model,
                    "checkpoints: the checkpoint's parameters do not fit the "
                    "model that config.json describes"),
    "no_config": (lambda run_dir, workdir: workdir.mkdir(),
                  "config.json: not found"),
    "missing": (lambda run_dir, workdir: None,
                ": run directory does not exist"),
}


@pytest.mark.parametrize("kind", BAD_WORKDIRS)
def test_bad_workdir_is_named(kind, run_dir, raw, tmp_path):
  make, problem = BAD_WORKDIRS[kind]
  workdir = tmp_path / "run"
  make(run_dir, workdir)
  with pytest.raises(InputError, match=problem):
    predict.predict_files(workdir, raw / SCAN, tmp_path / "mask.nii.gz")
  assert not (tmp_path / "mask.nii.gz").exists()


def _predict_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pvl_jax.predict", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        check=False)


def test_cli_error_is_one_line_with_status_2(run_dir, tmp_path):
  scan = _truncated(tmp_path / "scan.nii.gz")
  result = _predict_cli(f"--workdir={run_dir}", f"--input={scan}",
                        f"--output={tmp_path / 'out' / 'mask.nii.gz'}")
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      f"error: {scan}: truncated gzip stream (the file is incomplete; was "
      "the download or copy interrupted?)"]
  assert not (tmp_path / "out").exists()


def test_folder_outputs_take_the_scans_names(tmp_path):
  scans = tmp_path / "scans"
  scans.mkdir()
  for name in ("b.nii", "a.nii.gz", "notes.txt"):
    (scans / name).write_bytes(b"")
  jobs = predict.plan_jobs(scans, tmp_path / "masks", tmp_path / "probs")
  assert jobs == [
      predict.Job(scans / name, tmp_path / "masks" / name,
                  tmp_path / "probs" / name) for name in ("a.nii.gz", "b.nii")]


@pytest.mark.parametrize("layout, problem", [
    (("scan.nii.gz", "scan.nii.gz", None), "would overwrite an input scan"),
    (("scan.nii.gz", "mask.png", None), "must end in .nii or .nii.gz"),
    (("scan.nii.gz", "mask.nii.gz", "mask.nii.gz"), "must differ from"),
    (("missing.nii.gz", "mask.nii.gz", None), "missing.nii.gz: not found"),
    (("folder", "folder", None), "would overwrite an input scan"),
    (("empty", "masks", None), "no .nii or .nii.gz scan in the folder"),
    (("folder", "scan.nii.gz", None), "exists and is not a folder"),
])
def test_bad_paths_are_refused_before_any_work(layout, problem, tmp_path):
  (tmp_path / "scan.nii.gz").write_bytes(b"")
  (tmp_path / "folder").mkdir()
  (tmp_path / "folder" / "x.nii.gz").write_bytes(b"")
  (tmp_path / "empty").mkdir()
  input_path, output, probabilities = layout
  with pytest.raises(InputError, match=problem):
    predict.plan_jobs(tmp_path / input_path, tmp_path / output,
                      probabilities and tmp_path / probabilities)


def test_template_spacing_is_that_of_the_training_volumes(tmp_path):
  assert dataset.template_spacing(joint.get_config("demo")) == 2.0
  assert dataset.template_spacing(joint.get_config()) == 1.0
  config = joint.get_config()
  config.data.cohort_dir = str(tmp_path)
  config.data.preprocess.update(enabled=True, target_spacing=1.5)
  assert dataset.template_spacing(config) == 1.5  # a raw cohort
  (tmp_path / pipeline.DESCRIPTION_FILE).write_text(json.dumps({
      "GeneratedBy": [{"Name": pipeline.GENERATED_BY}],
      "PipelineParameters": dataclasses.asdict(
          pipeline.Params(target_spacing=3.0))}))
  assert dataset.template_spacing(config) == 3.0  # already preprocessed


def _reoriented(image: nib.Nifti1Image, like: nib.Nifti1Image
                ) -> nib.Nifti1Image:
  """`image` reoriented to the axis order and directions of `like`."""
  return image.as_reoriented(nib.orientations.ornt_transform(
      nib.orientations.io_orientation(image.affine),
      nib.orientations.io_orientation(like.affine)))


@pytest.mark.slow
def test_reoriented_scan_gives_the_same_mask(run_dir, raw, tmp_path,
                                             monkeypatch):
  """The scan stored RAS and stored L-I-A: masks agree once reoriented.

  The network is replaced by the known template-space lesion mask (the tiny
  model's masks are noise), so that each mask has the true lesions.
  """
  scan = nib.load(raw / SCAN)
  scans = tmp_path / "scans"
  scans.mkdir()
  shutil.copy(raw / SCAN, scans / "lia.nii.gz")
  nib.save(scan.as_reoriented(nib.orientations.io_orientation(scan.affine)),
           scans / "ras.nii.gz")
  captured = _record_to_template(monkeypatch)

  def truth_model(self, image, brain, origin):
    del self, image, brain, origin
    return _template_lesions_on(captured[-1].grid, raw), 0.5

  monkeypatch.setattr(trained_run.TrainedRun, "predict", truth_model)
  predict.predict_files(run_dir, scans, tmp_path / "masks",
                        stdout=io.StringIO())
  lia = nib.load(tmp_path / "masks" / "lia.nii.gz")
  ras = nib.load(tmp_path / "masks" / "ras.nii.gz")
  np.testing.assert_array_equal(ras.affine,
                                nib.load(scans / "ras.nii.gz").affine)
  native = nifti.load_mask(raw / NATIVE_LESIONS)
  lia_mask = np.asarray(lia.dataobj) > 0
  ras_back = _reoriented(ras, lia)
  np.testing.assert_allclose(ras_back.affine, lia.affine, atol=1e-4)
  ras_back = np.asarray(ras_back.dataobj) > 0
  assert _dice(lia_mask, native) >= 0.8  # registration error, see above
  assert _dice(ras_back, native) >= 0.8
  assert _dice(ras_back, lia_mask) >= 0.9


@pytest.mark.slow
def test_cli_segments_a_folder(run_dir, raw, tmp_path):
  scans = tmp_path / "scans"
  scans.mkdir()
  shutil.copy(raw / SCAN, scans / "a.nii.gz")
  shutil.copy(raw / SCAN, scans / "b.nii.gz")
  result = _predict_cli(f"--workdir={run_dir}", f"--input={scans}",
                        f"--output={tmp_path / 'masks'}",
                        f"--probabilities={tmp_path / 'probs'}")
  assert result.returncode == 0, result.stderr
  assert "predicting" in result.stderr  # the progress bar
  affine = nib.load(raw / SCAN).affine
  for name in ("a.nii.gz", "b.nii.gz"):
    assert f"{scans / name} -> {tmp_path / 'masks' / name}" in result.stdout
    for folder in ("masks", "probs"):
      np.testing.assert_array_equal(nib.load(tmp_path / folder / name).affine,
                                    affine)


def test_failed_write_leaves_no_output(tmp_path):
  prediction = native_space.Prediction(
      mask=np.zeros((4, 4, 4), np.uint8),
      probabilities=np.zeros((4, 4, 4), np.float32), affine=np.eye(4),
      hand_function_prob=0.5)
  (tmp_path / "blocker").write_text("a file, not a folder")
  job = predict.Job(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz",
                    tmp_path / "blocker" / "prob.nii.gz")
  with pytest.raises(InputError, match="prob.nii.gz: cannot write"):
    predict.write(prediction, job)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
