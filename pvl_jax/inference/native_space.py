"""Prediction on a scan's own grid: to template space, segment, and back.

Per scan: load and check it (one volume per modality of the run), preprocess
it as the training volumes were (`preprocessing.template_space.to_template`:
registration to the run's template -- MNI152, or the one the user brought,
`dataset.template_files` -- skull stripping, N4, resampling to the run's
template spacing, z-scoring, brain crop), predict with the run
(`trained_run.TrainedRun.predict`: sliding window, brain mask,
postprocessing), and bring the lesion probabilities back onto the scan's grid
through the inverse of the registration, linearly interpolated, thresholded
at 0.5 (as nnU-Net resamples probabilities, not masks: the boundary falls
between template voxels instead of snapping to them).
"""

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing import geometry
from preprocessing import template_space
from preprocessing.io import nifti
from pvl_jax.data import dataset
from pvl_jax.inference import trained_run


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A scan's segmentation, on the scan's own grid.

  Attributes:
    mask: uint8 0/1 lesion mask.
    probabilities: float32 lesion probability (after postprocessing).
    affine: the scan's affine.
    hand_function_prob: P(bad hand function); meaningful only for r > 0.
  """
  mask: np.ndarray
  probabilities: np.ndarray
  affine: np.ndarray
  hand_function_prob: float


def load_scan(run: trained_run.TrainedRun, path: Path
              ) -> tuple[np.ndarray, np.ndarray]:
  """A scan as (X, Y, Z, channels) and its affine, checked for the run.

  Raises:
    InputError: naming the file: unreadable, not one volume per modality of
      the run, a single slice, empty or constant.
  """
  data, affine = nifti.load_channels(
      path, len(run.modalities), kind=f"{'/'.join(run.modalities)} image")
  for channel in range(data.shape[-1]):
    template_space.check_scan(path, data[..., channel])
  return data, affine


def segment(run: trained_run.TrainedRun, path: Path) -> Prediction:
  """Preprocesses, segments and maps back one scan (see the module doc)."""
  data, affine = load_scan(run, path)
  scans = template_space.to_template(
      {m: (path, data[..., c], affine) for c, m in enumerate(run.modalities)},
      run.template_spacing,
      template_files=dataset.template_files(run.config))
  image = np.stack([scans.images[m] for m in run.modalities], axis=-1)
  probs, hand_function_prob = run.predict(image, scans.brain)
  native = to_native(probs, scans.grid, scans.to_native, data.shape[:3],
                     affine)
  return Prediction(mask=(native > 0.5).astype(np.uint8),
                    probabilities=native, affine=affine,
                    hand_function_prob=hand_function_prob)


def to_native(values: np.ndarray, grid: sitk.Image,
              transform: sitk.Transform, shape: tuple[int, ...],
              affine: np.ndarray) -> np.ndarray:
  """Resamples values on a template grid onto a native grid (linear, 0 outside).

  Args:
    values: a volume on `grid`.
    grid: the (cropped) template grid, as `to_template` returns it.
    transform: template points -> native points, as registration gives it.
    shape: the native grid's shape.
    affine: the native grid's affine.

  Returns:
    float32 volume of `shape`.
  """
  source = geometry.image_from_array(values.astype(np.float32),
                                         geometry.image_affine(grid))
  reference = geometry.image_from_array(np.zeros(shape, np.uint8), affine)
  # Resampling onto the native grid needs native -> template points.
  resampled = sitk.Resample(source, reference, transform.GetInverse(),
                            sitk.sitkLinear, 0.0, sitk.sitkFloat32)
  return sitk.GetArrayFromImage(resampled).T
