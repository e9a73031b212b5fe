"""Registration of native scans to the MNI152 2009c template (SimpleITK).

Registration is template (fixed) <- native scan (moving). The resulting
transform maps TEMPLATE physical points to NATIVE physical points (LPS mm;
see `geometry` for the RAS/LPS conventions), which is what
`sitk.Resample(native_image, template_grid, transform)` needs to pull native
intensities into template space. Its inverse (`transform.GetInverse()`,
always defined for an affine) maps native points to template points and
takes template-space images, e.g. network predictions, back to a native
grid: `sitk.Resample(prediction, native_image, transform.GetInverse(),
sitk.sitkNearestNeighbor)`. BIDS names it `from-native_to-<template>` (the
direction images travel, as in fMRIPrep/ANTs); the ITK file itself holds the
point mapping template -> native.

The template itself, and the grids derived from it, are in `template`.
"""

import dataclasses
import functools
import itertools

import numpy as np
import SimpleITK as sitk

from preprocessing import bias_field
from preprocessing import geometry
from preprocessing.template import Template

# Mattes MI: the FLAIR-like scans have grey matter brighter than white matter
# (the T1 template the other way round), so only an information metric can
# compare them.
_HISTOGRAM_BINS = 32
# Fraction of the fixed mask's voxels sampled per iteration at 2 mm (about
# 25,000 points), with a fixed seed so that a subject is always registered
# the same way. Coarser levels sample a larger fraction, so that every level
# has about as many points: with 10% of an 8 mm level (a few hundred points)
# the joint histogram was so noisy that the rigid stage failed on a test
# subject posed 8 degrees and 10 mm away.
_SAMPLING_PERCENTAGE = 0.1
_SAMPLING_MM = 2.0
_SAMPLING_SEED = 20261124
# Resolution pyramid as (voxel size in mm, smoothing sigma in mm) per level:
# the rigid stage refines the best starting pose (`_START_ANGLES_DEG`) from
# coarse to fine.
_RIGID_LEVELS = ((4.0, 2.0), (2.0, 1.0))
# The rigid stage registers the scan block-averaged to about this voxel size
# (mm): smoothing and shrinking a full 1 mm scan for each of its levels would
# cost more than the optimisation itself. The deformable stage that follows
# sees the full scan.
_RIGID_SCAN_MM = 2.0
# What the pose is: "rigid" (6 parameters), or "affine", also scale and
# shear (12), for heads whose size differs from the template's (e.g.
# children's). Where subjects differ from the template by pose and a
# non-affine shape only (the synthetic cohorts), rigid is the true answer.
KINDS = ("rigid", "affine")
# Voxel size (mm) of the head mask N4 first corrects the scan's bias in.
_HEAD_MASK_MM = 4.0
# The rigid stage starts from the centred pose turned by the best of these
# rotations (degrees, every combination about the three axes), the one of
# highest mutual information at `_RIGID_LEVELS[0]`. Heads lie up to 15
# degrees off; from the centred pose alone, the optimiser left one synthetic
# subject posed (-7, 8, 4) degrees 13 mm off, at a pose of lower mutual
# information than its start.
_START_ANGLES_DEG = (-12.0, 0.0, 12.0)
_ITERATIONS = 200
# Template voxels this far (mm) outside the brain still drive the metric, so
# the brain's outline (brain against dark CSF/skull) is matched too; on the
# test subjects 10 mm halved the error of 6 mm.
_FIXED_MASK_MARGIN_MM = 10.0
# The pose is read off a coarse deformable fit (`_pose_of_deformable_fit`):
# a cubic B-spline with this many mesh cells per axis over the template
# (a control point every ~35 mm: brains differ from the template smoothly,
# cortex to ventricles), fitted at about `_DEFORMABLE_MM` voxels for
# `_DEFORMABLE_ITERATIONS` L-BFGS-B steps with `_DEFORMABLE_SAMPLING` of the
# masked template voxels. A finer mesh or more steps cost 2x the time and
# did not lower the error on 8 synthetic subjects; 5% sampling raised it.
# 15 steps rather than 30: over 36 raw 1 mm subjects of two cohorts the pose
# ended as close to the true one (mean 0.277 mm either way; worst 0.74
# against 1.18) for 2-3 s less per scan (docs/results.md, "The deformable
# fit's length").
_DEFORMABLE_MESH = 6
_DEFORMABLE_MM = 4.0
_DEFORMABLE_ITERATIONS = 15
_DEFORMABLE_SAMPLING = 0.2


@dataclasses.dataclass(frozen=True)
class Registration:
  """The result of `register_to_template`.

  Attributes:
    transform: affine transform mapping template points to native points
      (LPS mm); see the module docstring for how to use it and its inverse.
    metric_value: the rigid stage's final Mattes mutual information
      (negative; lower is a better match), for quality control.
  """
  transform: sitk.AffineTransform
  metric_value: float


def register_to_template(image: sitk.Image, template: Template,
                         kind: str = "rigid") -> Registration:
  """Registers a native scan (with skull) to the template T1.

  The scan's gross bias is divided out first (N4 inside a head mask); then a
  rigid stage on the scan block-averaged to `_RIGID_SCAN_MM`, from the best
  of a few starting poses (`_start_pose`), maximises Mattes mutual
  information sampled inside the template's brain mask dilated by
  `_FIXED_MASK_MARGIN_MM`. The pose returned is the least-squares rigid (or
  affine) part of a coarse B-spline fitted on top of it, on the full scan
  (`_pose_of_deformable_fit`), so that the brain's own shape does not pull
  it.

  Args:
    image: the native scan, float32.
    template: the target, from `template.load_template`.
    kind: what the pose is, one of `KINDS`.

  Returns:
    The transform (template -> native points; an affine transform whichever
    the kind) and the rigid stage's final metric value.

  Raises:
    RuntimeError: SimpleITK failed (e.g. the scan does not overlap the
      template at all, or is constant).
  """
  fixed = template.t1
  # A strong bias field misleads mutual information at the coarse levels:
  # with a +-40% field, 2 of 10 test subjects ended 8 mm off, all 10 within
  # 1 mm once the head's gross bias was removed first.
  image = bias_field.correct(image, _head_mask(image)).corrected
  coarse = sitk.BinShrink(image,
                          geometry.shrink_factors(image, _RIGID_SCAN_MM))
  targets = _targets(template)
  rigid, metric_value = _optimise(fixed, targets.fixed_mask, coarse,
                                  _start_pose(template, targets, coarse),
                                  _RIGID_LEVELS, template.resolution_mm)
  pose = _pose_of_deformable_fit(template, targets.fixed_mask, image, rigid,
                                 kind)
  return Registration(transform=pose, metric_value=metric_value)


@dataclasses.dataclass(frozen=True)
class _Targets:
  """What registration compares every scan with, made once per template.

  Attributes:
    fixed_mask: the template's brain mask dilated by
      `_FIXED_MASK_MARGIN_MM`: where the metric is sampled.
    start_fixed: the template smoothed and shrunk to the rigid stage's
      first level, where `_start_pose` scores its turns.
    start_mask: `fixed_mask` shrunk to the same level.
  """
  fixed_mask: sitk.Image
  start_fixed: sitk.Image
  start_mask: sitk.Image


def _reduce(image: sitk.Image, size_mm: float, sigma_mm: float
            ) -> sitk.Image:
  """`image` smoothed by `sigma_mm` and shrunk to about `size_mm` voxels."""
  return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, sigma_mm),
                     geometry.shrink_factors(image, size_mm))


@functools.lru_cache(maxsize=2)
def _targets(template: Template) -> _Targets:
  """The template's `_Targets`, cached: the same for every scan.

  Dilating the 1 mm brain mask alone took 0.7 s, once per scan before.
  """
  fixed_mask = sitk.BinaryDilate(
      template.brain_mask,
      [int(round(_FIXED_MASK_MARGIN_MM / template.resolution_mm))] * 3)
  size_mm, sigma_mm = _RIGID_LEVELS[0]
  return _Targets(
      fixed_mask=fixed_mask,
      start_fixed=_reduce(template.t1, size_mm, sigma_mm),
      start_mask=sitk.Shrink(fixed_mask,
                             geometry.shrink_factors(fixed_mask, size_mm)))


def _start_pose(template: Template, targets: _Targets, moving: sitk.Image
                ) -> sitk.Euler3DTransform:
  """Centres of mass aligned, then the best of the `_START_ANGLES_DEG` turns.

  The head's centre of mass (scalp included) is within about 10 mm of the
  brain's. Each turn is scored once, on images smoothed and shrunk to the
  rigid stage's first level, every masked template voxel counted.
  """
  centred = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
      template.t1, moving, sitk.Euler3DTransform(),
      sitk.CenteredTransformInitializerFilter.MOMENTS))
  method = _mutual_information_method(targets.start_mask)
  moving = _reduce(moving, *_RIGID_LEVELS[0])
  candidates = []
  for angles in itertools.product(_START_ANGLES_DEG, repeat=3):
    candidates.append(sitk.Euler3DTransform(centred))
    candidates[-1].SetRotation(*np.deg2rad(angles).tolist())

  def metric(candidate):
    method.SetInitialTransform(candidate)
    return method.MetricEvaluate(targets.start_fixed, moving)
  return min(candidates, key=metric)


def _head_mask(image: sitk.Image) -> sitk.Image:
  """The head: Otsu's foreground, closed, holes filled.

  Otsu's threshold alone leaves out bone, CSF and, under a strong bias
  field, the dark side of the head, whose field N4 then does not see. The
  mask is made at about `_HEAD_MASK_MM` (N4 estimates the field at 8 mm
  anyway), where closing and filling cost 30 times less.
  """
  coarse = sitk.BinShrink(image,
                          geometry.shrink_factors(image, _HEAD_MASK_MM))
  foreground = sitk.OtsuThreshold(coarse, 0, 1)
  head = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(foreground,
                                                             [1, 1, 1]))
  return sitk.Resample(head, image, sitk.Transform(),
                       sitk.sitkNearestNeighbor)


def _as_affine(transform: sitk.Transform) -> sitk.AffineTransform:
  """A rigid or affine transform as an affine one (the same mapping)."""
  transform = transform.Downcast()
  affine = sitk.AffineTransform(3)
  affine.SetCenter(transform.GetCenter())
  affine.SetMatrix(transform.GetMatrix())
  affine.SetTranslation(transform.GetTranslation())
  return affine


def _mutual_information_method(fixed_mask: sitk.Image
                               ) -> sitk.ImageRegistrationMethod:
  """A registration method scoring Mattes MI inside `fixed_mask`."""
  method = sitk.ImageRegistrationMethod()
  method.SetMetricAsMattesMutualInformation(_HISTOGRAM_BINS)
  method.SetMetricFixedMask(fixed_mask)
  # The moving image's gradient at the sampled points only (central
  # differences), not filtered over the whole scan first: on a 1 mm scan
  # the filter cost ~1.3 s of the deformable fit's ~5 s and the rigid
  # stage ~0.5 s, for the same pose (6 raw scans: mean error 0.250 against
  # 0.253 mm; docs/results.md, "The moving image's gradient").
  method.MetricUseMovingImageGradientFilterOff()
  method.SetInterpolator(sitk.sitkLinear)
  return method


def _optimise(fixed: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image,
              initial: sitk.Transform,
              levels: tuple[tuple[float, float], ...], fixed_spacing_mm: float
              ) -> tuple[sitk.Transform, float]:
  """One multi-resolution Mattes-MI stage; returns (transform, metric)."""
  method = _mutual_information_method(fixed_mask)
  method.SetMetricSamplingStrategy(method.RANDOM)
  method.SetMetricSamplingPercentagePerLevel(
      [min(1.0, _SAMPLING_PERCENTAGE * (size / _SAMPLING_MM) ** 3)
       for size, _ in levels], _SAMPLING_SEED)
  method.SetOptimizerAsRegularStepGradientDescent(
      learningRate=2.0, minStep=1e-3, numberOfIterations=_ITERATIONS,
      relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
  # Scales from physical shift: one optimiser step moves any voxel by about
  # the same distance whether it changes a rotation, a shear or a shift.
  method.SetOptimizerScalesFromPhysicalShift()
  method.SetShrinkFactorsPerLevel(
      [max(1, int(round(size / fixed_spacing_mm))) for size, _ in levels])
  method.SetSmoothingSigmasPerLevel([sigma for _, sigma in levels])
  method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
  method.SetInitialTransform(initial, inPlace=False)
  transform = method.Execute(fixed, moving)
  # Execute returns a composite wrapping the optimised transform.
  transform = sitk.CompositeTransform(transform).GetBackTransform()
  return transform, method.GetMetricValue()


def _pose_of_deformable_fit(template: Template, fixed_mask: sitk.Image,
                            moving: sitk.Image, initial: sitk.Transform,
                            kind: str) -> sitk.AffineTransform:
  """The least-squares rigid (or affine) part of a deformable fit.

  A brain is not the template's shape (ventricles enlarged by PVL, its own
  folding), and an intensity-driven rigid fit leans towards aligning the
  structures of highest contrast: on synthetic subjects whose shape differs
  from the template by a smooth 3 mm deformation, it ended 0.5 mm (up to
  1.1 mm) from the true pose, against 0.1 mm on undeformed ones. So a
  coarse B-spline is fitted on top of `initial` (mutual information, as the
  rigid stages), and the pose is the rigid (`kind` "rigid") or affine
  transform closest to the whole mapping in least squares over the
  template's brain voxels: local differences in shape average out instead
  of pulling the pose.

  Args:
    template: the fixed image and brain mask.
    fixed_mask: where the metric is sampled.
    moving: the (bias-reduced) native scan.
    initial: the rigid stage's transform (template -> native points).
    kind: one of `KINDS`.

  Returns:
    The pose as an affine transform, template points -> native points.
  """
  fixed = template.t1
  bspline = sitk.BSplineTransformInitializer(fixed, [_DEFORMABLE_MESH] * 3)
  method = _mutual_information_method(fixed_mask)
  method.SetMetricSamplingStrategy(method.RANDOM)
  method.SetMetricSamplingPercentage(_DEFORMABLE_SAMPLING, _SAMPLING_SEED)
  method.SetOptimizerAsLBFGSB(numberOfIterations=_DEFORMABLE_ITERATIONS)
  method.SetShrinkFactorsPerLevel(
      [max(1, int(round(_DEFORMABLE_MM / template.resolution_mm)))])
  method.SetSmoothingSigmasPerLevel([_DEFORMABLE_MM / 2])
  method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
  # The B-spline is optimised with the initial transform applied after it:
  # the whole mapping is initial(bspline(point)).
  method.SetMovingInitialTransform(initial)
  method.SetInitialTransform(bspline, inPlace=True)
  method.Execute(fixed, moving)
  return least_squares_pose(sitk.CompositeTransform([initial, bspline]),
                            template.brain_mask, kind)


def least_squares_pose(mapping: sitk.Transform, brain_mask: sitk.Image,
                       kind: str) -> sitk.AffineTransform:
  """The rigid or affine transform closest to `mapping` over the brain.

  Args:
    mapping: any transform (template -> native points).
    brain_mask: where the fit is made (template grid, 0/1).
    kind: "rigid" (6 parameters) or "affine" (12), see `KINDS`.

  Returns:
    The transform minimising the summed squared distance to `mapping`'s
    images of brain voxel centres (sampled about every `_DEFORMABLE_MM`).
  """
  points, mapped = _brain_points(brain_mask, mapping)
  if kind == "rigid":
    rigid = sitk.LandmarkBasedTransformInitializer(
        sitk.VersorRigid3DTransform(), points.ravel().tolist(),
        mapped.ravel().tolist())
    return _as_affine(rigid)
  # ITK's landmark initializer solves the affine case through a dense
  # system that took minutes for these ~30,000 points; least squares in
  # numpy takes milliseconds.
  fit, *_ = np.linalg.lstsq(np.c_[points, np.ones(len(points))], mapped,
                            rcond=None)
  affine = sitk.AffineTransform(3)
  affine.SetMatrix(fit[:3].T.ravel().tolist())
  affine.SetTranslation(fit[3].tolist())
  return affine


def _brain_points(brain_mask: sitk.Image, mapping: sitk.Transform
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(template brain voxel centres, their images under `mapping`), LPS mm.

  Sampled on a grid of about `_DEFORMABLE_MM`: the mapping is smooth, and
  the fits above need thousands of points, not millions.
  """
  brain = sitk.BinShrink(
      brain_mask, geometry.shrink_factors(brain_mask, _DEFORMABLE_MM)) > 0
  displacement = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
      mapping, sitk.sitkVectorFloat64, brain.GetSize(), brain.GetOrigin(),
      brain.GetSpacing(), brain.GetDirection()))
  inside = sitk.GetArrayFromImage(brain) > 0
  # Array indices are (k, j, i); physical points need (i, j, k).
  index = np.argwhere(inside)[:, ::-1]
  direction = np.asarray(brain.GetDirection()).reshape(3, 3)
  points = (np.asarray(brain.GetOrigin())
            + (index * np.asarray(brain.GetSpacing())) @ direction.T)
  return points, points + displacement[inside]
