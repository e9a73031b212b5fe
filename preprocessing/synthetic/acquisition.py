"""Simulated MR acquisition: a clean template-space brain -> raw scans.

The synthetic generator (`subject`) builds each subject's brain on the
MNI152 template grid, clean: partial volume, but no bias field and no noise.
A scanner sees the whole head, in some pose, through a voxel grid of its
own, with the receive coil's bias and thermal noise. This module simulates
that, so that the raw preprocessing pipeline (`preprocessing.pipeline`) gets
scans that need every one of its steps, and ground truth to be scored
against (`benchmarks.preprocessing`).

Per subject, from the subject's own random stream (the ranges are
`AcquisitionParams` fields):

1. Head: a shell around the brain mask, made of CSF (nulled in FLAIR), bone
   (dark) and scalp fat (bright), whose layer thicknesses vary smoothly over
   the head, so that skull stripping is needed.
2. Pose: a rigid transform, rotating by up to `rotation_deg` about each axis
   (about the brain's centre) and shifting by up to `translation_mm`.
3. Native grid: a voxel size drawn from `spacings_mm` (by default values
   for the 1 mm template, scaled with the template's resolution so that a
   2 mm cohort stays as coarse relative to its anatomy; with
   `scale_spacings=False` the scanner's own voxel sizes in mm, whatever the
   template's resolution), voxel axes stored in one of
   `orientations` (never RAS) and tilted by up to `oblique_deg`; the grid
   covers the head plus `margin_mm` of air.
4. Sampling: linear interpolation, averaged over the voxel's extent along
   the axes at least 1.5 times coarser than the template (the slice profile
   of thick slices). The brain and lesion masks are sampled the same way and
   kept where they fill at least half of a voxel.
5. A smooth multiplicative bias field and Rician noise, on the native grid.
   The field is the receive coil's, so all modalities share it; each
   modality draws its own noise level.

Geometry conventions are `preprocessing.registration`'s and
`preprocessing.geometry`'s: the pose maps TEMPLATE points to NATIVE points
in LPS millimetres, as registration estimates it, and NIfTI affines are
voxel -> RAS millimetres.
"""

import dataclasses

import numpy as np
from scipy import ndimage
import SimpleITK as sitk

from preprocessing import geometry
from preprocessing.synthetic import random_fields
from preprocessing.synthetic.mr_signal import bias_field
from preprocessing.synthetic.mr_signal import rician
from preprocessing.synthetic.params import AcquisitionParams

# Shell intensities (CSF, bone, scalp), as multiples of the modality's
# white-matter intensity: CSF is nulled in FLAIR and dark in T1w, cortical
# bone has almost no signal, scalp fat is bright in both.
SHELL_CONTRAST = {"FLAIR": (0.23, 0.06, 2.0), "T1w": (0.2, 0.06, 1.3)}
# Nibabel axis codes: the world direction (RAS) each letter points to.
_AXIS_DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0),
                    "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


@dataclasses.dataclass(frozen=True)
class TemplateSubject:
  """One subject on the template grid, before acquisition.

  Attributes:
    images: modality -> clean brain image (0 outside the brain).
    white_matter: modality -> its white-matter intensity, which scales the
      noise and the shell.
    brain: boolean brain mask.
    lesion: boolean lesion mask.
    affine: the template grid's voxel -> RAS affine.
  """
  images: dict[str, np.ndarray]
  white_matter: dict[str, float]
  brain: np.ndarray
  lesion: np.ndarray
  affine: np.ndarray


@dataclasses.dataclass(frozen=True)
class NativeScan:
  """A subject as the scanner wrote it, with the ground truth.

  Attributes:
    images: modality -> float32 scan on the native grid.
    lesion: uint8 lesion mask on the native grid.
    brain: uint8 brain mask on the native grid.
    bias: float32 multiplicative bias field on the native grid.
    affine: the native grid's voxel -> RAS affine.
    to_native: the pose, template points -> native points (LPS mm).
    record: the drawn acquisition, JSON-ready.
  """
  images: dict[str, np.ndarray]
  lesion: np.ndarray
  brain: np.ndarray
  bias: np.ndarray
  affine: np.ndarray
  to_native: sitk.Euler3DTransform
  record: dict[str, object]


def acquire(rng: np.random.Generator, subject: TemplateSubject,
            noise_level: tuple[float, float],
            params: AcquisitionParams = AcquisitionParams()) -> NativeScan:
  """Simulates the scans of one subject (see the module docstring).

  Args:
    rng: the subject's acquisition stream.
    subject: the clean template-space subject.
    noise_level: (low, high) Rician sigma relative to white matter, as
      `params.CohortParams.noise_level`.
    params: the acquisition ranges.

  Returns:
    The native scans and their ground truth.
  """
  voxel_mm = float(np.linalg.norm(subject.affine[:3, 0]))
  heads, in_head = _heads(rng, subject, params, voxel_mm)
  template = geometry.image_from_array(subject.brain.astype(np.float32),
                                       subject.affine)
  centre = template.TransformContinuousIndexToPhysicalPoint(
      [float(c) for c in ndimage.center_of_mass(subject.brain)])
  rotation = rng.uniform(-params.rotation_deg, params.rotation_deg, 3)
  translation = rng.uniform(-params.translation_mm, params.translation_mm, 3)
  pose = sitk.Euler3DTransform()
  pose.SetCenter(centre)
  pose.SetRotation(*np.deg2rad(rotation).tolist())
  pose.SetTranslation(translation.tolist())
  spacing_class = rng.choice(len(params.spacings_mm), p=params.spacing_probs)
  spacing = np.asarray(params.spacings_mm[spacing_class]) * (
      voxel_mm if params.scale_spacings else 1.0)
  orientation = params.orientations[rng.integers(len(params.orientations))]
  tilt = rng.uniform(-params.oblique_deg, params.oblique_deg, 3)
  grid = _native_grid(template, in_head, pose, spacing, orientation, tilt,
                      params.margin_mm)
  # Thick slices average the anatomy over their extent.
  factors = [max(1, int(round(s / voxel_mm))) for s in spacing]
  to_template = pose.GetInverse()

  def sample(volume: np.ndarray) -> np.ndarray:
    image = geometry.image_from_array(volume.astype(np.float32),
                                      subject.affine)
    return _sample(image, grid, to_template, factors)

  shape = tuple(grid.GetSize())
  bias = bias_field(random_fields.smooth_noise(rng, shape, 4),
                    params.bias_strength)
  images, sigmas = {}, {}
  for modality, head in heads.items():
    sigmas[modality] = (rng.uniform(*noise_level)
                        * subject.white_matter[modality])
    images[modality] = rician(rng, sample(head) * bias,
                              sigmas[modality]).astype(np.float32)
  return NativeScan(
      images=images,
      lesion=(sample(subject.lesion) >= 0.5).astype(np.uint8),
      brain=(sample(subject.brain) >= 0.5).astype(np.uint8),
      bias=bias.astype(np.float32),
      affine=geometry.image_affine(grid),
      to_native=pose,
      record={"spacing_mm": spacing.tolist(), "orientation": orientation,
              "oblique_deg": tilt.tolist(), "rotation_deg": rotation.tolist(),
              "translation_mm": translation.tolist(), "shape": list(shape),
              "noise_sigma": sigmas})


def _heads(rng: np.random.Generator, subject: TemplateSubject,
           params: AcquisitionParams, voxel_mm: float
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The clean images with the CSF, bone and scalp shell around the brain.

  Returns:
    (modality -> head image, boolean mask of the head) on the template grid.
  """
  shape = subject.brain.shape
  outside_mm = ndimage.distance_transform_edt(~subject.brain,
                                              sampling=voxel_mm)
  # Outer edges of the three layers, each of a smoothly varying thickness.
  edges = np.cumsum([lo + (hi - lo) * (random_fields.smooth_noise(
      rng, shape, 6) + 1) / 2 for lo, hi in
                     (params.csf_mm, params.bone_mm, params.scalp_mm)], 0)
  # 0 brain, 1 CSF, 2 bone, 3 scalp, 4 air.
  layer = (outside_mm > 0) + (outside_mm[None] > edges).sum(0)
  heads = {}
  for modality, image in subject.images.items():
    contrast = np.array((0.0, *SHELL_CONTRAST[modality], 0.0))
    heads[modality] = (image + contrast[layer]
                       * subject.white_matter[modality]).astype(np.float32)
  return heads, layer < 4


def _native_grid(template: sitk.Image, in_head: np.ndarray,
                 pose: sitk.Transform, spacing: np.ndarray,
                 orientation: str, tilt_deg: np.ndarray, margin_mm: float
                 ) -> sitk.Image:
  """The scanner's grid: oriented, tilted, covering the posed head."""
  axes = np.array([_AXIS_DIRECTIONS[code] for code in orientation],
                  float).T
  tilt = sitk.Euler3DTransform()
  tilt.SetRotation(*np.deg2rad(tilt_deg).tolist())
  direction = (np.asarray(tilt.GetMatrix()).reshape(3, 3)
               @ geometry.RAS_TO_LPS @ axes)
  voxels = np.argwhere(in_head)
  corners = np.array(np.meshgrid(*zip(voxels.min(0), voxels.max(0))))
  native = np.array([
      pose.TransformPoint(template.TransformIndexToPhysicalPoint(
          [int(c) for c in corner]))
      for corner in corners.reshape(3, -1).T])
  local = native @ direction  # coordinates along the grid's axes
  start = local.min(0) - margin_mm
  size = np.ceil((local.max(0) + margin_mm - start) / spacing).astype(int)
  grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
  grid.SetSpacing(spacing.tolist())
  grid.SetDirection(direction.ravel().tolist())
  grid.SetOrigin((direction @ start).tolist())
  return grid


def _sample(image: sitk.Image, grid: sitk.Image, to_template: sitk.Transform,
            factors: list[int]) -> np.ndarray:
  """`image` on `grid`, each voxel the mean of factors[a] samples along axis a.

  Returns:
    float32 array in (i, j, k) order.
  """
  factors_ = np.asarray(factors)
  spacing = np.asarray(grid.GetSpacing())
  direction = np.asarray(grid.GetDirection()).reshape(3, 3)
  fine = sitk.Image([int(n * f) for n, f in zip(grid.GetSize(), factors)],
                    sitk.sitkUInt8)
  fine.SetSpacing((spacing / factors_).tolist())
  fine.SetDirection(grid.GetDirection())
  # Sub-sample centres sit symmetrically about each voxel's centre.
  offset = -(factors_ - 1) * spacing / (2 * factors_)
  fine.SetOrigin((np.asarray(grid.GetOrigin()) + direction @ offset).tolist())
  values = sitk.GetArrayFromImage(sitk.Resample(
      image, fine, to_template, sitk.sitkLinear, 0.0, sitk.sitkFloat32)).T
  size = grid.GetSize()
  return values.reshape(size[0], factors[0], size[1], factors[1], size[2],
                        factors[2]).mean(axis=(1, 3, 5), dtype=np.float32)
