"""The tiny cohort laid out as `preprocessing.run` writes a cohort (fixture).

`as_pipeline_output(cohort, out)` saves each subject of a tiny cohort
(`tests.conftest.write_tiny_cohort`) on its own crop of the tiny grid, cut
at a start that differs between subjects, with a dataset_description.json
that names the tiny grid as the user's template at 2 mm: a cohort whose
scans and masks are crops of one template grid, as the located head and the
baseline read preprocessing outputs.
"""

import dataclasses
import json
from pathlib import Path
import shutil

import numpy as np

from preprocessing import normalize
from preprocessing import pipeline_output
from preprocessing.io import nifti
from tests.conftest import TINY_AFFINE
from tests.conftest import TINY_SHAPE


def subject_ids(cohort: Path) -> list[str]:
  """The participants of a cohort's participants.tsv, in order."""
  rows = (cohort / "participants.tsv").read_text().splitlines()[1:]
  return [row.split("\t")[0] for row in rows if row.strip()]


def as_pipeline_output(cohort: Path, out: Path
                       ) -> tuple[Path, dict[str, tuple[int, int, int]]]:
  """The tiny cohort laid out as `preprocessing.run` writes a cohort.

  Each subject is saved on its own crop of the tiny grid (which the
  dataset_description.json names as the user's template, at 2 mm), cut at
  a start that differs between subjects.

  Returns:
    (the cohort, subject -> the template voxel of its files' voxel 0).
  """
  template = out.parent / "template"
  brain, _ = nifti.load_volume(cohort / "derivatives" / "synthetic" /
                               "sub-001" / "anat" /
                               "sub-001_desc-brain_mask.nii.gz")
  nifti.save_nifti(brain.astype(np.float32), TINY_AFFINE,
                   template / "T.nii.gz", np.float32)
  nifti.save_nifti(brain, TINY_AFFINE, template / "mask.nii.gz", np.uint8)
  shape = np.array(TINY_SHAPE)
  starts = {}
  for i, pid in enumerate(subject_ids(cohort)):
    # The brains lie 3 voxels inside the grid: every crop keeps them whole.
    start = np.array([i % 3, (i // 3) % 2, i % 2])
    stop = shape - [(i + 1) % 2, i % 3, 0]
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    affine = normalize.crop_affine(TINY_AFFINE, tuple(start))
    lesion = Path("derivatives", "lesions", pid, "anat",
                  f"{pid}_label-lesion_mask.nii.gz")
    for source, target, dtype in (
        (Path(pid, "anat", f"{pid}_FLAIR.nii.gz"),) * 2 + (np.float32,),
        (Path("derivatives", "synthetic", pid, "anat",
              f"{pid}_desc-brain_mask.nii.gz"),
         Path(pid, "anat", f"{pid}_desc-brain_mask.nii.gz"), np.uint8),
        (lesion, lesion, np.uint8)):
      volume, _ = nifti.load_volume(cohort / source)
      nifti.save_nifti(volume[crop], affine, out / target, dtype)
    starts[pid] = tuple(int(a) for a in start)
  shutil.copy(cohort / "participants.tsv", out)
  (out / pipeline_output.DESCRIPTION_FILE).write_text(json.dumps({
      "Name": "tiny, preprocessed", "BIDSVersion": "1.9.0",
      "DatasetType": "derivative",
      "GeneratedBy": [{"Name": pipeline_output.GENERATED_BY}],
      "PipelineParameters": dataclasses.asdict(pipeline_output.Params(
          target_spacing=2.0, template=str(template / "T.nii.gz"),
          template_mask=str(template / "mask.nii.gz")))}))
  return out, starts
