"""Training end to end on a tiny cohort: outputs, resume, CLI errors."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.training import train


def tiny_config(cohort, cache, r=0.5):
  config = joint.get_config("demo")
  config.r = r
  config.data.cohort_dir = str(cohort)
  config.data.cache_dir = str(cache)
  config.data.patch_size = (16, 16, 16)
  config.data.num_workers = 0
  config.model.features = (4, 8, 16)
  config.batch_size = 2
  config.num_steps = 4
  config.log_every = 2
  config.eval_every = 2
  config.eval_patches = 2
  config.checkpoint_every = 2
  config.inference.batch_size = 2
  config.inference.num_plot_subjects = 1
  return config


def _params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(
      (workdir / "checkpoints" / str(step) / "state").absolute())
  return restored["params"]


def test_results_json_shape(tiny_run):
  workdir, _, results = tiny_run
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["test"]["dice_mean"] == pytest.approx(
      results["test"]["dice_mean"])
  for split in ("val", "test"):
    for key in ("dice_mean", "voe_mean", "cls_accuracy", "cls_f1", "cls_auc"):
      assert key in on_disk[split], (split, key)
    assert 0.0 <= on_disk[split]["dice_mean"] <= 1.0
    assert on_disk[split]["n_subjects"] == 2
  assert "test_dice_mean" in on_disk["threshold_baseline"]


def test_run_artifacts(tiny_run):
  workdir, _, _ = tiny_run
  for name in ("predictions.png", "training_curves.png", "config.json",
               "metrics.jsonl"):
    assert (workdir / name).stat().st_size > 0, name
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  predictions = sorted((workdir / "predictions").glob("sub-*_pred.nii.gz"))
  assert len(predictions) == 2
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [2, 4]
  steps = [json.loads(l)["step"] for l in
           (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [2, 2, 4, 4]  # train + validation lines


def test_predictions_are_in_the_original_grid(tiny_run, tiny_cohort):
  from preprocessing.io import nifti  # pylint: disable=g-import-not-at-top
  workdir, _, _ = tiny_run
  for path in (workdir / "predictions").glob("sub-*_pred.nii.gz"):
    subject = path.name.split("_")[0]
    _, affine = nifti.load_volume(
        tiny_cohort / subject / "anat" / f"{subject}_FLAIR.nii.gz")
    pred, pred_affine = nifti.load_volume(path)
    np.testing.assert_allclose(pred_affine, affine, atol=1e-5)
    assert pred.shape == (28, 32, 24)


def test_resume_from_latest_checkpoint_is_exact(tiny_run, tiny_cohort,
                                                tmp_path):
  workdir, cache, _ = tiny_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / "4")  # as if killed after step 2
  train.train_and_evaluate(tiny_config(tiny_cohort, cache), resumed)
  expected, got = _params(workdir, 4), _params(resumed, 4)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # 82 s: two runs, each compiling its steps
def test_nnunet_augmentation_in_the_step_resumes_exactly(tiny_cohort,
                                                        tmp_path):
  """Augmentation keyed by the step: a resumed run draws the same."""
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.data.augment.recipe = "nnunet"
  # Every spatial and intensity transform drawn, so that each runs.
  config.data.augment.nnunet.update(
      rotation_prob=1.0, scaling_prob=1.0, noise_prob=1.0, blur_prob=1.0,
      low_res_prob=1.0, gamma_prob=1.0, contrast_prob=1.0)
  runs = {}
  for name in ("full", "resumed"):
    prepared, sources = train.prepare_run(config, tmp_path / name)
    if name == "resumed":  # as if killed after step 2
      shutil.copytree(tmp_path / "full" / "checkpoints",
                      tmp_path / name / "checkpoints")
      shutil.rmtree(tmp_path / name / "checkpoints" / "4")
    runs[name] = jax.device_get(train.train(prepared, tmp_path / name,
                                            sources))
  for a, b in zip(jax.tree.leaves(runs["full"]),
                  jax.tree.leaves(runs["resumed"])):
    np.testing.assert_array_equal(a, b)
  losses = [json.loads(l).get("train/loss") for l in
            (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(v) for v in losses if v is not None)


def test_resume_into_another_model_is_refused_by_name(tiny_run, tiny_cohort,
                                                      tmp_path):
  """A workdir whose checkpoint another model wrote: InputError, no crash."""
  workdir, cache, _ = tiny_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
  config = tiny_config(tiny_cohort, cache)
  config.model.cls_hidden *= 2
  with pytest.raises(InputError, match=r"checkpoints/4: cannot resume from "
                     r"this checkpoint \(.*shape.*\); it does not fit"):
    train.train_and_evaluate(config, resumed)
  # Nothing saved over the checkpoints it could not read.
  assert (sorted(c.name for c in (resumed / "checkpoints").iterdir())
          == sorted(c.name for c in (workdir / "checkpoints").iterdir()))


def test_r_zero_has_no_classification_metrics(tiny_cohort, tmp_path):
  config = tiny_config(tiny_cohort, tmp_path / "cache", r=0.0)
  config.num_steps = 1
  results = train.train_and_evaluate(config, tmp_path / "run")
  assert "cls_accuracy" not in results["test"]


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "pvl_jax.main", *args],
                        capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_rejects_negative_r(tmp_path, request):
  result = _main("--config=configs/joint.py:demo", "--config.r=-1",
                 f"--workdir={tmp_path / 'run'}", cwd=request.config.rootpath)
  assert result.returncode == 2
  assert "config.r: must be >= 0" in result.stderr
  assert "Traceback" not in result.stderr


def test_cli_rejects_cohort_missing_label_column(tiny_cohort, tmp_path,
                                                 request):
  cohort = tmp_path / "cohort"
  shutil.copytree(tiny_cohort, cohort)
  tsv = cohort / "participants.tsv"
  tsv.write_text(tsv.read_text().replace("hand_function", "hand"))
  result = _main("--config=configs/joint.py:demo",
                 f"--config.data.cohort_dir={cohort}",
                 f"--config.data.cache_dir={tmp_path / 'cache'}",
                 f"--workdir={tmp_path / 'run'}", cwd=request.config.rootpath)
  assert result.returncode == 2
  assert "participants.tsv" in result.stderr
  assert "hand_function" in result.stderr
  assert not (tmp_path / "run" / "results.json").exists()


def test_2d_model_trains_and_is_evaluated_on_volumes(tiny_cohort, tmp_path):
  config = tiny_config(tiny_cohort, tmp_path / "cache", r=0.0)
  config.data.patch_size = (16, 16)
  config.model.strides = ((1, 1), (2, 2), (2, 2))
  config.model.kernel_sizes = ((3, 3),) * 3
  config.num_steps = 2
  results = train.train_and_evaluate(config, tmp_path / "run")
  assert results["test"]["n_subjects"] == 2
  assert 0.0 <= results["test"]["dice_mean"] <= 1.0
  assert len(list((tmp_path / "run" / "predictions").glob("*.nii.gz"))) == 2
