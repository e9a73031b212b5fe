"""A lab's own BIDS study end to end: ignore labels, unlabelled subjects,
computed brain masks, sites, a user's template, and the bad inputs."""

import json
import logging
from pathlib import Path
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from preprocessing import lesion_labels
from preprocessing import skull_strip_rules
from preprocessing import template_files
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.data import splits
from pvl_jax.training import train
from tests import own_data
from tests.test_train import tiny_config

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  return own_data.write_study(tmp_path_factory.mktemp("study") / "study")


def _copy(study, tmp_path) -> Path:
  return Path(shutil.copytree(study, tmp_path / "study"))


def _nothing_written(workdir: Path, cache: Path) -> bool:
  """No file in the workdir and no TFDS records from a failed run."""
  return (not (workdir.exists() and any(workdir.iterdir()))
          and not list(cache.rglob("*.array_record*")))


# Lesion masks with an ignore label.


def _mask_file(tmp_path, values) -> Path:
  data = np.zeros((4, 4, 4), np.uint8)
  data.flat[:len(values)] = values
  path = tmp_path / "mask.nii.gz"
  nifti.save_nifti(data, AFFINE, path, np.uint8)
  return path


def _labels(path, **kwargs):
  return lesion_labels.load_lesion_labels(
      path, reference_shape=(4, 4, 4), reference_affine=AFFINE,
      reference_path="scan.nii.gz", **kwargs)


def test_ignore_label_becomes_ignore(tmp_path):
  path = _mask_file(tmp_path, [1, 2, 0, 2])
  labels = _labels(path, ignore_label=2)
  assert labels.flat[:4].tolist() == [1, 255, 0, 255]
  assert labels.dtype == np.uint8 and (labels.flat[4:] == 0).all()


def test_other_values_need_a_threshold(tmp_path):
  path = _mask_file(tmp_path, [1, 2, 3])
  with pytest.raises(InputError) as info:
    _labels(path, ignore_label=2)
  assert str(info.value) == (
      f"{path}: lesion mask holds values other than 0, 1 and the ignore label"
      " 2 (e.g. 3); set data.mask_threshold (--mask_threshold) to binarise it"
      " or data.ignore_label to ignore a label")
  labels = _labels(path, ignore_label=2, threshold=1)
  assert labels.flat[:3].tolist() == [1, 255, 1]


def test_mask_on_another_grid_is_refused(tmp_path):
  path = _mask_file(tmp_path, [1])
  with pytest.raises(InputError, match="differs from shape"):
    lesion_labels.load_lesion_labels(
        path, reference_shape=(5, 4, 4), reference_affine=AFFINE,
        reference_path="scan.nii.gz")


# Brain masks for cohorts without them.


def _stripped_head():
  grid = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"), -1)
  brain = ((grid - 9.5) ** 2).sum(-1) < 7 ** 2
  image = np.where(brain, 1.0, 0.0)
  image[9:11, 9:11, 9:11] = 0  # a dark hole inside the brain
  image[1, 1, 1] = 0  # the border shell stays clean
  return image.astype(np.float32), brain


def test_nonzero_rule_fills_holes_and_drops_specks():
  image, brain = _stripped_head()
  image[3, 15, 15] = 0.5  # a speck outside the brain
  assert skull_strip_rules.looks_skull_stripped(image)
  np.testing.assert_array_equal(skull_strip_rules.nonzero_mask(image), brain)


def test_auto_rule(monkeypatch, tmp_path):
  image, brain = _stripped_head()
  mask, source = skull_strip_rules.brain_mask("auto", "s.nii", image, AFFINE,
                                              None)
  assert source == "nonzero rule"
  np.testing.assert_array_equal(mask, brain)
  # With a skull (noise reaching the border) the template is registered.
  from preprocessing import template_space  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(template_space, "native_brain_mask",
                      lambda *args: calls.append(args) or brain)
  head = image + 0.01 * np.random.default_rng(0).random(image.shape)
  assert not skull_strip_rules.looks_skull_stripped(head)
  _, source = skull_strip_rules.brain_mask("auto", "s.nii", head, AFFINE, None)
  assert source == "template skull stripping" and len(calls) == 1
  # A mask file wins under auto and files; `files` without one fails.
  path = tmp_path / "brain.nii.gz"
  nifti.save_nifti(brain.astype(np.uint8), AFFINE, path, np.uint8)
  assert skull_strip_rules.brain_mask("files", "s.nii", head, AFFINE,
                                      path)[1] == "file"
  with pytest.raises(InputError, match="s.nii: no brain mask for this scan"):
    skull_strip_rules.brain_mask("files", "s.nii", head, AFFINE, None)


# The user's template: checked before any work.


def _template(tmp_path, mask_affine=AFFINE, mask_values=(0, 1)):
  image, brain = _stripped_head()
  nifti.save_nifti(image, AFFINE, tmp_path / "T.nii.gz", np.float32)
  mask = np.where(brain, mask_values[1], mask_values[0])
  nifti.save_nifti(mask.astype(np.float32), mask_affine, tmp_path / "M.nii.gz",
                   np.float32)
  return tmp_path / "T.nii.gz", tmp_path / "M.nii.gz"


def test_template_files_checked(tmp_path):
  image, mask = _template(tmp_path)
  files = template_files.check_files(image, mask)
  assert files == template_files.TemplateFiles(str(image), str(mask))
  assert template_files.check_files("", "") is None
  with pytest.raises(InputError, match="^--template_mask: not set, but "
                     "--template is; a template needs both"):
    template_files.check_files(image, "")
  shifted = AFFINE.copy()
  shifted[:3, 3] = 4
  _, mask = _template(tmp_path, mask_affine=shifted)
  with pytest.raises(InputError) as info:
    template_files.check_files(image, mask, "config.t", "config.t_mask")
  assert str(info.value).startswith(f"config.t_mask: {mask}: affine differs")
  assert "on the template image's grid" in str(info.value)


def test_preprocessing_refuses_a_template_without_mask(study, tmp_path):
  image, _ = _template(tmp_path)
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "preprocessing.run", f"--bids={study}",
       f"--out={out}", f"--template={image}"],
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 2
  assert result.stderr.startswith("error: --template_mask: not set")
  assert not out.exists()


def test_config_template_names_its_key(tmp_path):
  image, _ = _template(tmp_path)
  config = tiny_config(tmp_path, tmp_path / "cache")
  config.data.preprocess.template = str(image)
  with pytest.raises(InputError, match="^config.data.preprocess.template_mask:"
                     " not set"):
    dataset.template_files(config)
  _, mask = _template(tmp_path)
  config.data.preprocess.template_mask = str(mask)
  assert dataset.template_files(config).mask == str(mask)


# Training on the study.


@pytest.fixture(scope="module")
def study_run(study, tmp_path_factory):
  """(workdir, results) of a 4-step run with only the ignore label set."""
  config = tiny_config(study, tmp_path_factory.mktemp("cache"))
  config.data.ignore_label = own_data.IGNORE_LABEL
  workdir = tmp_path_factory.mktemp("run")
  return workdir, train.train_and_evaluate(config, workdir)


def test_splits_json_and_results(study_run, study):
  workdir, results = study_run
  written = json.loads((workdir / "splits.json").read_text())
  # The site column balances the folds; it does not group them unless
  # data.group_column asks.
  rule = ("5 folds stratified by hand_function, balanced across sites (not "
          "grouped: data.group_column = ''); fold 0 test, fold 1 validation, "
          "the rest train")
  assert written["rule"] == rule
  assert results["split"]["rule"] == rule
  assert (written["fold"], written["num_folds"]) == (0, 5)
  ids = written["subjects"]
  everyone = sorted(sum(ids.values(), []))
  assert everyone == [f"sub-{i:03d}" for i in range(1, 16)]
  labelled = {name: sum(p not in own_data.UNLABELLED for p in members)
              for name, members in ids.items()}
  assert written["labelled"] == labelled
  assert written["brain_masks"] == {"nonzero rule": 15}
  assert results["split"]["rule"] == rule
  assert results["split"]["num_labelled"] == labelled
  assert results["test"]["n_labelled"] == labelled["test"]
  assert results["test"]["n_subjects"] == len(ids["test"])


def test_a_cohort_without_labels_trains_with_r_zero(study, tmp_path, caplog):
  cohort = _copy(study, tmp_path)
  tsv = cohort / "participants.tsv"
  lines = tsv.read_text().splitlines()
  tsv.write_text("\n".join([lines[0]] + [line.rsplit("\t", 1)[0] + "\tn/a"
                                         for line in lines[1:]]) + "\n")
  config = tiny_config(cohort, tmp_path / "cache", r=0.5)
  config.data.ignore_label = 2
  builder = dataset.prepare(config)
  sources = dataset.split_sources(builder, config)
  with caplog.at_level(logging.WARNING):
    resolved = splits.record_splits(config, sources, tmp_path)
  assert resolved.r == 0 and config.r == 0.5
  assert "no subject has a hand_function label: training with r = 0" in (
      caplog.text)
  assert json.loads((tmp_path / "config.json").read_text())["r"] == 0


BAD_INPUTS = {
    "ignore_label is the lesion label": (
        {"ignore_label": 1}, None,
        "config.data.ignore_label: 1 is the lesion label"),
    "session matching no scan": (
        {"ignore_label": 2, "session": "02"}, None,
        "FLAIR: session rule (data.session, --session) '02' matches no scan"),
    "split value": (
        {"ignore_label": 2}, ("\tsplit", "\tvalidation"),
        "participants.tsv: line 2: split is 'validation', must be train or "
        "test"),
    "all test": (
        {"ignore_label": 2}, ("\tsplit", "\ttest"),
        "participants.tsv: the split column puts all 15 participants in the "
        "test set; none is left to train on"),
    "label column missing with r > 0": (
        {"ignore_label": 2, "label_column": "grip"}, None,
        "participants.tsv: no 'grip' column (config.data.label_column), which "
        "r = 0.5 needs"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_before_training(case, study, tmp_path):
  options, column, message = BAD_INPUTS[case]
  cohort = _copy(study, tmp_path)
  if column:
    tsv = cohort / "participants.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join([lines[0] + column[0]]
                             + [line + column[1] for line in lines[1:]]))
  config = tiny_config(cohort, tmp_path / "cache")
  config.data.update(options)
  with pytest.raises(InputError) as info:
    train.train_and_evaluate(config, tmp_path / "run")
  assert message in str(info.value)
  assert _nothing_written(tmp_path / "run", tmp_path / "cache")


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "pvl_jax.main", *args],
                        capture_output=True, text=True, timeout=600,
                        cwd=cwd, check=False)


def test_cli_bad_input_exits_2(study, tmp_path, request):
  result = _main("--config=configs/joint.py:demo",
                 f"--config.data.cohort_dir={study}",
                 f"--config.data.cache_dir={tmp_path / 'cache'}",
                 f"--workdir={tmp_path / 'run'}",
                 cwd=request.config.rootpath)
  assert result.returncode == 2
  error = result.stderr[result.stderr.index("\nerror: ") + 1:]
  assert ("_label-lesion_mask.nii.gz: lesion mask holds values other than "
          "0, 1 (e.g. 2)") in error
  assert "Traceback" not in result.stderr
  assert _nothing_written(tmp_path / "run", tmp_path / "cache")


@pytest.mark.slow
def test_demo_recipe_on_the_study_in_under_3_minutes(study, tmp_path,
                                                     request):
  """The issue's figure: only cohort_dir and ignore_label set (+ steps)."""
  start = time.perf_counter()
  result = _main("--config=configs/joint.py:demo",
                 f"--config.data.cohort_dir={study}",
                 "--config.data.ignore_label=2", "--config.num_steps=20",
                 f"--config.data.cache_dir={tmp_path / 'cache'}",
                 f"--workdir={tmp_path / 'run'}",
                 cwd=request.config.rootpath)
  seconds = time.perf_counter() - start
  assert result.returncode == 0, result.stderr[-3000:]
  assert seconds < 180, seconds
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["split"]["brain_masks"] == {"nonzero rule": 15}
  assert "brain masks: 15 computed (nonzero rule)" in result.stderr


@pytest.mark.slow
def test_skull_strip_rule_on_scans_with_a_skull(raw_cohort):
  """auto on a raw scan registers the template; Dice with the true brain."""
  scan = raw_cohort / "sub-002" / "anat" / "sub-002_FLAIR.nii.gz"
  image, affine = nifti.load_volume(scan)
  mask, source = skull_strip_rules.brain_mask("auto", scan, image, affine,
                                              None)
  truth = nifti.load_mask(raw_cohort / "derivatives" / "synthetic" /
                          "sub-002" / "anat" / "sub-002_desc-brain_mask.nii.gz")
  assert source == "template skull stripping"
  assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9


@pytest.mark.slow
def test_own_template_gives_the_default_when_it_is_the_default(raw_cohort,
                                                               tmp_path):
  """The MNI152 2 mm template brought as files: the same template space."""
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  from preprocessing import template_space  # pylint: disable=g-import-not-at-top
  from pvl_jax.inference import native_space  # pylint: disable=g-import-not-at-top
  for name, img in (("T", datasets.load_mni152_template(resolution=2)),
                    ("M", datasets.load_mni152_brain_mask(resolution=2))):
    nifti.save_nifti(np.asarray(img.get_fdata(), np.float32), img.affine,
                     tmp_path / f"{name}.nii.gz", np.float32)
  files = template_files.check_files(tmp_path / "T.nii.gz",
                                     tmp_path / "M.nii.gz")
  scan = raw_cohort / "sub-002" / "anat" / "sub-002_FLAIR.nii.gz"
  image, affine = nifti.load_volume(scan)
  scans = {"FLAIR": (scan, image, affine)}
  default = template_space.to_template(scans, 2.0)
  own = template_space.to_template(scans, 2.0, template_files=files)
  assert own.images["FLAIR"].shape == default.images["FLAIR"].shape
  assert 2 * (own.brain & default.brain).sum() / (
      own.brain.sum() + default.brain.sum()) > 0.99
  inside = own.brain & default.brain
  assert np.corrcoef(own.images["FLAIR"][inside],
                     default.images["FLAIR"][inside])[0, 1] > 0.99
  # Back on the scan's own grid.
  back = native_space.to_native(own.brain.astype(np.float32), own.grid,
                                own.to_native, image.shape, affine)
  assert back.shape == image.shape


def test_add_ignore_blobs(tiny_cohort, tmp_path):
  """The benchmark's blobs: label 2, off the lesions, as bright as them."""
  out = own_data.add_ignore_blobs(tiny_cohort, tmp_path / "blobs",
                                  blobs_per_subject=2)
  from preprocessing import bids  # pylint: disable=g-import-not-at-top
  for subject in bids.load_cohort(out):
    labels, _ = nifti.load_volume(subject.lesion_mask_path)
    original, _ = nifti.load_volume(tiny_cohort / subject.lesion_mask_path
                                    .relative_to(out))
    image, _ = nifti.load_volume(subject.image_paths["FLAIR"])
    blobs = labels == 2
    assert blobs.any()
    np.testing.assert_array_equal(labels == 1, original == 1)
    assert image[blobs].mean() == pytest.approx(image[labels == 1].mean(),
                                                rel=1e-4)
