"""A user's atlas as the baseline's lesion-load regions, and its bad inputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import atlas
from pvl_jax.handfunction import baseline
from pvl_jax.handfunction import nested_cv
from tests.test_baseline import AFFINE
from tests.test_baseline import NUM_SUBJECTS
from tests.test_baseline import SHAPE
from tests.test_baseline import synthetic_problem
from tests.test_baseline import write_cohort

NAMES = "index\tname\tcolor\n0\tUnclassified\t0\n1\tspot L\t1\n2\tfront\t2\n"


def _labels() -> np.ndarray:
  """Label 1 on the grid's left-posterior part, 2 on its front, 0 else."""
  labels = np.zeros(SHAPE, np.uint8)
  labels[:6, :7] = 1
  labels[:, 8:] = 2
  return labels


def _write_atlas(folder: Path, labels: np.ndarray | None = None,
                 names: str = NAMES, affine: np.ndarray = AFFINE,
                 names_file: str = "names.tsv") -> tuple[Path, Path]:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "atlas.nii.gz"
  nifti.save_nifti(_labels() if labels is None else labels, affine, path,
                   np.uint8 if labels is None or labels.min() >= 0
                   else np.int16)
  (folder / names_file).write_text(names)
  return path, folder / names_file


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  masks, labels = synthetic_problem()
  return write_cohort(tmp_path_factory.mktemp("atlas") / "cohort", masks,
                      labels)


@pytest.fixture
def small_grids(monkeypatch):
  monkeypatch.setattr(nested_cv, "C_GRID", (1.0,))
  monkeypatch.setattr(nested_cv, "MIN_LESION_FRACTIONS", (0.0,))


def _mask_path(cohort: Path, subject: str = "sub-001") -> Path:
  return (cohort / "derivatives" / "lesions" / subject / "anat"
          / f"{subject}_label-lesion_mask.nii.gz")


def test_atlas_labels_are_the_lesion_loads(cohort, tmp_path, small_grids):
  path, names = _write_atlas(tmp_path)
  options = baseline.RegionOptions(str(path), str(names),
                                   tract=("spot L",))
  output = baseline.run(cohort, folds=2, downsample=[4], inner_repeats=1,
                        region_options=options, feature_sets=["lesion_load"])
  assert output["regions"] == {
      "source": str(names), "names": ["spot L", "front"],
      "tract": ["spot L"],
      "lesion_load_columns": ["total", "tract", "spot L", "front"]}
  # The loads, independently: voxel counts of each label times 512 mm^3.
  masks, _ = synthetic_problem()
  labels = _labels()
  region_set = atlas.load_atlas(path, names, SHAPE, AFFINE, "grid").select(
      tract=["spot L"])
  extract = baseline.features_lib.FeatureExtractor(
      baseline.features_lib.Grid(SHAPE, AFFINE, Path("grid")), region_set)
  for mask in masks[:5]:
    expected = [mask.sum(), (mask & (labels == 1)).sum(),
                (mask & (labels == 1)).sum(), (mask & (labels == 2)).sum()]
    np.testing.assert_allclose(extract(mask)["lesion_load"],
                               np.array(expected) * 512.0)
  (row,) = output["rows"]
  assert row["n_subjects"] == NUM_SUBJECTS
  # Every fold's model saw 2 loads (total, tract) or all 4.
  assert {f["n_features"] for f in row["folds"]} <= {2, 4}


def test_regions_and_tract_default_to_every_label(cohort, tmp_path):
  path, names = _write_atlas(tmp_path)
  grid = baseline.features_lib.read_grid(_mask_path(cohort))
  chosen = baseline.RegionOptions(str(path), str(names)).region_set(grid)
  assert chosen.names == chosen.tract == ("spot L", "front")
  chosen = baseline.RegionOptions(str(path), str(names),
                                  regions=("front",)).region_set(grid)
  assert chosen.names == chosen.tract == ("front",)


def test_csv_names_table(tmp_path):
  path = tmp_path / "names.csv"
  path.write_text("name,index\n\"Corticospinal tract, L\",8\nFornix,6\n")
  assert atlas.read_names(path) == {8: "Corticospinal tract, L", 6: "Fornix"}


def _shifted() -> np.ndarray:
  affine = AFFINE.copy()
  affine[1, 3] += 4.0
  return affine


@pytest.mark.parametrize("case, message", [
    ("affine", "{atlas}: affine differs from that of {mask} by up to 4 mm"),
    ("shape", r"{atlas}: shape \(12, 12, 11\) differs from shape "
              r"\(12, 12, 12\) of {mask}"),
    ("unnamed", "{names}: no name for label\\(s\\) 2 of {atlas}"),
    ("empty", r"{names}: no voxel of {atlas} has label\(s\) 3 \(extra\)"),
    ("missing_region", "{names}: no region named 'cst' \\(available: "
                       "spot L, front\\)"),
    ("negative", "{atlas}: atlas labels must be non-negative integers"),
    ("no_column", "{names}: no 'index' column in the header \\['label', "
                  "'name'\\]"),
    ("twice", "{names}: line 3: index 1 appears twice"),
    ("names_only", "--atlas and --atlas_names: give both or neither")])
def test_bad_atlas_input(cohort, tmp_path, case, message):
  labels, names, affine = _labels(), NAMES, AFFINE
  regions = ()
  if case == "affine":
    affine = _shifted()
  elif case == "shape":
    labels = labels[:, :, :11]
  elif case == "unnamed":
    names = "index\tname\n1\tspot L\n"
  elif case == "empty":
    names = NAMES + "3\textra\t3\n"
  elif case == "missing_region":
    regions = ("cst",)
  elif case == "negative":
    labels = labels.astype(np.int16)
    labels[0, 0, 0] = -1
  elif case == "no_column":
    names = "label\tname\n1\tspot L\n2\tfront\n"
  elif case == "twice":
    names = "index\tname\n1\tspot L\n1\tfront\n"
  path, names_path = _write_atlas(tmp_path, labels, names, affine)
  options = baseline.RegionOptions(
      str(path), None if case == "names_only" else str(names_path), regions)
  if case == "names_only":
    options = baseline.RegionOptions(None, str(names_path))
  grid = baseline.features_lib.read_grid(_mask_path(cohort))
  with pytest.raises(InputError, match=message.format(
      atlas=path, names=names_path, mask=_mask_path(cohort))):
    options.region_set(grid)


def test_cli_bad_atlas_exits_2_and_writes_nothing(cohort, tmp_path):
  path, names = _write_atlas(tmp_path, affine=_shifted())
  out = tmp_path / "baseline.json"
  proc = subprocess.run(
      [sys.executable, "-m", "pvl_jax.handfunction.run", f"--cohort={cohort}",
       f"--out={out}", f"--atlas={path}", f"--atlas_names={names}"],
      capture_output=True, text=True, check=False,
      cwd=Path(__file__).parents[1])
  assert proc.returncode == 2
  assert f"error: {path}: affine differs from that of " in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists()


def test_cli_with_atlas_and_regions(cohort, tmp_path):
  path, names = _write_atlas(tmp_path)
  out = tmp_path / "baseline.json"
  proc = subprocess.run(
      [sys.executable, "-m", "pvl_jax.handfunction.run", f"--cohort={cohort}",
       f"--out={out}", f"--atlas={path}", f"--atlas_names={names}",
       "--regions=spot L", "--folds=2", "--downsample=4",
       "--inner_repeats=1", "--resamples=0"],
      capture_output=True, text=True, check=False,
      cwd=Path(__file__).parents[1])
  assert proc.returncode == 0, proc.stderr
  result = json.loads(out.read_text())
  assert result["regions"]["lesion_load_columns"] == ["total", "tract",
                                                      "spot L"]
