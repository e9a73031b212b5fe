"""A small BIDS study that looks like a lab's own data (test fixture).

`write_study(root)` writes, from small arrays, a skull-stripped 2 mm cohort
with what real studies have and the synthetic cohort lacks:

* sessions (`ses-01`; two participants also `ses-02`, with other scans and
  masks) and, for one participant, two runs of ses-01 (`run-1`, `run-2`)
  whose lesion mask was drawn on run 2 only;
* a T1w beside every FLAIR, dataset_description.json files, a sidecar;
* participants.tsv with age, sex and site columns (6 sites) and `n/a`
  hand-function labels for three participants;
* lesion masks with label-2 blobs ("other pathology", bright in FLAIR as
  the lesions are) in every other participant;
* no brain masks (zero outside the brain: the `nonzero` rule applies);
* volumes of slightly different shapes and origins.

`add_ignore_blobs(src, dst)` copies a template-space cohort adding label-2
blobs, bright as its lesions, to every subject (the ignore-label benchmark of
docs/results.md).

  python -c "from tests import own_data; own_data.write_study('/tmp/study')"
"""

import json
import os
from pathlib import Path
import shutil

import numpy as np
from scipy import ndimage

from preprocessing import bids
from preprocessing.io import nifti

NUM_SUBJECTS = 15
SITES = ("A", "A", "A", "B", "B", "B", "C", "C", "D", "D", "E", "E", "F",
         "F", "F")
UNLABELLED = ("sub-004", "sub-009", "sub-013")
TWO_SESSIONS = ("sub-002", "sub-007")
TWO_RUNS = "sub-005"
IGNORE_LABEL = 2
_BASE_SHAPE = np.array([36, 42, 34])


def _ellipsoid(shape, centre, radii) -> np.ndarray:
  grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"),
                  -1)
  return (((grid - centre) / radii) ** 2).sum(-1) < 1


def _scan(rng: np.random.Generator, shape, with_blobs: bool
          ) -> tuple[np.ndarray, np.ndarray, int]:
  """(FLAIR, lesion mask with label-2 blobs, number of lesions)."""
  centre = np.asarray(shape) / 2
  brain = _ellipsoid(shape, centre, centre - 3)
  labels = np.zeros(shape, np.uint8)
  count = int(rng.integers(1, 4))
  for _ in range(count):
    c = centre + rng.uniform(-6, 6, 3)
    labels[_ellipsoid(shape, c, rng.uniform(1.5, 2.5, 3)) & brain] = 1
  if with_blobs:
    for _ in range(2):
      c = centre + rng.uniform(-8, 8, 3)
      blob = _ellipsoid(shape, c, np.full(3, 1.8)) & brain & (labels == 0)
      labels[blob] = IGNORE_LABEL
  image = np.where(brain, 1.0 + 0.08 * rng.normal(size=shape), 0.0)
  image = np.where(labels > 0, 2.0 + 0.08 * rng.normal(size=shape), image)
  return image.astype(np.float32), labels, count


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
  nifti.save_nifti(data, affine, path,
                   np.uint8 if data.dtype == np.uint8 else np.float32)


def _description(name: str, derivative: bool) -> str:
  description = {"Name": name, "BIDSVersion": "1.9.0",
                 "DatasetType": "derivative" if derivative else "raw"}
  if derivative:
    description["GeneratedBy"] = [{"Name": "manual segmentation"}]
  return json.dumps(description, indent=2) + "\n"


def write_study(root: str | os.PathLike, num_subjects: int = NUM_SUBJECTS,
                seed: int = 0) -> Path:
  """Writes the study (see the module docstring) and returns its folder."""
  root = Path(root)
  rng = np.random.default_rng(seed)
  rows = ["participant_id\tage\tsex\tsite\thand_function"]
  lesions = root / "derivatives" / "lesions"
  for i in range(1, num_subjects + 1):
    pid = f"sub-{i:03d}"
    shape = tuple(_BASE_SHAPE + rng.integers(-2, 3, 3))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = rng.uniform(-80, -60, 3)
    sessions = ("01", "02") if pid in TWO_SESSIONS else ("01",)
    counts = []
    for session in sessions:
      runs = ("1", "2") if pid == TWO_RUNS and session == "01" else ("",)
      for run in runs:
        image, labels, count = _scan(rng, shape, with_blobs=i % 2 == 0)
        stem = f"{pid}_ses-{session}" + (f"_run-{run}" if run else "")
        anat = root / pid / f"ses-{session}" / "anat"
        _write(anat / f"{stem}_FLAIR.nii.gz", image, affine)
        _write(anat / f"{stem}_T1w.nii.gz",
               np.where(image > 0, 3.0 - image, 0).astype(np.float32), affine)
        if run in ("", "2"):
          _write(lesions / pid / f"ses-{session}" / "anat" /
                 f"{stem}_label-lesion_mask.nii.gz", labels, affine)
          counts.append(count)
    label = "n/a" if pid in UNLABELLED else str(int(counts[0] >= 2))
    rows.append(f"{pid}\t{rng.integers(6, 12)}\t{'MF'[i % 2]}\t"
                f"{SITES[(i - 1) % len(SITES)]}\t{label}")
  (root / bids.PARTICIPANTS_FILE).write_text("\n".join(rows) + "\n")
  (root / "participants.json").write_text(json.dumps({
      "hand_function": {"Description": "0 good, 1 bad",
                        "Levels": {"0": "good", "1": "bad"}},
      "site": {"Description": "scanning site"}}, indent=2) + "\n")
  (root / "dataset_description.json").write_text(
      _description("a lab's PVL study", derivative=False))
  (lesions / "dataset_description.json").write_text(
      _description("lesion masks", derivative=True))
  return root


def add_ignore_blobs(src: str | os.PathLike, dst: str | os.PathLike,
                     blobs_per_subject: int = 3, seed: int = 0) -> Path:
  """Copies a template-space cohort adding label-2 blobs to every subject.

  Each blob is a sphere of 2 voxels' radius inside the brain, at least 3
  voxels from any lesion; its voxels are scaled to the subject's mean lesion
  intensity (their texture kept), and marked 2 in the lesion mask.

  Args:
    src: a cohort with brain masks (e.g. the embedded synthetic cohort).
    dst: where the copy goes (must not exist).
    blobs_per_subject: blobs added to each subject.
    seed: where the blobs go.

  Returns:
    dst.
  """
  dst = Path(dst)
  shutil.copytree(src, dst)
  rng = np.random.default_rng(seed)
  for subject in bids.load_cohort(dst):
    flair = subject.image_paths["FLAIR"]
    image, affine = nifti.load_volume(flair)
    labels, _ = nifti.load_volume(subject.lesion_mask_path)
    brain = nifti.load_mask(subject.brain_mask_path) > 0
    lesion = labels > 0
    far = brain & ~ndimage.binary_dilation(lesion, iterations=3)
    far = ndimage.binary_erosion(far, iterations=2)
    centres = np.argwhere(far)
    blobs = np.zeros(image.shape, bool)
    for index in rng.choice(len(centres), blobs_per_subject, replace=False):
      blobs |= _ellipsoid(image.shape, centres[index], np.full(3, 2.0))
    blobs &= brain & ~lesion
    image[blobs] *= image[lesion].mean() / image[blobs].mean()
    labels = np.where(blobs, IGNORE_LABEL, labels).astype(np.uint8)
    for path, data in ((flair, image), (subject.lesion_mask_path, labels)):
      path.unlink()  # the copy's file, rewritten atomically
      _write(path, data, affine)
  return dst
