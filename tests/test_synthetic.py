"""The synthetic PVL cohort: layout, anatomy, lesions, labels, determinism.

Template space (`cohort`, generated here) and raw space (`raw_cohort`, from
conftest.py: the same seed, so the same subjects).
"""

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
import SimpleITK as sitk

from preprocessing import bids
from preprocessing import geometry
from preprocessing import template as template_lib
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from preprocessing.synthetic import anatomy
from preprocessing.synthetic import cohort as cohort_lib
from preprocessing.synthetic import lesions
from preprocessing.synthetic import subject as subject_lib
from preprocessing.synthetic import params as params_lib
from preprocessing.synthetic.params import CohortParams

NUM_SUBJECTS = 3
SEED = 1  # conftest.RAW_COHORT_SEED: raw_cohort holds the same subjects
SPACE = template_lib.TEMPLATE_SPACE


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic") / "cohort"
  return cohort_lib.generate_cohort(out, NUM_SUBJECTS, seed=SEED,
                                    num_workers=2, progress=False,
                                    space="template")


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
  template = anatomy.load_template(2)
  for path in cohort.rglob("*.nii.gz"):
    data, affine = nifti.load_volume(path)
    assert data.shape == template.brain.shape == (99, 117, 95)
    np.testing.assert_allclose(affine, template.affine)


def test_lesions_are_periventricular_and_bright(cohort):
  template = anatomy.load_template(2)
  for subject in bids.load_cohort(cohort):
    lesion = nifti.load_mask(subject.lesion_mask_path)
    brain = nifti.load_mask(subject.brain_mask_path)
    if not lesion.any():
      continue
    flair, _ = nifti.load_volume(subject.image_paths["FLAIR"])
    assert not (lesion & ~brain).any()
    # Seeds lie within ~16 mm of the (template) ventricles (growth 4 + band
    # 9 + deformation 3); a large confluent lesion reaches up to ~10 mm
    # further into the white matter.
    distance = ndimage.distance_transform_edt(~template.ventricles,
                                              sampling=2.0)
    assert np.median(distance[lesion]) < 12
    assert np.percentile(distance[lesion], 95) < 26
    wm = (template.wm > 0.9) & ~lesion & brain
    assert flair[lesion].mean() > flair[wm].mean() + 0.1


def test_every_subject_has_a_visible_lesion():
  # A PVL cohort: each subject's first lesion is of the medium or large class
  # (radius >= 0.7 * 3.2 mm, so well over 8 voxels of 2 mm unless the
  # ventricles or the brain edge cut it), whatever the seed.
  params = CohortParams()
  for seed in np.random.SeedSequence(7).spawn(4):
    lesion = subject_lib.generate_subject(params, seed)["lesion"]
    labels, count = ndimage.label(lesion, np.ones((3, 3, 3)))
    assert count >= 1
    assert np.bincount(labels.ravel())[1:].max() >= 8


def test_same_seed_same_bytes_and_labels_whatever_the_cohort_size(
    cohort, tmp_path):
  # Subjects 1-2 of a 2-subject cohort are those of the 3-subject cohort.
  smaller = cohort_lib.generate_cohort(tmp_path / "two", 2, seed=SEED,
                                       num_workers=1, progress=False,
                                       space="template")
  full, small = _digests(cohort), _digests(smaller)
  for name, digest in small.items():
    if name.startswith(("sub-", "derivatives/lesions/sub-")):
      assert digest == full[name], name
  rows = (cohort / "participants.tsv").read_text().splitlines()
  assert (smaller / "participants.tsv").read_text().splitlines() == rows[:3]


def test_other_seed_differs(cohort, tmp_path):
  other = cohort_lib.generate_cohort(tmp_path / "other", 1, seed=SEED + 1,
                                     progress=False, space="template")
  name = "sub-001/anat/sub-001_FLAIR.nii.gz"
  assert _digests(other)[name] != _digests(cohort)[name]


def test_generator_json_records_label_model(cohort):
  info = json.loads((cohort / "derivatives/synthetic/generator.json")
                    .read_text())
  assert info["params"]["resolution_mm"] == 2
  assert 0.5 <= info["bayes_accuracy"] <= 1.0
  labels = bids.read_participants(cohort / "participants.tsv")
  assert set(labels.values()) <= {0, 1}


def test_deformation_moves_the_brain_only_when_asked():
  brain = anatomy.load_template(2).brain
  seed = np.random.SeedSequence(SEED)
  rigid = subject_lib.generate_subject(CohortParams(deform_mm=0.0),
                                       seed)["brain"] > 0
  np.testing.assert_array_equal(rigid, brain)
  deformed = subject_lib.generate_subject(CohortParams(), seed)[
      "brain"] > 0
  assert 0.9 < _dice(deformed, brain) < 0.99


def test_label_probability_is_monotone_and_centred():
  params = CohortParams()
  p = lesions.label_probability([0.0, params.label_threshold_ml - 0.01,
                                 params.label_threshold_ml * 10], params)
  assert p[0] < p[1] < p[2]
  assert p[1] == pytest.approx(0.5)


def test_bad_arguments(tmp_path, cohort):
  with pytest.raises(InputError, match="--num_subjects"):
    cohort_lib.generate_cohort(tmp_path / "x", 0, seed=0)
  with pytest.raises(InputError, match="--resolution_mm"):
    cohort_lib.generate_cohort(tmp_path / "x", 1, seed=0,
                               params=CohortParams(resolution_mm=3))
  with pytest.raises(InputError, match="already exists"):
    cohort_lib.generate_cohort(cohort, 1, seed=0)
  with pytest.raises(InputError, match="--seed"):
    cohort_lib.generate_cohort(tmp_path / "x", 1, seed=-1)
  for deform_mm in (-1.0, 10.5):
    with pytest.raises(InputError, match=r"--deform_mm: must be in \[0, 10\]"):
      cohort_lib.generate_cohort(
          tmp_path / "x", 1, seed=0,
          params=CohortParams(deform_mm=deform_mm))
  with pytest.raises(InputError, match="--num_workers"):
    cohort_lib.generate_cohort(tmp_path / "x", 1, seed=0, num_workers=0)
  with pytest.raises(InputError, match="--space"):
    cohort_lib.generate_cohort(tmp_path / "x", 1, seed=0, space="native")
  for modalities in ((), ("FLAIR", "FLAIR"), ("FLAIR", "T2w")):
    with pytest.raises(InputError, match="--modalities"):
      cohort_lib.generate_cohort(tmp_path / "x", 1, seed=0,
                                 modalities=modalities)
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag, message", [
    ("--num_subjects=0", "error: --num_subjects: must be >= 1"),
    ("--space=native", "error: --space: must be one of raw, template"),
    ("--modalities=FLAIR,DWI", "error: --modalities: distinct names among"),
    ("--deform_mm=12", "error: --deform_mm: must be in [0, 10] (got 12)"),
])
def test_cli_rejects_bad_arguments(flag, message, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "preprocessing.synthetic",
       f"--out={tmp_path / 'c'}", flag],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "c").exists()


def _dice(a, b):
  return 2 * (a & b).sum() / (a.sum() + b.sum())


def _raw_subject(raw_cohort, pid):
  """(FLAIR, T1w, affine, truth folder, acquisition record) of a subject."""
  flair, affine = nifti.load_volume(raw_cohort / pid / "anat" /
                                       f"{pid}_FLAIR.nii.gz")
  t1w, t1w_affine = nifti.load_volume(raw_cohort / pid / "anat" /
                                         f"{pid}_T1w.nii.gz")
  assert t1w.shape == flair.shape
  np.testing.assert_array_equal(t1w_affine, affine)
  record = json.loads((raw_cohort / "derivatives" / "synthetic" /
                       "acquisition.json").read_text())["subjects"][pid]
  return (flair, t1w, affine,
          raw_cohort / "derivatives" / "synthetic" / pid / "anat", record)


def _truth_transform(truth, pid):
  return sitk.ReadTransform(str(truth / f"{pid}_from-{SPACE}_to-native"
                                "_xfm.tfm"))


def _true_and_shifted(truth, pid):
  """The subject's true transform, and the same moved 10 mm up."""
  pose = _truth_transform(truth, pid)
  shifted = sitk.Euler3DTransform(pose)
  shifted.SetTranslation(np.add(pose.GetTranslation(), (0, 0, 10)).tolist())
  return {"true": pose, "shifted": shifted}


def test_raw_cohort_loads_with_native_ground_truth(raw_cohort):
  subjects = bids.load_cohort(raw_cohort, modalities=("FLAIR", "T1w"))
  assert [s.participant_id for s in subjects] == ["sub-001", "sub-002"]
  template = anatomy.load_template(2)
  for subject in subjects:
    pid = subject.participant_id
    flair, _, affine, truth, record = _raw_subject(raw_cohort, pid)
    # The scanner's grid: its own voxel size and a non-RAS voxel order.
    assert flair.shape == tuple(record["shape"])
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0),
                               record["spacing_mm"], rtol=1e-5)
    assert "".join(nib.aff2axcodes(affine)) == record["orientation"] != "RAS"
    for path in (subject.lesion_mask_path, subject.brain_mask_path):
      nifti.load_mask(path, reference_shape=flair.shape,
                         reference_affine=affine)
    bias, bias_affine = nifti.load_volume(
        truth / f"{pid}_desc-biasfield.nii.gz")
    assert bias.shape == flair.shape
    np.testing.assert_allclose(bias_affine, affine, atol=1e-5)
    lesion, lesion_affine = nifti.load_volume(
        truth / f"{pid}_space-{SPACE}_label-lesion_mask.nii.gz")
    assert lesion.shape == template.brain.shape
    np.testing.assert_allclose(lesion_affine, template.affine)
    # The pose: within the drawn ranges, as recorded.
    pose = sitk.Euler3DTransform(_truth_transform(truth, pid))
    rotation = np.rad2deg(pose.GetParameters()[:3])
    np.testing.assert_allclose(rotation, record["rotation_deg"], atol=1e-6)
    assert np.abs(rotation).max() <= 15
    assert np.abs(pose.GetTranslation()).max() <= 20


def test_cohort_mixes_voxel_sizes(raw_cohort):
  spacings = [np.linalg.norm(nifti.load_volume(
      raw_cohort / pid / "anat" / f"{pid}_FLAIR.nii.gz")[1][:3, :3], axis=0)
              for pid in ("sub-001", "sub-002")]
  anisotropy = [s.max() / s.min() for s in spacings]
  # Thick slices (3 x the in-plane size), and a grid of about 2 mm.
  assert anisotropy[0] == pytest.approx(6 / 1.8)
  assert anisotropy[1] < 1.5
  # Neither grid is the 2 mm template's.
  assert not any(np.allclose(s, 2.0) for s in spacings)


def test_raw_and_template_cohorts_hold_the_same_subjects(raw_cohort, cohort):
  def info(root):
    return json.loads((root / "derivatives" / "synthetic" /
                       "generator.json").read_text())
  assert info(raw_cohort)["seed"] == info(cohort)["seed"]
  raw_rows = (raw_cohort / "participants.tsv").read_text().splitlines()
  assert raw_rows == (cohort / "participants.tsv").read_text().splitlines()[:3]
  for pid in ("sub-001", "sub-002"):
    truth = (raw_cohort / "derivatives" / "synthetic" / pid / "anat" /
             f"{pid}_space-{SPACE}_label-lesion_mask.nii.gz")
    template = (cohort / "derivatives" / "lesions" / pid / "anat" /
                f"{pid}_label-lesion_mask.nii.gz")
    assert truth.read_bytes() == template.read_bytes()


def test_transform_carries_template_brain_into_native_brain(raw_cohort):
  template = template_lib.load_template(2)
  for pid in ("sub-001", "sub-002"):
    flair, _, affine, truth, _ = _raw_subject(raw_cohort, pid)
    native = geometry.image_from_array(flair, affine)
    brain = nifti.load_mask(truth / f"{pid}_desc-brain_mask.nii.gz")
    pose = _truth_transform(truth, pid)
    dice = {name: _dice(sitk.GetArrayFromImage(geometry.resample_mask(
        template.brain_mask, native, transform.GetInverse())).T > 0, brain)
            for name, transform in _true_and_shifted(truth, pid).items()}
    # The subject's brain is the template's, smoothly deformed (3 mm).
    assert dice["true"] > 0.95, dice
    assert dice["shifted"] < dice["true"] - 0.05, dice


def test_native_lesion_mask_is_the_template_mask_carried(raw_cohort):
  for pid in ("sub-001", "sub-002"):
    flair, _, affine, truth, _ = _raw_subject(raw_cohort, pid)
    native = geometry.image_from_array(flair, affine)
    lesion = nifti.load_mask(raw_cohort / "derivatives" / "lesions" / pid /
                                "anat" / f"{pid}_label-lesion_mask.nii.gz")
    template_lesion = geometry.image_from_array(*nifti.load_volume(
        truth / f"{pid}_space-{SPACE}_label-lesion_mask.nii.gz"))
    dice = {name: _dice(sitk.GetArrayFromImage(geometry.resample_mask(
        template_lesion, native, transform.GetInverse())).T > 0, lesion)
            for name, transform in _true_and_shifted(truth, pid).items()}
    assert lesion.sum() > 50
    # Not exactly 1: thick slices average the lesion over their thickness.
    assert dice["true"] > 0.9, dice
    assert dice["shifted"] < 0.7, dice


def test_bias_field_is_smooth_and_applied(raw_cohort):
  for pid in ("sub-001", "sub-002"):
    flair, _, _, truth, record = _raw_subject(raw_cohort, pid)
    brain = nifti.load_mask(truth / f"{pid}_desc-brain_mask.nii.gz")
    bias, _ = nifti.load_volume(truth / f"{pid}_desc-biasfield.nii.gz")
    inside = bias[brain]
    assert 0.4 < inside.min() and inside.max() < 2.5
    assert inside.max() / inside.min() > 1.5
    assert 0.8 < np.exp(np.log(inside).mean()) < 1.25
    # Smooth: at most a few percent per mm along any axis.
    for axis, spacing in enumerate(record["spacing_mm"]):
      assert np.abs(np.diff(np.log(bias), axis=axis)).max() / spacing < 0.04
    # Applied to the scan: the brain is brighter where the field is high.
    high = brain & (bias >= np.percentile(inside, 90))
    low = brain & (bias <= np.percentile(inside, 10))
    brightness = np.median(flair[high]) / np.median(flair[low])
    assert brightness == pytest.approx(
        np.median(bias[high]) / np.median(bias[low]), rel=0.15)


def test_raw_contrasts_and_head_shell(raw_cohort):
  for pid in ("sub-001", "sub-002"):
    flair, t1w, _, truth, _ = _raw_subject(raw_cohort, pid)
    brain = nifti.load_mask(truth / f"{pid}_desc-brain_mask.nii.gz")
    bias, _ = nifti.load_volume(truth / f"{pid}_desc-biasfield.nii.gz")
    lesion = nifti.load_mask(raw_cohort / "derivatives" / "lesions" / pid /
                                "anat" / f"{pid}_label-lesion_mask.nii.gz")
    flair, t1w = flair / bias, t1w / bias
    # Lesions bright on FLAIR, dark on T1w.
    assert flair[lesion].mean() > 1.15 * np.median(flair[brain])
    assert t1w[lesion].mean() < 0.9 * np.median(t1w[brain])
    # Scalp fat brighter than any brain tissue, so skull stripping matters.
    for image in (flair, t1w):
      assert np.percentile(image[~brain], 99.5) > 1.4 * np.median(image[brain])


def test_raw_same_seed_same_bytes_through_the_cli(raw_cohort, tmp_path):
  # Raw space is the CLI's default; modalities in any order.
  out = tmp_path / "one"
  subprocess.run(
      [sys.executable, "-m", "preprocessing.synthetic", f"--out={out}",
       "--num_subjects=1", f"--seed={SEED}", "--modalities=T1w,FLAIR",
       "--num_workers=1"], capture_output=True, text=True, timeout=300,
      check=True)
  one, both = _digests(out), _digests(raw_cohort)
  subject_files = [name for name in one if "sub-001" in name]
  assert len(subject_files) == 7  # 2 scans, 3 native truths, xfm, lesion
  for name in subject_files:
    assert one[name] == both[name], name
  rows = (raw_cohort / "participants.tsv").read_text().splitlines()
  assert (out / "participants.tsv").read_text().splitlines() == rows[:2]


def test_the_label_region_moves_only_when_asked():
  """label_roi_centres_mm moves the region whose lesions decide the label."""
  moved = CohortParams(label_roi_centres_mm=((30.0, -50.0, 8.0),
                                             (-30.0, -50.0, 8.0)))
  template = anatomy.load_template(2)
  motor = lesions.motor_roi(template)
  elsewhere = lesions.motor_roi(template, moved.label_roi_centres_mm)
  assert motor.sum() > 100 and elsewhere.sum() > 100
  assert not np.any(motor & elsewhere)
  seed = np.random.SeedSequence(3)
  default = subject_lib.generate_subject(CohortParams(), seed)
  assert default["motor_ml"] == pytest.approx(
      (default["lesion"].astype(bool) & motor).sum() * 0.008)
  subject = subject_lib.generate_subject(moved, seed)
  assert subject["motor_ml"] == pytest.approx(
      (subject["lesion"].astype(bool) & elsewhere).sum() * 0.008)
  # Cached cohorts keep their keys: the new field at its default stays out.
  assert "label_roi_centres_mm" not in params_lib.identity(CohortParams())
  assert params_lib.identity(moved)["label_roi_centres_mm"] == (
      moved.label_roi_centres_mm)
