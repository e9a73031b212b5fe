"""The synthetic cohort's parameters (the model is in the package docstring)."""

import dataclasses

# Larger deformations squeeze the anatomy too far: at 10 mm the smallest
# Jacobian determinant in the brain was 0.32-0.40 over three seeds, at 20 mm
# it was negative (the anatomy folds over itself).
MAX_DEFORM_MM = 10.0


@dataclasses.dataclass(frozen=True)
class CohortParams:
  """Every generator parameter (units in the names or comments).

  Cached cohorts are keyed by these fields (and `cohort.GENERATOR_VERSION`).

  Attributes:
    resolution_mm: template grid, 1 (197x233x189) or 2 (99x117x95).
    deform_mm: amplitude of the smooth random displacement (its largest
      component over the volume is about twice this); at most
      `MAX_DEFORM_MM`.
    ventricle_growth_mm: maximum enlargement of the ventricles.
    band_mm: (min, max) distance of lesion seeds from the ventricle wall.
    mean_lesions: (low, high) of the per-subject mean lesion count (Poisson).
    lesion_free_fraction: share of lesion-free subjects (controls); 0 for a
      PVL cohort, whose inclusion criterion is a visible lesion.
    lesion_radius_mm: (small, medium, large) typical radii of the three
      size classes, drawn with probabilities `size_class_probs`.
    size_class_probs: probabilities of small, medium, large lesions.
    motor_involvement: share of subjects whose lesions favour the motor ROI.
    motor_affinity: (low, high) extra seed weight of motor-ROI voxels in
      those subjects.
    lesion_intensity: (low, high) of the per-lesion FLAIR intensity.
    gm_intensity, wm_intensity, csf_intensity: tissue FLAIR intensities.
    cap_intensity: (low, high) extra intensity of the periventricular caps.
    partial_volume_sigma_vox: Gaussian smoothing of the intensity image.
    bias_strength: standard deviation of the log bias field of
      template-space scans (registered, not bias-corrected; the raw scans'
      field is stronger, see `acquisition`).
    noise_level: (low, high) Rician noise sigma relative to WM intensity.
    label_threshold_ml: motor lesion volume at which bad hand function has
      probability 0.5.
    label_slope: steepness of the label model in log-volume units; smaller
      means noisier labels.
    label_roi_centres_mm: centres (template mm) of the ellipsoids whose
      lesion volume decides the label and that motor-involved subjects'
      lesions favour; the default is the motor ROI beside the
      corticospinal tract. Moving it gives a cohort whose labels depend on
      lesions elsewhere (a check that a classifier learns its region).
  """
  resolution_mm: int = 2
  deform_mm: float = 3.0
  ventricle_growth_mm: float = 4.0
  band_mm: tuple[float, float] = (1.0, 9.0)
  mean_lesions: tuple[float, float] = (2.0, 14.0)
  lesion_free_fraction: float = 0.0
  lesion_radius_mm: tuple[float, float, float] = (1.8, 3.2, 5.5)
  size_class_probs: tuple[float, float, float] = (0.35, 0.4, 0.25)
  motor_involvement: float = 0.5
  motor_affinity: tuple[float, float] = (3.0, 15.0)
  lesion_intensity: tuple[float, float] = (0.85, 1.15)
  gm_intensity: float = 0.72
  wm_intensity: float = 0.52
  csf_intensity: float = 0.12
  cap_intensity: tuple[float, float] = (0.1, 0.25)
  partial_volume_sigma_vox: float = 0.5
  bias_strength: float = 0.15
  noise_level: tuple[float, float] = (0.04, 0.08)
  label_threshold_ml: float = 0.3
  label_slope: float = 3.0
  label_roi_centres_mm: tuple[tuple[float, float, float], ...] = (
      (24.0, -22.0, 24.0), (-24.0, -22.0, 24.0))


# Fields added after cohorts were cached: at their defaults they stay out of
# the cache key (`identity`), so that existing cohorts keep their keys.
_ADDED_LATER = ("label_roi_centres_mm",)


def identity(params: CohortParams) -> dict:
  """What keys a cached cohort: every field, those added later if changed."""
  defaults = CohortParams(resolution_mm=params.resolution_mm)
  return {name: value for name, value in dataclasses.asdict(params).items()
          if name not in _ADDED_LATER or value != getattr(defaults, name)}


@dataclasses.dataclass(frozen=True)
class AcquisitionParams:
  """The ranges each subject's acquisition is drawn from.

  Attributes:
    rotation_deg: maximum head rotation about each axis (uniform).
    translation_mm: maximum head shift along each axis (uniform).
    spacings_mm: the voxel sizes (mm) scans are acquired at, for the 1 mm
      template; the third axis is the slice axis.
    scale_spacings: multiply `spacings_mm` by the template's voxel size
      (a 2 mm cohort gets 1.8 x 1.8 x 6 mm slices, as coarse relative to
      its anatomy as 0.9 x 0.9 x 3 mm are at 1 mm, and stays cheap); False
      acquires every cohort at the scanner sizes in `spacings_mm`, which
      upsamples a 2 mm anatomy.
    spacing_probs: how often each of `spacings_mm` is drawn.
    orientations: nibabel axis codes the voxel axes are stored in.
    oblique_deg: maximum tilt of the grid about each axis (uniform).
    csf_mm, bone_mm, scalp_mm: (min, max) thickness of the head's layers.
    margin_mm: air around the head in the field of view.
    bias_strength: standard deviation of the log bias field, as
      `params.CohortParams.bias_strength`, but larger: that one models
      what is left of the bias in template-space (preprocessed) scans, this
      one the whole field of a phased-array receive coil.
  """
  rotation_deg: float = 15.0
  translation_mm: float = 20.0
  spacings_mm: tuple[tuple[float, float, float], ...] = (
      (1.2, 1.2, 1.2), (1.0, 1.0, 1.2), (0.9, 0.9, 3.0))
  spacing_probs: tuple[float, ...] = (0.35, 0.35, 0.3)
  scale_spacings: bool = True
  orientations: tuple[str, ...] = ("LIA", "LPS", "PIL", "RPI")
  oblique_deg: float = 8.0
  csf_mm: tuple[float, float] = (1.0, 3.0)
  bone_mm: tuple[float, float] = (4.0, 7.0)
  scalp_mm: tuple[float, float] = (3.0, 7.0)
  margin_mm: float = 10.0
  bias_strength: float = 0.3
