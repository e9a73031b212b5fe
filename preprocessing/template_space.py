"""One subject's native scans -> z-scored images on the template grid.

The steps of the pipeline (`pipeline`) that need no lesion mask, which
`pvl_jax.predict` runs as well on the scans it segments (`to_template`):
  2. register each modality to the template (`registration`: multi-resolution
     Mattes mutual information; rigid, or rigid then affine, see
     `registration.KINDS`): the MNI152 2009c template, or the user's own
     (`template.TemplateFiles`);
  3. skull strip: the template brain mask carried into native space
     (`skull_strip`), with the 1 mm MNI template's mask for scans finer than
     1.5 mm, else the 2 mm one (a user's template: its own mask);
  4. N4 bias-field correction inside the brain (`bias_field`);
  5. resample into template space at a target spacing: images by cubic
     B-spline, the brain mask linearly then >= 0.5
     (`geometry.resample_mask`);
  6. z-score inside the brain (`normalize`) and crop to the brain's bounding
     box plus a margin.
Step 1 (loading and validating the files) and writing the outputs are the
pipeline's.
"""

import contextlib
import dataclasses
import os
from pathlib import Path
import time
from typing import Iterator, NamedTuple

import numpy as np
import SimpleITK as sitk

from preprocessing import bias_field
from preprocessing import geometry
from preprocessing import normalize
from preprocessing import qc
from preprocessing import registration
from preprocessing import skull_strip
from preprocessing import template
from preprocessing.io.errors import InputError

# A scan whose finest voxel size is below this (mm) is skull stripped with
# the 1 mm template's brain mask, any other with the 2 mm one.
_FINE_SCAN_MM = 1.5
# Every scan is registered to the 2 mm template: the pose comes from fits at
# 4 and 2 mm (`registration`), and on four 1 mm synthetic scans the 1 mm
# template gave the same error (0.33 against 0.32 mm) for 20-40% more time.
_REGISTRATION_TEMPLATE_MM = 2


class NativeSteps(NamedTuple):
  """A scan's registration, brain mask and bias correction."""
  fit: registration.Registration
  mask: sitk.Image
  correction: bias_field.Correction


@dataclasses.dataclass(frozen=True)
class TemplateScans:
  """One subject's scans carried into template space (`to_template`).

  Attributes:
    native: per modality (the reference first), steps 2-4 on its scan.
    grid: the cropped template grid of `images`.
    brain: the brain mask on `grid`.
    images: per modality, the z-scored image on `grid` (0 outside the brain).
  """
  native: dict[str, NativeSteps]
  grid: sitk.Image
  brain: np.ndarray
  images: dict[str, np.ndarray]

  @property
  def to_native(self) -> sitk.Transform:
    """The reference scan's transform: template points -> native points.

    Its inverse takes images on `grid` (predictions) to the native grid.
    """
    return next(iter(self.native.values())).fit.transform


def to_template(scans: dict[str, tuple[Path, np.ndarray, np.ndarray]],
                target_spacing: float,
                seconds: dict[str, float] | None = None,
                registration_kind: str = "rigid",
                template_files: template.TemplateFiles | None = None
                ) -> TemplateScans:
  """Steps 2-6 on one subject's scans, without the lesion mask or writing.

  Training data and the scans `pvl_jax.predict` segments go through this
  same function.

  Args:
    scans: modality -> (path, data, affine) of its native scan, the
      reference modality first; the path only names the scan in errors.
    target_spacing: isotropic voxel size (mm) of the template grid.
    seconds: step name -> seconds, added to (see `qc.STEPS`).
    registration_kind: what registration fits, see `registration.KINDS`.
    template_files: the user's template; None: the MNI152 template.

  Returns:
    The scans in template space, with what it took to get them there.

  Raises:
    InputError: naming the scan: it is a single slice, empty or constant, or
      a step failed on it.
  """
  seconds = dict.fromkeys(qc.STEPS, 0.0) if seconds is None else seconds
  for path, data, _ in scans.values():
    check_scan(path, data)
  native = {m: _native_steps(*scan, registration_kind, seconds,
                            template_files)
            for m, scan in scans.items()}
  reference_path = next(iter(scans.values()))[0]
  reference = next(iter(native.values()))
  with timed_step(seconds, "resample", reference_path):
    grid, brain = _brain_grid(reference.mask, reference.fit.transform,
                              target_spacing, template_files)
    # Cubic B-spline, as nnU-Net resamples images (order 3): linear
    # interpolation blurs the scan a second time after the scanner's grid.
    images = {m: sitk.GetArrayFromImage(sitk.Resample(
        steps.correction.corrected, grid, steps.fit.transform,
        sitk.sitkBSpline, 0.0, sitk.sitkFloat32)).T
              for m, steps in native.items()}
  with timed_step(seconds, "normalize_write", reference_path):
    images = {m: normalize.zscore_in_mask(image, brain)
              for m, image in images.items()}
  return TemplateScans(native=native, grid=grid, brain=brain, images=images)


def check_scan(path: str | os.PathLike, data: np.ndarray) -> None:
  """Rejects a scan that no step could process, before any work.

  Raises:
    InputError: naming `path`: `data` is a single slice, empty or constant.
  """
  if min(data.shape) < 2:
    raise InputError(f"{path}: a single slice of shape {data.shape}, not a "
                     "3D volume")
  if not data.any():
    raise InputError(f"{path}: image is empty (every voxel is 0)")
  if data.min() == data.max():
    raise InputError(f"{path}: image is constant (every voxel is "
                     f"{data.flat[0]:g})")


def template_for_scan(affine: np.ndarray,
                      template_files: template.TemplateFiles | None = None
                      ) -> template.Template:
  """The template whose brain mask a scan is stripped with.

  The user's template if there is one, else the MNI152 template at 1 mm for
  scans finer than `_FINE_SCAN_MM`, at 2 mm for the others.
  """
  if template_files is not None:
    return template.load_user_template(template_files)
  finest = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).min()
  return template.load_template(1 if finest < _FINE_SCAN_MM else 2)


def native_brain_mask(path: Path, data: np.ndarray, affine: np.ndarray,
                      template_files: template.TemplateFiles | None = None
                      ) -> np.ndarray:
  """Steps 2-3 alone: a scan's brain mask on its own grid (bool).

  For cohorts that bring no brain masks and are not skull stripped.

  Raises:
    InputError: naming `path`: the scan cannot be registered or stripped.
  """
  check_scan(path, data)
  image = geometry.image_from_array(data, affine)
  seconds = dict.fromkeys(qc.STEPS, 0.0)
  fit = _register(path, image, "rigid", seconds, template_files)
  with timed_step(seconds, "skull_strip", path):
    mask = skull_strip.brain_mask(image, fit.transform,
                                  template_for_scan(affine, template_files))
  return sitk.GetArrayFromImage(mask).T > 0


@contextlib.contextmanager
def timed_step(seconds: dict[str, float], name: str, path: Path
               ) -> Iterator[None]:
  """Times a step; a library error in it becomes an InputError naming `path`.

  SimpleITK raises RuntimeError (and the numpy helpers ValueError) when a
  scan cannot be processed, e.g. a constant image that registration cannot
  align; the user needs to know which file and which step.

  Args:
    seconds: step name -> seconds; the step's time is added to `name`.
    name: the step, one of `qc.STEPS`.
    path: the file the step works on, named in errors.
  """
  start = time.perf_counter()
  try:
    yield
  except InputError:
    raise
  except (RuntimeError, ValueError) as err:
    raise InputError(f"{path}: {name.replace('_', ' ')} failed: "
                     f"{str(err).strip().splitlines()[-1]}") from err
  finally:
    seconds[name] += time.perf_counter() - start


def _register(path: Path, image: sitk.Image, kind: str,
              seconds: dict[str, float],
              template_files: template.TemplateFiles | None
              ) -> registration.Registration:
  """Step 2 on one scan, timed."""
  with timed_step(seconds, "register", path):
    return registration.register_to_template(
        image, template.registration_target(template_files,
                                            _REGISTRATION_TEMPLATE_MM), kind)


def _native_steps(path: Path, data: np.ndarray, affine: np.ndarray,
                  kind: str, seconds: dict[str, float],
                  template_files: template.TemplateFiles | None
                  ) -> NativeSteps:
  """Steps 2-4 (register: `kind`, skull strip, N4) on one scan, timed."""
  image = geometry.image_from_array(data, affine)
  fit = _register(path, image, kind, seconds, template_files)
  stripping_template = template_for_scan(affine, template_files)
  with timed_step(seconds, "skull_strip", path):
    mask = skull_strip.brain_mask(image, fit.transform, stripping_template)
  with timed_step(seconds, "bias_field", path):
    correction = bias_field.correct(image, mask)
  return NativeSteps(fit, mask, correction)


def _brain_grid(native_mask: sitk.Image, to_native: sitk.Transform,
                spacing: float,
                template_files: template.TemplateFiles | None
                ) -> tuple[sitk.Image, np.ndarray]:
  """The cropped template grid and the brain mask on it.

  The brain mask is carried into the full template grid first, so that the
  images are only resampled inside its bounding box.
  """
  full = template.template_grid(spacing, template_files)
  brain = sitk.GetArrayFromImage(
      geometry.resample_mask(native_mask, full, to_native)).T > 0
  start, stop = normalize.bounding_box(
      brain, margin=normalize.BRAIN_CROP_MARGIN)
  grid = sitk.RegionOfInterest(full, [b - a for a, b in zip(start, stop)],
                               list(start))
  crop = tuple(slice(a, b) for a, b in zip(start, stop))
  return grid, brain[crop]
