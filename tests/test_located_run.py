"""The located head through the real run: train, resume, evaluate, predict."""

import json
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from preprocessing import geometry
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.data import template_grid
from pvl_jax.handfunction import matrix_readout
from pvl_jax.inference import native_space
from pvl_jax.inference import sliding_window
from pvl_jax.inference import trained_run
from pvl_jax.training import readout_penalty
from pvl_jax.training import train
from tests.conftest import TINY_AFFINE
from tests.conftest import TINY_SHAPE
from tests.conftest import write_tiny_cohort
from tests.pipeline_layout import as_pipeline_output
from tests.test_train import tiny_config


def _config(cohort, cache):
  config = tiny_config(cohort, cache, r=1.0)
  config.model.cls_head = "located"
  config.model.cls_block = 4
  # The tiny cohort has too few subjects to choose it (tested below).
  config.model.cls_readout_l2 = 1e-3
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
  # Too few subjects outside the test split for the baseline's inner CV:
  # the read-out fitted in training decides, and results.json says why.
  assert not results["located_readout"]["refitted"]
  assert "5 subjects per class" in results["located_readout"]["reason"]
  assert not (run_dir / matrix_readout.RUN_FILE).exists()

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


def test_readout_is_refitted_as_the_baseline_on_the_runs_segmentations(
    tmp_path):
  """The training and validation subjects' segmentations fit the baseline's
  model, which then decides the test split and new scans at 0.5."""
  config = _config(write_tiny_cohort(tmp_path / "cohort", num_subjects=30),
                   tmp_path / "cache")
  config.num_steps = 2
  run_dir = tmp_path / "run"
  results = train.train_and_evaluate(config, run_dir)
  record = results["located_readout"]
  assert record["refitted"] and record["fitted_on"] == ["train", "val"]
  sources = dataset.split_sources(dataset.prepare(config), config)
  assert record["subjects"] == sum(
      sources[name][i]["hand_function"] >= 0
      for name in ("train", "validation") for i in range(len(sources[name])))
  assert results["test"]["cls_threshold"] == 0.5
  readout = matrix_readout.MatrixReadout.load(run_dir / matrix_readout.RUN_FILE)
  run = trained_run.load(run_dir)
  rows = {row["subject_id"]: row for row in results["test"]["per_subject"]}
  test = sources["test"]
  marked = 0
  for i in range(len(test)):
    record = test[i]
    subject = record["subject_id"].decode()
    # The saved segmentation (template grid), read by the saved model.
    mask = nifti.load_volume(run_dir / "predictions" /
                             f"{subject}_pred.nii.gz")[0] > 0
    marked += mask.any()
    prob = float(readout.probability(mask.reshape(1, -1))[0])
    assert rows[subject]["hand_function_prob"] == pytest.approx(prob)
    assert "hand_function_prob_training_readout" in rows[subject]
    origin = tuple(int(n) for n in record["crop_start"])
    _, predicted = run.predict(record["image"], record["brain_mask"], origin)
    assert predicted == pytest.approx(prob)
  assert marked  # the 2-step network marks something to read


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


def test_located_head_reads_a_preprocessed_cohort(tiny_cohort, tmp_path):
  """Subjects on their own crops of the template grid: trained, evaluated
  and predicted at their offsets in it."""
  cohort, starts = as_pipeline_output(tiny_cohort, tmp_path / "prep")
  config = _config(cohort, tmp_path / "cache")
  config.num_steps = 2
  run_dir = tmp_path / "run"
  results = train.train_and_evaluate(config, run_dir)
  assert "cls_auc" in results["test"]
  saved = json.loads((run_dir / "config.json").read_text())
  # The template's own grid, from the cohort's dataset_description.json.
  assert tuple(saved["model"]["cls_template_shape"]) == TINY_SHAPE
  np.testing.assert_allclose(saved["model"]["cls_template_affine"],
                             TINY_AFFINE, atol=1e-6)
  history = [json.loads(l) for l in
             (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert np.isfinite([h["val/cls_loss"] for h in history
                      if "val/cls_loss" in h]).all()

  # Training placed each record where it was cut: the lesion-frequency
  # mask is the training subjects' lesions on the uncropped grid, blocked.
  state = _stored(run_dir, 2)
  lesions = np.zeros(TINY_SHAPE, bool)
  for pid in json.loads((run_dir / "splits.json").read_text()
                        )["subjects"]["train"]:
    lesions |= nifti.load_mask(tiny_cohort / "derivatives" / "lesions" / pid /
                               "anat" / f"{pid}_label-lesion_mask.nii.gz")
  blocks = lesions.reshape(7, 4, 8, 4, 6, 4).any(axis=(1, 3, 5))
  np.testing.assert_array_equal(state["memory"]["mask"], blocks.ravel())

  # Evaluation and prediction read each test map at its crop's voxel in the
  # template: where its file was cut + the builder's crop start.
  run = trained_run.load(run_dir)
  kernel = np.asarray(state["params"]["cls_head"]["kernel"])
  bias = float(state["params"]["cls_head"]["bias"])
  test = dataset.split_sources(dataset.prepare(config), config)["test"]
  rows = {row["subject_id"]: row for row in results["test"]["per_subject"]}
  misplaced = []
  for i in range(len(test)):
    record = test[i]
    subject = record["subject_id"].decode()
    origin = tuple(np.add(starts[subject], record["crop_start"]))
    grid = geometry.image_from_array(np.zeros(record["brain_mask"].shape),
                                     record["affine"])
    assert native_space.template_origin(run, grid, None) == origin
    probs, logit = sliding_window.predict_volume(
        run.window_fn, record["image"], config.data.patch_size,
        config.inference.overlap, config.inference.batch_size,
        origin=origin)
    assert logit == pytest.approx(_numpy_read_out(
        probs, origin, TINY_SHAPE, 4, kernel, bias), abs=1e-5)
    assert rows[subject]["hand_function_prob"] == pytest.approx(
        1 / (1 + np.exp(-logit)), abs=1e-6)
    misplaced.append(_numpy_read_out(probs, tuple(record["crop_start"]),
                                     TINY_SHAPE, 4, kernel, bias) - logit)
  # The test tells the offsets apart: at the crop start alone, it reads
  # other blocks.
  assert np.abs(misplaced).max() > 1e-4


def _with_sub_010_moved(tmp_path, change):
  """The tiny cohort with sub-010's files changed by `change(volume, affine)`."""
  cohort = write_tiny_cohort(tmp_path / "cohort")
  for path in (cohort / "sub-010" / "anat" / "sub-010_FLAIR.nii.gz",
               cohort / "derivatives" / "lesions" / "sub-010" / "anat" /
               "sub-010_label-lesion_mask.nii.gz",
               cohort / "derivatives" / "synthetic" / "sub-010" / "anat" /
               "sub-010_desc-brain_mask.nii.gz"):
    volume, affine = nifti.load_volume(path)
    nifti.save_nifti(*change(volume, affine.copy()), path, volume.dtype)
  return cohort


def test_records_off_one_lattice_stop_the_run_by_name(tmp_path):
  """The same shape, 1.5 voxels elsewhere: a raw-space scan."""
  def shifted(volume, affine):
    affine[:3, 3] += (3.0, 0.0, 0.0)
    return volume, affine

  config = _config(_with_sub_010_moved(tmp_path, shifted), tmp_path / "cache")
  with pytest.raises(InputError, match=(
      r"cls_head='located' needs every scan on one template grid.*2 grids.*"
      r"sub-010 are not on the lattice.*register the cohort to a template "
      r"first")):
    train.prepare_run(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()


def test_crops_of_one_lattice_give_their_bounding_box(tmp_path):
  """sub-010 saved on a grid reaching 2 voxels further along x."""
  def grown(volume, affine):
    affine[:3, 3] -= affine[:3, :3] @ (2, 0, 0)
    return np.pad(volume, [(2, 0), (0, 0), (0, 0)]), affine

  config = _config(_with_sub_010_moved(tmp_path, grown), tmp_path / "cache")
  prepared, _ = train.prepare_run(config, tmp_path / "run")
  box = np.array(TINY_AFFINE)
  box[0, 3] -= 4.0
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  for model in (prepared.model, ml_collections.ConfigDict(saved["model"])):
    grid = template_grid.TemplateGrid.from_config(model)
    assert grid.shape == (30, 32, 24)
    np.testing.assert_allclose(grid.affine, box, atol=1e-5)


def test_readout_penalty_is_chosen_on_the_training_split(tmp_path):
  """-1: chosen on the training split and kept in config.json."""
  config = _config(write_tiny_cohort(tmp_path / "cohort", num_subjects=30),
                   tmp_path / "cache")
  config.model.cls_readout_l2 = -1.0
  prepared, sources = train.prepare_run(config, tmp_path / "run")
  labels = np.array([sources["train"][i]["hand_function"]
                     for i in range(len(sources["train"]))])
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["model"]["cls_readout_l2"] == prepared.model.cls_readout_l2
  c = 1 / (2 * prepared.model.cls_readout_l2 * np.sum(labels >= 0))
  assert min(abs(np.log10(c / g)) for g in readout_penalty.C_GRID) < 1e-9


def test_readout_penalty_choice_needs_labelled_subjects(tiny_cohort, tmp_path):
  config = _config(tiny_cohort, tmp_path / "cache")
  config.model.cls_readout_l2 = -1.0
  with pytest.raises(InputError, match=r"model.cls_readout_l2=-1 chooses the "
                     r"read-out penalty by 5-fold CV on the training split"):
    train.prepare_run(config, tmp_path / "run")
  assert not (tmp_path / "run" / "config.json").exists()
  # With r = 0 the head is not trained: nothing to choose.
  config.r = 0.0
  prepared, _ = train.prepare_run(config, tmp_path / "run0")
  assert prepared.model.cls_readout_l2 == 0.0
