"""The baseline on a `preprocessing` output: masks on crops of one template grid.

A preprocessing output saves each subject on its brain's crop of the
template grid (`tests.pipeline_layout`). The baseline places every mask in
that grid, as the located head places its records, so its features must be
those of the same masks written uncropped on the full grid: that reference
cohort is written here with nibabel and numpy alone.
"""

from pathlib import Path
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.data import template_grid
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import block_features
from pvl_jax.handfunction import cohort_reading
from pvl_jax.handfunction import features
from pvl_jax.handfunction import nested_cv
from pvl_jax.handfunction import regions
from tests import fake_runs
from tests.conftest import TINY_AFFINE
from tests.conftest import TINY_SHAPE
from tests.conftest import write_tiny_cohort
from tests.pipeline_layout import as_pipeline_output
from tests.pipeline_layout import subject_ids

# 20 bad, 10 good: enough of each class for 4 outer and 5 inner folds.
NUM_SUBJECTS = 30


def _full_grid_copy(crops: Path, out: Path) -> Path:
  """The crop cohort's masks written uncropped on the full tiny grid.

  Independent of the code under test: each crop's start in the grid is read
  from its affine with numpy, and the files are written with nibabel.
  """
  for pid in subject_ids(crops):
    image = nib.load(fake_runs.reference_mask(crops, pid))
    start = np.linalg.solve(TINY_AFFINE[:3, :3],
                            image.affine[:3, 3] - TINY_AFFINE[:3, 3])
    start = np.round(start).astype(int)
    crop = np.asarray(image.dataobj)
    full = np.zeros(TINY_SHAPE, np.uint8)
    full[tuple(slice(a, a + n) for a, n in zip(start, crop.shape))] = crop
    mask = fake_runs.reference_mask(out, pid)
    mask.parent.mkdir(parents=True)
    nib.Nifti1Image(full, TINY_AFFINE).to_filename(mask)
    scan = out / pid / "anat" / f"{pid}_FLAIR.nii.gz"
    scan.parent.mkdir(parents=True)
    nib.Nifti1Image(full.astype(np.float32), TINY_AFFINE).to_filename(scan)
  shutil.copy(crops / "participants.tsv", out)
  return out


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
  """(crop cohort, its full-grid copy, the uncropped source cohort)."""
  root = tmp_path_factory.mktemp("template_grid")
  source = write_tiny_cohort(root / "source", num_subjects=NUM_SUBJECTS)
  crops, _ = as_pipeline_output(source, root / "prep")
  return crops, _full_grid_copy(crops, root / "full"), source


@pytest.fixture
def small_grids(monkeypatch):
  """One C and one frequency threshold: the runs stay fast."""
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


def _features(cohort: Path) -> tuple[features.Grid, dict]:
  paths = [fake_runs.reference_mask(cohort, pid)
           for pid in subject_ids(cohort)]
  grid = features.cohort_grid(cohort, paths[0])
  extract = features.FeatureExtractor(
      grid, regions.builtin_regions(grid.shape, grid.affine))
  return grid, features.load_features(paths, grid, extract,
                                      cohort_reading.CohortReading())


def test_crops_give_the_features_of_the_full_grid_masks(cohorts):
  crops, full, source = cohorts
  shapes = {nib.load(fake_runs.reference_mask(crops, pid)).shape
            for pid in subject_ids(crops)}
  assert len(shapes) > 1 and TINY_SHAPE not in shapes  # really crops
  # The reference is the source's masks, uncropped.
  for pid in subject_ids(source):
    np.testing.assert_array_equal(
        nib.load(fake_runs.reference_mask(full, pid)).get_fdata(),
        nib.load(fake_runs.reference_mask(source, pid)).get_fdata())

  crop_grid, crop_features = _features(crops)
  full_grid, full_features = _features(full)
  # The template's own grid, from the cohort's dataset_description.json.
  assert crop_grid.template == template_grid.TemplateGrid.of(TINY_SHAPE,
                                                             TINY_AFFINE)
  assert full_grid.template is None
  assert crop_grid.shape == full_grid.shape == TINY_SHAPE
  np.testing.assert_allclose(crop_grid.affine, full_grid.affine, atol=1e-6)
  assert (crop_features["matrix"] != full_features["matrix"]).nnz == 0
  assert full_features["matrix"].nnz > 0
  np.testing.assert_allclose(crop_features["lesion_load"],
                             full_features["lesion_load"])

  # The matrix form's blocks start at template voxel 0, as the located
  # head's: 4^3 block means of the full-grid masks.
  masks = np.stack([nib.load(fake_runs.reference_mask(full, pid)).get_fdata()
                    for pid in subject_ids(full)])
  blocks = masks.reshape(len(masks), 7, 4, 8, 4, 6, 4).mean(axis=(2, 4, 6))
  np.testing.assert_allclose(
      block_features.BlockAverage(TINY_SHAPE, 4).fit_transform(
          crop_features["matrix"]).toarray(),
      blocks.reshape(len(masks), -1), atol=1e-7)


def test_crops_give_the_probabilities_of_the_full_grid_masks(
    cohorts, tmp_path, small_grids):
  """Reference and cross-fitted predicted masks (crops, as evaluation saves
  a preprocessing output's predictions) alike."""
  outputs = []
  for name, cohort in zip(("crops", "full"), cohorts):
    runs = fake_runs.write_fold_runs(tmp_path / name, cohort,
                                     subject_ids(cohort), num_folds=4)
    outputs.append(baseline.run(cohort, runs, downsample=[2, 4],
                                inner_repeats=1))
  crop_rows, full_rows = (output["rows"] for output in outputs)
  assert [r["name"] for r in crop_rows] == [r["name"] for r in full_rows]
  assert len(crop_rows) == 4
  for crop_row, full_row in zip(crop_rows, full_rows):
    assert crop_row["folds"] == full_row["folds"]
    assert [r["subject_id"] for r in crop_row["out_of_fold"]] == [
        r["subject_id"] for r in full_row["out_of_fold"]]
    np.testing.assert_allclose(
        [r["prob"] for r in crop_row["out_of_fold"]],
        [r["prob"] for r in full_row["out_of_fold"]], rtol=0, atol=1e-12)
    assert crop_row["n_subjects"] == NUM_SUBJECTS


def test_an_atlas_on_the_template_grid_gives_the_full_grid_loads(cohorts,
                                                                  tmp_path):
  """The atlas is a label map on the template grid, as on the full-grid
  masks; one on a crop of it is refused by name."""
  labels = np.zeros(TINY_SHAPE, np.uint8)
  labels[:14] = 1
  labels[14:] = 2
  atlas = tmp_path / "atlas.nii.gz"
  nib.Nifti1Image(labels, TINY_AFFINE).to_filename(atlas)
  names = tmp_path / "atlas.tsv"
  names.write_text("index\tname\n1\tleft\n2\tright\n")
  options = baseline.RegionOptions(str(atlas), str(names))
  loads = []
  for cohort in cohorts[:2]:
    paths = [fake_runs.reference_mask(cohort, pid)
             for pid in subject_ids(cohort)]
    grid = features.cohort_grid(cohort, paths[0])
    extract = features.FeatureExtractor(grid, options.region_set(grid))
    loads.append(features.load_features(
        paths, grid, extract, cohort_reading.CohortReading())["lesion_load"])
  np.testing.assert_allclose(loads[0], loads[1])
  assert np.all(loads[0][:, 2:].sum(axis=0) > 0)  # both regions lesioned

  crop = tmp_path / "crop.nii.gz"
  nib.Nifti1Image(labels[1:], TINY_AFFINE).to_filename(crop)
  grid = features.cohort_grid(cohorts[0], fake_runs.reference_mask(
      cohorts[0], "sub-001"))
  with pytest.raises(InputError, match=re.escape(
      f"{crop}: shape (27, 32, 24) differs from shape (28, 32, 24) of the "
      "(28, 32, 24) template grid the cohort was preprocessed into")):
    baseline.RegionOptions(str(crop), str(names)).region_set(grid)


def _moved(cohort: Path, out: Path, pid: str, change) -> Path:
  """A copy of `cohort` with `pid`'s mask affine changed by `change`."""
  shutil.copytree(cohort, out)
  path = fake_runs.reference_mask(out, pid)
  image = nib.load(path)
  affine = image.affine.copy()
  change(affine)
  nib.Nifti1Image(np.asarray(image.dataobj), affine).to_filename(path)
  return path


def _shift_mm(mm):
  def change(affine):
    affine[:3, 3] += mm
  return change


def _scale(affine):
  affine[:3, :3] *= 1.5


# sub-030's crop starts at template voxel (2, 1, 1).
@pytest.mark.parametrize("change, problem", [
    (_shift_mm((1.0, 0.0, 0.0)), r"its voxel 0 lies between template "
     r"voxels, at template voxel \(2\.5, 1, 1\)"),
    (_scale, r"its voxel axes or spacing differ from the grid's \(voxel "
     r"sizes \(3\.0, 3\.0, 3\.0\) mm against \(2\.0, 2\.0, 2\.0\) mm"),
    (_shift_mm((-6.0, 0.0, 0.0)), r"its \(26, 29, 23\) voxels from template "
     r"voxel \(-1, 1, 1\) reach past the grid")])
def test_a_mask_off_the_template_lattice_is_refused_by_name(
    cohorts, tmp_path, change, problem):
  path = _moved(cohorts[0], tmp_path / "cohort", "sub-030", change)
  with pytest.raises(InputError, match=(
      re.escape(f"{path}: not a crop of the (28, 32, 24) template grid the "
                "cohort was preprocessed into (the template and spacing "
                f"{tmp_path / 'cohort' / 'dataset_description.json'} names)"
                ": ") + problem)):
    baseline.run(tmp_path / "cohort", folds=2, downsample=[4])


def test_cli_exits_2_naming_the_off_lattice_mask(cohorts, tmp_path):
  path = _moved(cohorts[0], tmp_path / "cohort", "sub-007",
                _shift_mm((0.0, 0.0, 1.0)))
  out = tmp_path / "baseline.json"
  proc = subprocess.run(
      [sys.executable, "-m", "pvl_jax.handfunction.run",
       f"--cohort={tmp_path / 'cohort'}", f"--out={out}", "--folds=2"],
      capture_output=True, text=True, check=False,
      cwd=Path(__file__).parents[1])
  assert proc.returncode == 2, proc.stderr
  # The last line (progress lines come before it).
  error = proc.stderr.splitlines()[-1]
  assert error.startswith(f"error: {path}: not a crop of the (28, 32, 24) "
                          "template grid"), proc.stderr
  assert error.endswith("its voxel 0 lies between template voxels, at "
                        "template voxel (0, 0, 0.5)")
  assert not out.exists()
