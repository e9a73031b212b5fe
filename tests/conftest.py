"""Shared test setup: absl flags parsed (grain worker processes need them)."""

import sys
import tempfile

from absl import flags


def pytest_configure(config):
  del config
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


import jax
import numpy as np
import pytest

from preprocessing.io import nifti


@pytest.fixture(autouse=True, scope="session")
def _scratch_inside_pytest_tmp(tmp_path_factory):
  """Temporary files of the tests and their subprocesses under pytest's tmp.

  TFDS leaves an empty `tmp*tfds` folder in the temporary directory each
  time a builder is made before its dataset exists
  (`DatasetInfo.initialize_from_bucket`); pytest prunes its own folders.

  One JAX compilation cache for the session, in-process and for the
  subprocesses: many tests compile the same tiny training step, which takes
  10-30 s each time on two cores. Compiled programs are keyed by their
  HLO, so a hit runs exactly what a fresh compilation would.
  """
  scratch = tmp_path_factory.mktemp("tempfile")
  compilation_cache = str(tmp_path_factory.mktemp("jax_compilation_cache"))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TMPDIR", str(scratch))
    patch.setattr(tempfile, "tempdir", str(scratch))
    patch.setenv("JAX_COMPILATION_CACHE_DIR", compilation_cache)
    jax.config.update("jax_compilation_cache_dir", compilation_cache)
    try:
      yield
    finally:
      jax.config.update("jax_compilation_cache_dir", None)

TINY_SHAPE = (28, 32, 24)
TINY_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def write_tiny_cohort(root, num_subjects: int = 10, seed: int = 0):
  """A small BIDS cohort: ellipsoid brains with bright blob lesions.

  Hand function is bad exactly when a subject has 2 or more lesions, and
  every subject has at least one lesion.
  """
  rng = np.random.default_rng(seed)
  grid = np.stack(np.meshgrid(*[np.arange(s) for s in TINY_SHAPE],
                              indexing="ij"), -1)
  center = np.array(TINY_SHAPE) / 2
  brain = (((grid - center) / (center - 2)) ** 2).sum(-1) < 1
  rows = ["participant_id\thand_function"]
  for i in range(1, num_subjects + 1):
    sid = f"sub-{i:03d}"
    lesion = np.zeros(TINY_SHAPE, bool)
    count = 1 + i % 3
    for _ in range(count):
      c = center + rng.uniform(-5, 5, 3)
      lesion |= (((grid - c) / 2.0) ** 2).sum(-1) < 1
    lesion &= brain
    image = np.where(brain, 1.0 + 0.1 * rng.normal(size=TINY_SHAPE), 0.0)
    image = np.where(lesion, 2.0, image).astype(np.float32)
    nifti.save_nifti(image, TINY_AFFINE,
                        root / sid / "anat" / f"{sid}_FLAIR.nii.gz", np.float32)
    nifti.save_nifti(
        lesion.astype(np.uint8), TINY_AFFINE,
        root / "derivatives" / "lesions" / sid / "anat" /
        f"{sid}_label-lesion_mask.nii.gz", np.uint8)
    nifti.save_nifti(
        brain.astype(np.uint8), TINY_AFFINE,
        root / "derivatives" / "synthetic" / sid / "anat" /
        f"{sid}_desc-brain_mask.nii.gz", np.uint8)
    rows.append(f"{sid}\t{int(count >= 2)}")
  (root / "participants.tsv").write_text("\n".join(rows) + "\n")
  return root


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
  """Path of a 10-subject tiny BIDS cohort (read-only for tests)."""
  return write_tiny_cohort(tmp_path_factory.mktemp("tiny_cohort"))


@pytest.fixture(scope="session")
def tiny_builder(tiny_cohort, tmp_path_factory):
  """The TFDS dataset of the tiny cohort, built once per session."""
  from preprocessing import tfds_builder  # pylint: disable=g-import-not-at-top
  return tfds_builder.build(tiny_cohort, tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tmp_path_factory):
  """(workdir, cache dir, results) of a 4-step joint run on the tiny cohort.

  Trained once per session (`test_train.tiny_config`, r = 0.5); read-only
  for tests.
  """
  # pylint: disable=g-import-not-at-top
  from pvl_jax.training import train
  from tests.test_train import tiny_config
  workdir = tmp_path_factory.mktemp("run")
  cache = tmp_path_factory.mktemp("cache")
  results = train.train_and_evaluate(tiny_config(tiny_cohort, cache), workdir)
  return workdir, cache, results


# Seed of `raw_cohort`: sub-001 has thick slices (1.8 x 1.8 x 6 mm) and 9.7 ml
# of lesions, sub-002 2.4 mm voxels and 1.4 ml.
RAW_COHORT_SEED = 1


@pytest.fixture(scope="session")
def raw_cohort(tmp_path_factory):
  """Two raw-space synthetic subjects at 2 mm, FLAIR and T1w (read-only)."""
  from preprocessing.synthetic import cohort  # pylint: disable=g-import-not-at-top
  return cohort.generate_cohort(
      tmp_path_factory.mktemp("raw") / "cohort", 2, seed=RAW_COHORT_SEED,
      num_workers=2, progress=False, space="raw",
      modalities=("FLAIR", "T1w"))
