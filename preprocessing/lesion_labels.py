"""Lesion masks with an ignore label: reading them and their record values.

A lesion mask holds 0 (background) and 1 (lesion). A cohort may mark a third
kind of voxel with an *ignore label* (the WMH challenge's label 2, "other
pathology"): such voxels are neither lesion nor background, so training,
patch sampling and evaluation leave them out. In the TFDS records (and the
training batches cut from them) they carry `IGNORE`, whatever value the
cohort used, so that no later stage needs to know the cohort's choice.
"""

import os

import numpy as np
from scipy import ndimage

from preprocessing.io import nifti
from preprocessing.io.errors import InputError

BACKGROUND = 0
LESION = 1
# Ignored voxels in the records and batches: outside the class range of any
# model, and within uint8.
IGNORE = 255


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
  """A mask's lesions: its 26-connected (8 in 2D) components, numbered 1..n.

  The rule the lesion-wise metrics count lesions by (the WMH challenge's
  evaluation script), used wherever the project counts lesions: metrics,
  postprocessing and the sampler's lesion grouping.

  Returns:
    (labels, n) as `scipy.ndimage.label` gives them.
  """
  return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def load_lesion_labels(path: str | os.PathLike, *,
                       reference_shape: tuple[int, ...],
                       reference_affine: np.ndarray,
                       reference_path: str | os.PathLike,
                       threshold: float | None = None,
                       ignore_label: int | None = None) -> np.ndarray:
  """Reads a lesion mask as uint8 BACKGROUND / LESION / IGNORE.

  Args:
    path: the mask (.nii or .nii.gz).
    reference_shape: the scan's shape, which the mask must have.
    reference_affine: the scan's affine, which the mask must match.
    reference_path: the scan, named in mismatch messages.
    threshold: None: the voxels not ignored must hold 0 or 1; else those
      >= threshold are lesion (probabilities or other label maps).
    ignore_label: voxels of this value become IGNORE; None: none is.

  Returns:
    The labels in the file's voxel order.

  Raises:
    InputError: naming the file: unreadable, another grid than the scan, or
      values other than 0, 1 (and the ignore label) without a threshold.
  """
  data, affine = nifti.load_volume(path, kind="mask")
  nifti.check_same_geometry(reference_path, reference_shape, reference_affine,
                            path, data.shape, affine)
  return label_values(path, data, threshold=threshold,
                      ignore_label=ignore_label)


def label_values(path: str | os.PathLike, data: np.ndarray, *,
                 threshold: float | None = None,
                 ignore_label: int | None = None) -> np.ndarray:
  """A lesion mask's voxels `data` as BACKGROUND / LESION / IGNORE.

  Args:
    path: the mask, named in errors.
    data: its voxels (`nifti.load_volume`).
    threshold: as `load_lesion_labels`.
    ignore_label: as `load_lesion_labels`.

  Raises:
    InputError: naming `path`: values other than 0, 1 (and the ignore
      label) without a threshold.
  """
  ignored = (np.zeros(data.shape, bool) if ignore_label is None
             else data == ignore_label)
  if threshold is not None:
    lesion = data >= threshold
  else:
    others = np.unique(data[~ignored & (data != 0) & (data != 1)])
    if others.size:
      allowed = "0, 1" + ("" if ignore_label is None
                          else f" and the ignore label {ignore_label}")
      raise InputError(
          f"{path}: lesion mask holds values other than {allowed} (e.g. "
          f"{others[0]:g}); set data.mask_threshold (--mask_threshold) to "
          "binarise it or data.ignore_label to ignore a label")
    lesion = data == 1
  labels = np.where(lesion, LESION, BACKGROUND).astype(np.uint8)
  labels[ignored] = IGNORE
  return labels
