"""Synthetic PVL cohort on the MNI152 template: the embedded default dataset.

No PVL scans can be shipped, so this module builds a cohort that is as close
to the real problem as a generator can be, from the MNI152 2009 template that
nilearn ships offline (T1, GM/WM probability maps, brain mask).

The model, per subject (every number is a `CohortParams` field):

1. Anatomy: the template's tissue maps warped by a random smooth displacement
   field (`deform_mm`). The lateral ventricles are the connected component of
   in-brain voxels with GM + WM < 0.5 that contains MNI (0, -15, 14) mm (about
   18 ml; its neighbour through the foramina is midline CSF and cisterns).
2. Ventriculomegaly and white-matter loss, as PVL brings: the ventricles grow
   into the adjacent tissue by a spatially varying margin of up to
   `ventricle_growth_mm`, so their walls become irregular.
3. Lesions: seeds in periventricular white matter (`band_mm` from the enlarged
   ventricle wall, WM fraction > 0.5), drawn with extra weight near the
   frontal horns and, by a per-subject amount, posteriorly (trigones and the
   bodies next to the corticospinal tract). Counts vary widely
   (`mean_lesions`), sizes range from a voxel or two to confluent lesions of
   several ml (`lesion_radius_mm`), shapes are unions of randomly oriented,
   noise-perturbed ellipsoids, so small disconnected lesions are common.
4. FLAIR-like contrast: CSF dark, WM mid, GM brighter, lesions bright with a
   per-lesion intensity that overlaps GM (`lesion_intensity`); normal bright
   periventricular caps and rims (`cap_intensity`), partial volume (the
   intensity image is smoothed by `partial_volume_sigma_vox`), a smooth
   multiplicative bias field (`bias_strength`; raw scans carry a stronger
   one, see `acquisition`) and Rician noise (`noise_level`). Because of the
   caps, bright cortex and the bias, a single intensity threshold cannot
   segment the lesions well.
5. Hand function: bad (1) with probability
   sigmoid(label_slope * (log(motor_ml + 0.01) - log(label_threshold_ml))),
   where motor_ml is the lesion volume inside the motor ROI: two ellipsoids of
   posterior periventricular white matter beside the corticospinal tract,
   centred at MNI (+-24, -22, 24) mm with radii (10, 16, 12) mm. The noise of
   that draw fixes the Bayes limit of any classifier that knows motor_ml;
   generator.json records it for the cohort.

Output is a BIDS dataset (see README) in one of two spaces: "raw" scans as a
scanner would write them, each subject with its own pose, voxel grid, skull,
bias field and noise, plus the ground truth that preprocessing is scored
against (`acquisition`), or "template" scans on the template grid, ready for
training. Every file is byte-deterministic in the seed, a subject's
anatomy, lesions and label are the same in both spaces, and the dataset
appears atomically (built in a temporary folder).

Usage:
  python -m preprocessing.synthetic --out=DIR --num_subjects=40 --seed=0
      [--resolution_mm=2] [--space=raw|template] [--modalities=FLAIR,T1w]
      [--noscale_spacings]
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from pathlib import Path

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage
import SimpleITK as sitk
import tqdm

from preprocessing import acquisition
from preprocessing.io import nifti
from preprocessing import random_fields
from preprocessing.io.atomic import atomic_directory, atomic_write_text
from preprocessing.io.errors import InputError
from preprocessing.registration import TEMPLATE_SPACE

GENERATOR_VERSION = "4"
# A point inside the lateral ventricles (MNI mm), see the module docstring.
VENTRICLE_SEED_MM = (0.0, -15.0, 14.0)
MOTOR_ROI_CENTRES_MM = ((24.0, -22.0, 24.0), (-24.0, -22.0, 24.0))
MOTOR_ROI_RADII_MM = (10.0, 16.0, 12.0)
# What the generator writes: scans as the scanner wrote them ("raw", see
# `acquisition`) or on the template grid, and which contrasts. Modalities
# draw their noise in this order.
SPACES = ("raw", "template")
MODALITIES = ("FLAIR", "T1w")
# Larger deformations squeeze the anatomy too far: at 10 mm the smallest
# Jacobian determinant in the brain was 0.32-0.40 over three seeds, at 20 mm
# it was negative (the anatomy folds over itself).
MAX_DEFORM_MM = 10.0
# T1w-like intensities: white matter brightest, CSF dark, PVL lesions dark
# (gliosis and cavitation lengthen T1). Constants, not CohortParams fields,
# which key the cached cohorts.
T1W_INTENSITY = {"csf": 0.15, "gm": 0.55, "wm": 0.8}
T1W_LESION_INTENSITY = (0.25, 0.45)


@dataclasses.dataclass(frozen=True)
class CohortParams:
  """Every generator parameter (units in the names or comments).

  Attributes:
    resolution_mm: template grid, 1 (197x233x189) or 2 (99x117x95).
    deform_mm: amplitude of the smooth random displacement (its largest
      component over the volume is about twice this).
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


@dataclasses.dataclass(frozen=True)
class Template:
  """The template's maps at one resolution (float32, template grid)."""
  affine: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  brain: np.ndarray
  ventricles: np.ndarray
  mm: np.ndarray  # (X, Y, Z, 3) MNI coordinates of every voxel


@functools.lru_cache(maxsize=2)
def load_template(resolution_mm: int) -> Template:
  """Loads (once per process) the nilearn MNI152 2009 maps and ventricles."""
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  brain_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
  gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata()
  wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata()
  brain = brain_img.get_fdata() > 0
  affine = brain_img.affine
  grid = np.stack(np.meshgrid(*[np.arange(s) for s in brain.shape],
                              indexing="ij"), -1)
  mm = (grid @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)
  # The ventricles: the large (> 5 ml) CSF-like component whose centroid is
  # nearest the seed point (the midline CSF component touches it too).
  components, count = ndimage.label(brain & (gm + wm < 0.5))
  labels = np.arange(1, count + 1)
  sizes_ml = ndimage.sum(brain, components, labels) * resolution_mm ** 3 / 1e3
  centroids = np.stack([ndimage.mean(mm[..., axis], components, labels)
                        for axis in range(3)], -1)
  distance = np.linalg.norm(centroids - VENTRICLE_SEED_MM, axis=-1)
  label = labels[np.argmin(np.where(sizes_ml > 5, distance, np.inf))]
  return Template(affine=affine, gm=gm.astype(np.float32),
                  wm=wm.astype(np.float32), brain=brain,
                  ventricles=components == label, mm=mm)


def _warp(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
  return ndimage.map_coordinates(volume.astype(np.float32), coords, order=1,
                                 mode="nearest")


def _ellipsoid_blob(rng: np.random.Generator, centre_vox: np.ndarray,
                    radius_vox: float, shape: tuple[int, ...]
                    ) -> tuple[tuple[slice, ...], np.ndarray]:
  """A randomly oriented, noise-perturbed ellipsoid around a voxel.

  Returns:
    (slices of the bounding box in the volume, boolean blob in that box).
  """
  radii = radius_vox * rng.uniform(0.6, 1.4, 3)
  extent = int(np.ceil(radii.max() * 1.5)) + 1
  lo = np.maximum(centre_vox - extent, 0)
  hi = np.minimum(centre_vox + extent + 1, shape)
  box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
  offsets = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in
                                   zip(lo, hi, centre_vox)], indexing="ij"),
                     -1).astype(np.float32)
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  local = offsets @ rotation
  distance = np.sqrt(((local / radii) ** 2).sum(-1))
  wobble = ndimage.gaussian_filter(rng.normal(size=distance.shape), 1.0)
  return box, distance + 0.35 * wobble / (wobble.std() + 1e-6) < 1.0


def _motor_roi(template: Template) -> np.ndarray:
  roi = np.zeros(template.brain.shape, bool)
  for centre in MOTOR_ROI_CENTRES_MM:
    roi |= (((template.mm - centre) / MOTOR_ROI_RADII_MM) ** 2).sum(-1) < 1
  return roi & template.brain


def generate_subject(params: CohortParams, seed: np.random.SeedSequence,
                     modalities: tuple[str, ...] = ("FLAIR",)
                     ) -> dict[str, object]:
  """Generates one subject's images, lesion mask, brain mask and lesion loads.

  Args:
    params: the cohort's parameters.
    seed: this subject's seed sequence.
    modalities: the clean images wanted besides FLAIR (see `MODALITIES`).

  Returns:
    dict with clean (modality -> template-space image before bias field and
    noise, FLAIR always), flair (the template-space FLAIR scan: clean, bias,
    noise; float32), lesion (uint8), brain (uint8), lesion_ml, motor_ml,
    num_lesions and label_draw (uniform in [0, 1)).
  """
  rng = np.random.default_rng(seed)
  template = load_template(params.resolution_mm)
  shape = template.brain.shape
  vox_mm = float(params.resolution_mm)
  voxel_ml = vox_mm ** 3 / 1000

  # 1. Smooth deformation of the template anatomy, less its affine part:
  # that belongs to the head's pose (raw space, `acquisition`), and without
  # it the template-space subject is aligned to the template as an affine
  # registration would align it, so raw scans have one true affine answer.
  displacement = np.stack([random_fields.smooth_noise(rng, shape, 5)
                           for _ in range(3)]) * (params.deform_mm / vox_mm)
  coords = np.indices(shape, dtype=np.float32) + _non_affine_part(
      displacement, template.brain)
  gm = _warp(template.gm, coords)
  wm = _warp(template.wm, coords)
  brain = _warp(template.brain, coords) > 0.5
  ventricles = _warp(template.ventricles, coords) > 0.5

  # 2. Ventriculomegaly with irregular walls; the grown part becomes CSF.
  outside_mm = ndimage.distance_transform_edt(~ventricles, sampling=vox_mm)
  growth = params.ventricle_growth_mm * rng.uniform(0.2, 1.0) * (
      0.6 + 0.4 * random_fields.smooth_noise(rng, shape, 8))
  ventricles = (ventricles | (outside_mm < growth)) & brain
  gm = np.where(ventricles, 0.0, gm)
  wm = np.where(ventricles, 0.0, wm)
  wall_mm = ndimage.distance_transform_edt(~ventricles, sampling=vox_mm)

  # 3. Lesions in the periventricular white-matter band.
  lesion, intensity = _place_lesions(rng, params, template, wm, brain,
                                     ventricles, wall_mm)
  lesion_fraction = np.clip(
      ndimage.gaussian_filter(lesion.astype(np.float32), 0.4), 0, 1)
  lesion_fraction = np.maximum(lesion_fraction, lesion)

  # 4. FLAIR-like intensities.
  csf = np.clip(brain - gm - wm, 0, 1)
  tissue = (csf * params.csf_intensity + gm * params.gm_intensity
            + wm * params.wm_intensity)
  cap_strength = rng.uniform(*params.cap_intensity)
  frontal_or_posterior = (np.abs(template.mm[..., 1] + 15) > 18)
  cap = cap_strength * np.exp(-wall_mm / 2.0) * np.where(
      frontal_or_posterior, 1.0, 0.5) * (~ventricles)
  image = (1 - lesion_fraction) * (tissue + cap) + lesion_fraction * intensity
  image = ndimage.gaussian_filter(image * brain,
                                  params.partial_volume_sigma_vox)
  clean = {"FLAIR": image}
  if "T1w" in modalities:
    clean["T1w"] = _t1w_image(params, csf, gm, wm, lesion_fraction,
                              intensity, brain)
  # Drawn in both spaces: the label draw below must not depend on the space.
  noisy = _template_scan(rng, image, params, params.wm_intensity)

  lesion &= brain
  motor = _motor_roi(template)
  _, num_lesions = ndimage.label(lesion, np.ones((3, 3, 3)))
  return {
      "clean": clean,
      "flair": noisy.astype(np.float32),
      "lesion": lesion.astype(np.uint8),
      "brain": brain.astype(np.uint8),
      "lesion_ml": float(lesion.sum() * voxel_ml),
      "motor_ml": float((lesion & motor).sum() * voxel_ml),
      "num_lesions": int(num_lesions),  # 26-connected components
      # The subject's own draw for its label, so that a subject's label does
      # not depend on the cohort size.
      "label_draw": float(rng.random()),
  }


def _place_lesions(rng, params, template, wm, brain, ventricles, wall_mm):
  """Draws the lesions; returns (mask, per-voxel lesion intensity)."""
  shape = brain.shape
  band = ((wall_mm >= params.band_mm[0]) & (wall_mm <= params.band_mm[1])
          & (wm > 0.5) & brain & ~ventricles)
  candidates = np.flatnonzero(band)
  lesion = np.zeros(shape, bool)
  intensity = np.zeros(shape, np.float32)
  if rng.random() < params.lesion_free_fraction or candidates.size == 0:
    return lesion, intensity
  # Frontal horns always attract lesions; posterior involvement (trigones,
  # bodies beside the corticospinal tract) and the motor ROI itself vary a
  # lot between subjects, which is what makes hand function vary.
  y = template.mm[..., 1].reshape(-1)[candidates]
  in_motor = _motor_roi(template).reshape(-1)[candidates]
  posterior = rng.uniform(0.0, 3.0)
  affinity = (rng.uniform(*params.motor_affinity)
              if rng.random() < params.motor_involvement else 0.0)
  weights = 1.0 + 1.0 * (y > 5) + posterior * (y < -5) + affinity * in_motor
  weights /= weights.sum()
  count = max(1, rng.poisson(rng.uniform(*params.mean_lesions)))
  vox_mm = float(params.resolution_mm)
  for _ in range(count):
    centre = np.array(np.unravel_index(rng.choice(candidates, p=weights),
                                       shape))
    size_class = rng.choice(3, p=params.size_class_probs)
    if not lesion.any():
      # The subject's first lesion is medium or large: PVL is diagnosed on a
      # visible lesion, and at 2 mm a small one is a voxel or two.
      size_class = max(size_class, 1)
    radius = params.lesion_radius_mm[size_class] * rng.uniform(0.7, 1.3)
    # Large lesions are confluent: several blobs along a short random walk.
    pieces = 1 if size_class < 2 else rng.integers(2, 5)
    value = rng.uniform(*params.lesion_intensity)
    for _ in range(pieces):
      box, blob = _ellipsoid_blob(rng, centre, radius / vox_mm, shape)
      blob &= ~ventricles[box] & brain[box]
      lesion[box] |= blob
      intensity[box] = np.where(blob, value, intensity[box])
      step = rng.normal(0, radius / vox_mm, 3)
      centre = np.clip(np.round(centre + step).astype(int), 0,
                       np.array(shape) - 1)
  return lesion, intensity


def label_probability(motor_ml: np.ndarray, params: CohortParams
                      ) -> np.ndarray:
  """P(bad hand function | motor-ROI lesion volume) under the label model."""
  logit = params.label_slope * (np.log(np.asarray(motor_ml) + 0.01)
                                - np.log(params.label_threshold_ml))
  return 1.0 / (1.0 + np.exp(-logit))


def _t1w_image(params: CohortParams, csf: np.ndarray, gm: np.ndarray,
               wm: np.ndarray, lesion_fraction: np.ndarray,
               lesion_value: np.ndarray, brain: np.ndarray) -> np.ndarray:
  """The clean T1w-like image: white matter brightest, lesions dark.

  A lesion brighter on FLAIR (more gliosis and cavitation) is darker on T1w:
  its FLAIR intensity maps linearly, reversed, onto T1W_LESION_INTENSITY.
  """
  tissue = (csf * T1W_INTENSITY["csf"] + gm * T1W_INTENSITY["gm"]
            + wm * T1W_INTENSITY["wm"])
  lesion = np.interp(lesion_value, params.lesion_intensity,
                     T1W_LESION_INTENSITY[::-1])
  # The lesion fraction reaches a little past the lesion's voxels, which
  # alone carry a lesion value; there it blends with the tissue itself.
  lesion = np.where(lesion_value > 0, lesion, tissue)
  image = (1 - lesion_fraction) * tissue + lesion_fraction * lesion
  return ndimage.gaussian_filter(image * brain,
                                 params.partial_volume_sigma_vox)


def _non_affine_part(displacement: np.ndarray, mask: np.ndarray
                     ) -> np.ndarray:
  """A (3, X, Y, Z) displacement less its least-squares affine fit in `mask`.

  On the generator's 3 mm deformations the affine part moves brain points
  by about 1 mm on average.
  """
  points = np.c_[np.argwhere(mask), np.ones(int(mask.sum()))]
  fit, *_ = np.linalg.lstsq(points, displacement[:, mask].T, rcond=None)
  grid = np.indices(mask.shape, dtype=np.float32)
  affine = (np.tensordot(fit[:3].T, grid, axes=1)
            + fit[3][:, None, None, None])
  return (displacement - affine).astype(np.float32)


def _template_scan(rng: np.random.Generator, image: np.ndarray,
                   params: CohortParams, white_matter: float) -> np.ndarray:
  """`image` with a bias field and Rician noise drawn on its own grid."""
  bias = acquisition.bias_field(
      random_fields.smooth_noise(rng, image.shape, 4), params.bias_strength)
  sigma = rng.uniform(*params.noise_level) * white_matter
  return acquisition.rician(rng, image * bias, sigma)


def _white_matter(modality: str, params: CohortParams) -> float:
  return {"FLAIR": params.wm_intensity, "T1w": T1W_INTENSITY["wm"]}[modality]


def _acquisition_rng(seed: np.random.SeedSequence) -> np.random.Generator:
  """The subject's scanner stream, apart from its anatomy stream.

  The first child of the subject's seed (built, not spawned, so that every
  call gives the same one): anatomy, lesions and the label draw stay the
  same whatever the space and modalities.
  """
  return np.random.default_rng(np.random.SeedSequence(
      seed.entropy, spawn_key=(*seed.spawn_key, 0)))


def _subject_id(index: int, num_subjects: int) -> str:
  return f"sub-{index + 1:0{max(3, len(str(num_subjects)))}d}"


def _write_template_subject(root: Path, subject: str, data: dict,
                            params: CohortParams,
                            seed: np.random.SeedSequence,
                            modalities: tuple[str, ...]) -> None:
  """Writes a subject's template-space scans and masks."""
  affine = load_template(params.resolution_mm).affine
  scanner = _acquisition_rng(seed)
  anat = Path(subject, "anat")
  for modality in modalities:
    image = (data["flair"] if modality == "FLAIR" else _template_scan(
        scanner, data["clean"][modality], params,
        _white_matter(modality, params)))
    nifti.save_nifti(image, affine,
                        root / anat / f"{subject}_{modality}.nii.gz",
                        np.float32)
  nifti.save_nifti(data["lesion"], affine,
                      root / "derivatives" / "lesions" / anat /
                      f"{subject}_label-lesion_mask.nii.gz", np.uint8)
  nifti.save_nifti(data["brain"], affine,
                      root / "derivatives" / "synthetic" / anat /
                      f"{subject}_desc-brain_mask.nii.gz", np.uint8)


def _write_raw_subject(root: Path, subject: str, data: dict,
                       params: CohortParams, seed: np.random.SeedSequence,
                       modalities: tuple[str, ...],
                       acquisition_params: acquisition.AcquisitionParams
                       ) -> dict[str, object]:
  """Writes a subject's native scans and ground truth; returns its record."""
  affine = load_template(params.resolution_mm).affine
  scan = acquisition.acquire(
      _acquisition_rng(seed),
      acquisition.TemplateSubject(
          images={m: data["clean"][m] for m in modalities},
          white_matter={m: _white_matter(m, params) for m in modalities},
          brain=data["brain"] > 0, lesion=data["lesion"] > 0, affine=affine),
      params.noise_level, acquisition_params)
  anat = Path(subject, "anat")
  truth = root / "derivatives" / "synthetic" / anat
  for modality, image in scan.images.items():
    nifti.save_nifti(image, scan.affine,
                        root / anat / f"{subject}_{modality}.nii.gz",
                        np.float32)
  nifti.save_nifti(scan.lesion, scan.affine,
                      root / "derivatives" / "lesions" / anat /
                      f"{subject}_label-lesion_mask.nii.gz", np.uint8)
  nifti.save_nifti(scan.brain, scan.affine,
                      truth / f"{subject}_desc-brain_mask.nii.gz", np.uint8)
  nifti.save_nifti(scan.bias, scan.affine,
                      truth / f"{subject}_desc-biasfield.nii.gz", np.float32)
  nifti.save_nifti(data["lesion"], affine, truth /
                      f"{subject}_space-{TEMPLATE_SPACE}_label-lesion_mask"
                      ".nii.gz", np.uint8)
  sitk.WriteTransform(scan.to_native, str(
      truth / f"{subject}_from-{TEMPLATE_SPACE}_to-native_xfm.tfm"))
  return scan.record


def _generate_and_write(args) -> dict[str, object]:
  """Worker: generates and writes one subject.

  Returns:
    Its lesion loads and label draw, and in raw space its acquisition.
  """
  root, subject, params, seed, space, modalities, acquisition_params = args
  data = generate_subject(params, seed, modalities)
  result = {k: data[k] for k in ("lesion_ml", "motor_ml", "num_lesions",
                                 "label_draw")}
  if space == "template":
    _write_template_subject(root, subject, data, params, seed, modalities)
  else:
    result["acquisition"] = _write_raw_subject(
        root, subject, data, params, seed, modalities, acquisition_params)
  return result


def _description(name: str, dataset_type: str) -> str:
  return json.dumps({
      "Name": name, "BIDSVersion": "1.9.0", "DatasetType": dataset_type,
      "GeneratedBy": [{"Name": "pvl_jax preprocessing.synthetic",
                       "Version": GENERATOR_VERSION}]}, indent=2) + "\n"


def validate_arguments(num_subjects: int, seed: int, num_workers: int,
                       params: CohortParams, space: str = "raw",
                       modalities: tuple[str, ...] = ("FLAIR",)) -> None:
  """Raises InputError naming the bad argument."""
  if seed < 0:
    raise InputError(f"--seed: must be >= 0 (got {seed})")
  if num_workers < 1:
    raise InputError(f"--num_workers: must be >= 1 (got {num_workers})")
  if num_subjects < 1:
    raise InputError(f"--num_subjects: must be >= 1 (got {num_subjects})")
  if params.resolution_mm not in (1, 2):
    raise InputError("--resolution_mm: the template ships at 1 or 2 mm "
                     f"(got {params.resolution_mm})")
  if not 0 <= params.deform_mm <= MAX_DEFORM_MM:
    raise InputError(f"--deform_mm: must be in [0, {MAX_DEFORM_MM:g}] "
                     f"(got {params.deform_mm:g})")
  if space not in SPACES:
    raise InputError(f"--space: must be one of {', '.join(SPACES)} "
                     f"(got {space!r})")
  unknown = [m for m in modalities if m not in MODALITIES]
  if unknown or not modalities or len(set(modalities)) < len(modalities):
    raise InputError(f"--modalities: distinct names among "
                     f"{', '.join(MODALITIES)} (got {','.join(modalities)!r})")


def generate_cohort(
    out_dir: str | os.PathLike, num_subjects: int, seed: int,
    params: CohortParams = CohortParams(), num_workers: int = 1,
    progress: bool = True, space: str = "raw",
    modalities: tuple[str, ...] = ("FLAIR",),
    acquisition_params: acquisition.AcquisitionParams = (
        acquisition.AcquisitionParams())) -> Path:
  """Generates a synthetic PVL cohort as a BIDS dataset.

  Args:
    out_dir: the dataset directory to create (must not exist).
    num_subjects: number of subjects.
    seed: cohort seed; the same seed gives byte-identical files.
    params: generator parameters.
    num_workers: worker processes.
    progress: show a progress bar.
    space: "raw" for native scans with ground truth (`acquisition`),
      "template" for scans on the template grid.
    modalities: scans to write, among `MODALITIES` (in any order).
    acquisition_params: the ranges of the raw scans' acquisitions.

  Returns:
    The dataset directory.

  Raises:
    InputError: bad arguments, or `out_dir` already exists.
  """
  validate_arguments(num_subjects, seed, num_workers, params, space,
                     modalities)
  # One order, so that the noise draws do not depend on the caller's.
  modalities = tuple(m for m in MODALITIES if m in modalities)
  out_dir = Path(out_dir)
  if out_dir.exists():
    raise InputError(f"{out_dir}: already exists; choose a new --out")
  seeds = np.random.SeedSequence(seed).spawn(num_subjects)
  subjects = [_subject_id(i, num_subjects) for i in range(num_subjects)]
  with atomic_directory(out_dir) as root:
    jobs = [(root, s, params, sd, space, modalities, acquisition_params)
            for s, sd in zip(subjects, seeds)]
    with contextlib.ExitStack() as stack:
      if num_workers > 1:
        # "spawn": the caller may have started JAX, which does not survive
        # fork.
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
            max_workers=min(num_workers, num_subjects),
            mp_context=multiprocessing.get_context("spawn")))
        results = pool.map(_generate_and_write, jobs)
      else:
        results = map(_generate_and_write, jobs)
      loads = list(tqdm.tqdm(results, total=num_subjects,
                             disable=not progress, desc="synthetic subjects",
                             unit="subject"))
    motor = np.array([l["motor_ml"] for l in loads])
    p_bad = label_probability(motor, params)
    labels = (np.array([l["label_draw"] for l in loads]) < p_bad).astype(int)
    rows = ["participant_id\thand_function\tlesion_volume_ml\t"
            "motor_lesion_volume_ml\tnum_lesions"]
    rows += [f"{s}\t{y}\t{l['lesion_ml']:.4f}\t{l['motor_ml']:.4f}\t"
             f"{l['num_lesions']}" for s, y, l in zip(subjects, labels, loads)]
    atomic_write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    atomic_write_text(root / "dataset_description.json",
                      _description("pvl_jax synthetic PVL cohort", "raw"))
    for sub in ("lesions", "synthetic"):
      atomic_write_text(root / "derivatives" / sub / "dataset_description.json",
                        _description(f"pvl_jax synthetic {sub}", "derivative"))
    atomic_write_text(
        root / "derivatives" / "synthetic" / "generator.json",
        json.dumps({
            "version": GENERATOR_VERSION, "seed": seed,
            "num_subjects": num_subjects, "params": dataclasses.asdict(params),
            "motor_roi": {"centres_mm": MOTOR_ROI_CENTRES_MM,
                          "radii_mm": MOTOR_ROI_RADII_MM},
            "label_model": "P(bad) = sigmoid(label_slope * (log(motor_ml + "
                           "0.01) - log(label_threshold_ml)))",
            # The best any classifier can do knowing motor_ml exactly.
            "bayes_accuracy": float(np.maximum(p_bad, 1 - p_bad).mean()),
            "fraction_bad": float(labels.mean()),
        }, indent=2) + "\n")
    if space == "raw":
      atomic_write_text(
          root / "derivatives" / "synthetic" / "acquisition.json",
          json.dumps({
              "modalities": modalities,
              "params": dataclasses.asdict(acquisition_params),
              "subjects": {s: l["acquisition"]
                           for s, l in zip(subjects, loads)},
          }, indent=2) + "\n")
  return out_dir


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  try:
    generate_cohort(FLAGS.out, FLAGS.num_subjects, FLAGS.seed,
                    CohortParams(resolution_mm=FLAGS.resolution_mm,
                                 deform_mm=FLAGS.deform_mm),
                    num_workers=FLAGS.num_workers, space=FLAGS.space,
                    modalities=tuple(FLAGS.modalities),
                    acquisition_params=acquisition.AcquisitionParams(
                        scale_spacings=FLAGS.scale_spacings))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.DEFINE_string("out", None, "Output BIDS directory (must not exist).",
                      required=True)
  flags.DEFINE_integer("num_subjects", 40, "Number of subjects.")
  flags.DEFINE_integer("seed", 0, "Cohort seed.")
  flags.DEFINE_integer("resolution_mm", 2, "Template grid: 1 or 2 mm.")
  flags.DEFINE_string("space", "raw", "raw: native scans (pose, own voxel "
                      "grid, skull, bias, noise) with ground truth for "
                      "preprocessing.run; template: scans on the template "
                      "grid, ready for training.")
  flags.DEFINE_list("modalities", ["FLAIR"], "Scans to write: FLAIR, T1w.")
  flags.DEFINE_float("deform_mm", CohortParams.deform_mm,
                     "Amplitude (mm) of each subject's smooth, non-affine "
                     "deformation of the template anatomy; 0 gives every "
                     "subject the template's shape, so that a rigid "
                     "registration can recover the raw scans' pose exactly.")
  flags.DEFINE_bool("scale_spacings", True, "Raw space: scale the scanner's "
                    "voxel sizes with --resolution_mm (a 2 mm cohort gets "
                    "1.8 x 1.8 x 6 mm slices); --noscale_spacings acquires "
                    "at 0.9 x 0.9 x 3, 1 x 1 x 1.2 and 1.2 mm whatever the "
                    "resolution.")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1,
                       "Worker processes.")
  app.run(main)
