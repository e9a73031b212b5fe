"""The synthetic PVL cohort: layout, anatomy, lesions, labels, determinism."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from preprocessing import bids
from preprocessing import nifti_io
from preprocessing import synthetic
from preprocessing.errors import InputError

NUM_SUBJECTS = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic") / "cohort"
  return synthetic.generate_cohort(out, NUM_SUBJECTS, seed=5, num_workers=2,
                                   progress=False)


def _digests(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_bids_layout_loads(cohort):
  subjects = bids.load_cohort(cohort)
  assert [s.participant_id for s in subjects] == ["sub-001", "sub-002",
                                                  "sub-003"]
  assert all(s.brain_mask_path is not None for s in subjects)
  header = (cohort / "participants.tsv").read_text().splitlines()[0].split("\t")
  assert header[:2] == ["participant_id", "hand_function"]
  assert "motor_lesion_volume_ml" in header
  for name in ("dataset_description.json",
               "derivatives/lesions/dataset_description.json"):
    assert json.loads((cohort / name).read_text())["BIDSVersion"]


def test_volumes_are_in_template_space(cohort):
  template = synthetic.load_template(2)
  for path in cohort.rglob("*.nii.gz"):
    data, affine = nifti_io.load_volume(path)
    assert data.shape == template.brain.shape == (99, 117, 95)
    np.testing.assert_allclose(affine, template.affine)


def test_lesions_are_periventricular_and_bright(cohort):
  template = synthetic.load_template(2)
  for subject in bids.load_cohort(cohort):
    lesion = nifti_io.load_mask(subject.lesion_mask_path)
    brain = nifti_io.load_mask(subject.brain_mask_path)
    if not lesion.any():
      continue
    flair, _ = nifti_io.load_volume(subject.image_paths["FLAIR"])
    assert not (lesion & ~brain).any()
    # Within ~12 mm of the (template) ventricles: growth + band + deformation.
    distance = ndimage.distance_transform_edt(~template.ventricles,
                                              sampling=2.0)
    assert np.percentile(distance[lesion], 95) < 16
    wm = (template.wm > 0.9) & ~lesion & brain
    assert flair[lesion].mean() > flair[wm].mean() + 0.1


def test_same_seed_same_bytes_and_labels_whatever_the_cohort_size(
    cohort, tmp_path):
  # Subjects 1-2 of a 2-subject cohort are those of the 3-subject cohort.
  smaller = synthetic.generate_cohort(tmp_path / "two", 2, seed=5,
                                      num_workers=1, progress=False)
  full, small = _digests(cohort), _digests(smaller)
  for name, digest in small.items():
    if name.startswith(("sub-", "derivatives/lesions/sub-")):
      assert digest == full[name], name
  rows = (cohort / "participants.tsv").read_text().splitlines()
  assert (smaller / "participants.tsv").read_text().splitlines() == rows[:3]


def test_other_seed_differs(cohort, tmp_path):
  other = synthetic.generate_cohort(tmp_path / "other", 1, seed=6,
                                    progress=False)
  name = "sub-001/anat/sub-001_FLAIR.nii.gz"
  assert _digests(other)[name] != _digests(cohort)[name]


def test_generator_json_records_label_model(cohort):
  info = json.loads((cohort / "derivatives/synthetic/generator.json")
                    .read_text())
  assert info["params"]["resolution_mm"] == 2
  assert 0.5 <= info["bayes_accuracy"] <= 1.0
  labels = bids.read_participants(cohort / "participants.tsv")
  assert set(labels.values()) <= {0, 1}


def test_label_probability_is_monotone_and_centred():
  params = synthetic.CohortParams()
  p = synthetic.label_probability([0.0, params.label_threshold_ml - 0.01,
                                   params.label_threshold_ml * 10], params)
  assert p[0] < p[1] < p[2]
  assert p[1] == pytest.approx(0.5)


def test_bad_arguments(tmp_path, cohort):
  with pytest.raises(InputError, match="--num_subjects"):
    synthetic.generate_cohort(tmp_path / "x", 0, seed=0)
  with pytest.raises(InputError, match="--resolution_mm"):
    synthetic.generate_cohort(tmp_path / "x", 1, seed=0,
                              params=synthetic.CohortParams(resolution_mm=3))
  with pytest.raises(InputError, match="already exists"):
    synthetic.generate_cohort(cohort, 1, seed=0)
  with pytest.raises(InputError, match="--seed"):
    synthetic.generate_cohort(tmp_path / "x", 1, seed=-1)
  with pytest.raises(InputError, match="--num_workers"):
    synthetic.generate_cohort(tmp_path / "x", 1, seed=0, num_workers=0)
  assert not (tmp_path / "x").exists()


def test_cli_rejects_zero_subjects(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "preprocessing.synthetic",
       f"--out={tmp_path / 'c'}", "--num_subjects=0"],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "error: --num_subjects: must be >= 1" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "c").exists()
