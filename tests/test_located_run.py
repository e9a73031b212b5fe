"""The located head through the real run: train, resume, evaluate, predict."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.inference import sliding_window
from pvl_jax.inference import trained_run
from pvl_jax.training import train
from tests.conftest import write_tiny_cohort
from tests.test_train import tiny_config


def _config(cohort, cache):
  config = tiny_config(cohort, cache, r=1.0)
  config.model.cls_head = "located"
  config.model.cls_block = 4
  return config


def _stored(workdir, step):
  return ocp.StandardCheckpointer().restore(
      (workdir / "checkpoints" / str(step) / "state").absolute())


def _numpy_read_out(probs, origin, template_shape, block, kernel, bias):
  """The baseline's block averages of the map placed at `origin`, read."""
  grid = [-(-n // block) * block for n in template_shape]
  full = np.zeros(grid, np.float32)
  full[tuple(slice(o, o + n) for o, n in zip(origin, probs.shape))] = probs
  fractions = full.reshape(grid[0] // block, block, grid[1] // block, block,
                           grid[2] // block, block).mean(axis=(1, 3, 5))
  return float(fractions.ravel() @ kernel + bias)


def test_located_head_trains_resumes_and_classifies_whole_scans(tiny_cohort,
                                                                 tmp_path):
  config = _config(tiny_cohort, tmp_path / "cache")
  results = train.train_and_evaluate(config, tmp_path / "run")
  run_dir = tmp_path / "run"
  saved = json.loads((run_dir / "config.json").read_text())
  assert tuple(saved["model"]["cls_template_shape"]) == (28, 32, 24)
  # Validation scored the head on whole scans.
  history = [json.loads(l) for l in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
  val_losses = [h["val/cls_loss"] for h in history if "val/cls_loss" in h]
  assert len(val_losses) == 2 and all(np.isfinite(val_losses))
  assert "cls_auc" in results["test"]

  # results.json's probabilities are the located head's read-out of the
  # whole probability map placed at the record's crop start.
  run = trained_run.load(run_dir)
  state = _stored(run_dir, 4)
  kernel = np.asarray(state["params"]["cls_head"]["kernel"])
  bias = float(state["params"]["cls_head"]["bias"])
  assert np.any(kernel != 0)
  assert np.all(kernel[np.asarray(state["memory"]["mask"]) == 0] == 0)
  test = dataset.split_sources(dataset.prepare(config), config)["test"]
  rows = {row["subject_id"]: row for row in results["test"]["per_subject"]}
  for i in range(len(test)):
    record = test[i]
    origin = tuple(int(n) for n in record["crop_start"])
    probs, logit = sliding_window.predict_volume(
        run.window_fn, record["image"], config.data.patch_size,
        config.inference.overlap, config.inference.batch_size,
        origin=origin)
    assert logit == pytest.approx(_numpy_read_out(
        probs, origin, (28, 32, 24), 4, kernel, bias), abs=1e-5)
    _, prob = run.predict(record["image"], record["brain_mask"], origin)
    subject = record["subject_id"].decode()
    assert prob == pytest.approx(rows[subject]["hand_function_prob"],
                                 abs=1e-6)
    assert prob == pytest.approx(1 / (1 + np.exp(-logit)))
  with pytest.raises(ValueError, match="needs the volume's origin"):
    sliding_window.predict_volume(run.window_fn, test[0]["image"],
                                  config.data.patch_size, 0.5, 2)

  # Killed after step 2: the resumed run ends where the full one did, the
  # memory of the subjects' block fractions included.
  resumed = tmp_path / "resumed"
  shutil.copytree(run_dir / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / "4")
  prepared, sources = train.prepare_run(config, resumed)
  train.train(prepared, resumed, sources)
  again = _stored(resumed, 4)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert np.asarray(again["memory"]["rows"]).any()


def test_located_head_with_r_zero_only_segments(tiny_cohort, tmp_path):
  config = _config(tiny_cohort, tmp_path / "cache")
  config.r = 0.0
  config.num_steps = 2
  results = train.train_and_evaluate(config, tmp_path / "run")
  assert "cls_auc" not in results["test"]
  history = [json.loads(l) for l in
             (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  validation = [h for h in history if "val/loss" in h]
  assert validation and not any("val/cls_loss" in h for h in validation)
  assert validation[-1]["val/loss"] == validation[-1]["val/seg_loss"]


@pytest.mark.parametrize("differs, problem", [
    # Another shape on the same lattice: a crop of one template grid, as
    # preprocessing writes each subject.
    ("shape", "crops of one template grid.*cannot place"),
    # The same shape, off the lattice: a raw-space scan.
    ("position", "register the cohort to a template first")])
def test_records_of_several_grids_stop_the_run_by_name(tmp_path, differs,
                                                       problem):
  cohort = write_tiny_cohort(tmp_path / "cohort")
  for path in (cohort / "sub-010" / "anat" / "sub-010_FLAIR.nii.gz",
               cohort / "derivatives" / "lesions" / "sub-010" / "anat" /
               "sub-010_label-lesion_mask.nii.gz",
               cohort / "derivatives" / "synthetic" / "sub-010" / "anat" /
               "sub-010_desc-brain_mask.nii.gz"):
    volume, affine = nifti.load_volume(path)
    if differs == "shape":
      volume = np.pad(volume, [(0, 2), (0, 0), (0, 0)])
    else:
      affine = affine.copy()
      affine[:3, 3] += (3.0, 0.0, 0.0)  # 1.5 voxels
    nifti.save_nifti(volume, affine, path, volume.dtype)
  config = _config(cohort, tmp_path / "cache")
  with pytest.raises(InputError, match=(
      r"cls_head='located' needs every scan in one template grid.*2 grids.*"
      r"sub-010.*" + problem)):
    train.prepare_run(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
