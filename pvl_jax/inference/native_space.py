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

import collections
from collections.abc import Iterator, Sequence
from concurrent import futures
import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing import geometry
from preprocessing import template as template_lib
from preprocessing import template_space
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.data import template_grid
from pvl_jax.inference import trained_run


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A scan's segmentation, on the scan's own grid.

  Attributes:
    mask: uint8 0/1 lesion mask.
    probabilities: float32 lesion probability (after postprocessing).
    affine: the scan's affine.
    hand_function_prob: P(bad hand function); meaningful only for r > 0.
    scan: the reference modality's volume (for overlays).
    brain_template_dice: Dice of the scan's brain mask, carried to the
      template grid, with the template's brain mask: well below 1 when the
      registration failed or the scan does not cover the brain.
  """
  mask: np.ndarray
  probabilities: np.ndarray
  affine: np.ndarray
  hand_function_prob: float
  scan: np.ndarray | None = None
  brain_template_dice: float | None = None


def load_scan(run: trained_run.TrainedRun, path: Path | Sequence[Path]
              ) -> tuple[np.ndarray, np.ndarray]:
  """A scan as (X, Y, Z, channels) and its affine, checked for the run.

  Args:
    run: the run (its modalities).
    path: one file of the run's modalities (4D for several), or one file per
      modality in the run's order (a BIDS dataset's scans), on one grid.

  Raises:
    InputError: naming the file: unreadable, not one volume per modality of
      the run, not on the reference's grid, a single slice, empty or
      constant.
  """
  if isinstance(path, Path):
    data, affine = nifti.load_channels(
        path, len(run.modalities), kind=f"{'/'.join(run.modalities)} image")
    paths = [path] * len(run.modalities)
  else:
    paths = list(path)
    volumes = [nifti.load_volume(p, kind=f"{m} image")
               for p, m in zip(paths, run.modalities)]
    affine = volumes[0][1]
    for other, (volume, other_affine) in zip(paths[1:], volumes[1:]):
      nifti.check_same_geometry(paths[0], volumes[0][0].shape, affine, other,
                                volume.shape, other_affine)
    data = np.stack([volume for volume, _ in volumes], axis=-1)
  for channel in range(data.shape[-1]):
    template_space.check_scan(paths[channel], data[..., channel])
  return data, affine


@dataclasses.dataclass(frozen=True)
class TemplateScan:
  """A scan loaded and brought into a run's template space.

  Attributes:
    data: the native scan, (X, Y, Z, channels).
    affine: its affine.
    scans: what `template_space.to_template` gave (images, brain, grid and
      the transform back).
    template_files: the user's template, None for MNI152.
  """
  data: np.ndarray
  affine: np.ndarray
  scans: template_space.TemplateScans
  template_files: template_lib.TemplateFiles | None


def to_template(run: trained_run.TrainedRun, path: Path | Sequence[Path]
                ) -> TemplateScan:
  """Loads and preprocesses one scan as the run's training volumes were.

  What it gives depends on the run only through its modalities, template
  and spacing, so several runs of one config can segment it in turn.

  Args:
    run: the trained run.
    path: the scan, as `load_scan` takes it.
  """
  data, affine = load_scan(run, path)
  paths = [path] * len(run.modalities) if isinstance(path, Path) else path
  files = dataset.template_files(run.config)
  scans = template_space.to_template(
      {m: (p, data[..., c], affine)
       for c, (m, p) in enumerate(zip(run.modalities, paths))},
      run.template_spacing, template_files=files)
  return TemplateScan(data, affine, scans, files)


def segment_template_scan(run: trained_run.TrainedRun, scan: TemplateScan
                          ) -> Prediction:
  """Segments a scan in template space and maps the result back."""
  scans, data, affine = scan.scans, scan.data, scan.affine
  image = np.stack([scans.images[m] for m in run.modalities], axis=-1)
  probs, hand_function_prob = run.predict(
      image, scans.brain,
      template_origin(run, scans.grid, scan.template_files))
  native = to_native(probs, scans.grid, scans.to_native, data.shape[:3],
                     affine)
  files = scan.template_files
  return Prediction(mask=(native > 0.5).astype(np.uint8),
                    probabilities=native, affine=affine,
                    hand_function_prob=hand_function_prob,
                    scan=data[..., 0],
                    brain_template_dice=_template_dice(
                        scans.brain, scans.grid, run.template_spacing, files,
                        template_space.template_for_scan(affine, files)))


def preprocessed_ahead(run: trained_run.TrainedRun,
                       paths: Sequence[Path | Sequence[Path]],
                       scans_ahead: int = 2) -> Iterator[futures.Future]:
  """Each scan's `to_template`, the next scans' started before one is given.

  The preprocessing runs in `scans_ahead` worker threads: when a scan's
  future is handed out, the following `scans_ahead` scans' are already
  submitted, so registration and N4 (SimpleITK) of the next scans run while
  the caller segments this one (`segment_template_scan`, XLA); both release
  the GIL, and none of them keeps every core busy throughout (two scans
  preprocessed at once took 0.86x the time of one after the other, measured
  in docs/results.md). At most `scans_ahead + 1` scans are held at once.

  Args:
    run: the trained run.
    paths: the scans, each as `load_scan` takes it.
    scans_ahead: how many scans are preprocessed ahead of the one given.

  Yields:
    Per scan, in order, the future of its `TemplateScan` (its `result()`
    raises what `to_template` raised, e.g. an InputError naming the file).
  """
  with futures.ThreadPoolExecutor(max_workers=scans_ahead) as pool:
    waiting = collections.deque(pool.submit(to_template, run, path)
                                for path in paths[:scans_ahead])
    for path in paths[scans_ahead:]:
      waiting.append(pool.submit(to_template, run, path))
      yield waiting.popleft()
    yield from (waiting.popleft() for _ in range(len(waiting)))


def template_origin(run: trained_run.TrainedRun, grid: sitk.Image,
                    files: template_lib.TemplateFiles | None
                    ) -> tuple[int, int, int]:
  """The template voxel of a cropped template grid's voxel 0.

  In the grid the run's located head reads (`model.cls_template_affine`),
  where training placed its records; for other runs, and located runs older
  than that key (trained on records of one grid), its crop start in the
  template's own grid.

  Raises:
    InputError: the run's located head was trained on blocks of another
      template grid than the one this scan was brought to.
  """
  trained = template_grid.TemplateGrid.from_config(run.config.model)
  if trained is not None:
    origin = trained.origin(geometry.image_affine(grid))
    if origin is None:
      raise InputError(
          f"the run's located hand-function head reads blocks of a "
          f"{trained.shape} template grid, but the scan was brought to a "
          "grid off its lattice (other axes, spacing or a position between "
          "its voxels); use the run's template and spacing")
    return origin
  full = template_lib.template_grid(run.template_spacing, files)
  shape = tuple(run.config.model.get("cls_template_shape", ()))
  if shape and tuple(full.GetSize()) != shape:
    raise InputError(
        f"the run's located hand-function head reads blocks of a "
        f"{shape} template grid, but the scan was brought to a "
        f"{tuple(full.GetSize())} grid; use the run's template and spacing")
  return tuple(int(i) for i in full.TransformPhysicalPointToIndex(
      grid.GetOrigin()))


def _template_dice(brain: np.ndarray, grid: sitk.Image, spacing: float,
                   files: template_lib.TemplateFiles | None,
                   template: template_lib.Template) -> float:
  """Dice of a brain mask on `grid` (a crop of the template grid) with the
  template's own brain mask, both on the whole template grid (a brain the
  scan cuts off counts as missing, not as outside the crop)."""
  full = template_lib.template_grid(spacing, files)
  on_full = [sitk.GetArrayFromImage(sitk.Resample(
      image, full, sitk.Transform(), sitk.sitkNearestNeighbor)).T > 0
             for image in (geometry.image_from_array(
                 brain.astype(np.uint8), geometry.image_affine(grid)),
                           template.brain_mask)]
  total = on_full[0].sum() + on_full[1].sum()
  return float(2 * (on_full[0] & on_full[1]).sum() / total) if total else 0.0


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
