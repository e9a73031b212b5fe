"""Scoring trained runs on raw scans, against masks on the scans' own grids.

What a user of `pvl_jax.predict` gets, measured: each scan goes through
`inference.native_space` (registration, skull stripping, N4, resampling, the
run's sliding window and postprocessing, and back to the scan's grid), and
the mask it gives is scored against the reference lesion mask drawn on the
scan's grid, with the WMH metrics of `segmentation.evaluate_subject`.

Beside it, the resolution limit of the template grid: the reference itself
carried onto the run's template grid (linear, >= 0.5, as preprocessing
carries training masks) and back (linear, > 0.5, as predictions come back).
It scores what a perfect template-space segmentation would; a lesion smaller
than a template voxel may not survive it.

Scans are preprocessed once (`load_cases`) and then segmented by any number
of runs of one config (the same modalities, template and spacing).
"""

from collections.abc import Iterable, Sequence
import dataclasses
from pathlib import Path

import numpy as np
import tqdm

from preprocessing import geometry
from preprocessing.io import nifti
from pvl_jax.evaluation import segmentation
from pvl_jax.inference import native_space
from pvl_jax.inference import trained_run


@dataclasses.dataclass(frozen=True)
class Case:
  """A raw scan in template space, with its reference on its own grid.

  Attributes:
    name: the subject, named in rows.
    scan: the scan in the runs' template space.
    reference: boolean lesion mask on the scan's grid.
    spacing: the scan's voxel size (mm) per axis.
    round_trip: the reference carried to the template grid and back.
  """
  name: str
  scan: native_space.TemplateScan
  reference: np.ndarray
  spacing: tuple[float, ...]
  round_trip: np.ndarray


def load_cases(run: trained_run.TrainedRun,
               scans: Iterable[tuple[str, Path, Path]]) -> list[Case]:
  """Preprocesses every (name, scan, reference mask) as `run` needs.

  Raises:
    InputError: naming a scan or mask that cannot be read, or a mask off its
      scan's grid.
  """
  cases = []
  for name, scan_path, mask_path in tqdm.tqdm(
      list(scans), desc="preprocessing raw scans", unit="scan"):
    scan = native_space.to_template(run, Path(scan_path))
    shape = scan.data.shape[:3]
    reference = nifti.load_mask(mask_path, reference_shape=shape,
                                reference_affine=scan.affine,
                                reference_path=scan_path)
    on_grid = geometry.resample_mask(
        geometry.image_from_array(reference.astype(np.uint8), scan.affine),
        scan.scans.grid, scan.scans.to_native)
    back = native_space.to_native(
        geometry.array_from_image(on_grid)[0].astype(np.float32),
        scan.scans.grid, scan.scans.to_native, shape, scan.affine)
    spacing = tuple(float(s) for s in
                    np.linalg.norm(scan.affine[:3, :3], axis=0))
    cases.append(Case(name, scan, reference, spacing, back > 0.5))
  return cases


def score(run: trained_run.TrainedRun, cases: Sequence[Case]
          ) -> dict[str, float]:
  """`segmentation.aggregate` of the run's native-grid masks over the cases."""
  rows = [segmentation.evaluate_subject(
      native_space.segment_template_scan(run, case.scan).mask > 0,
      case.reference, case.spacing)
          for case in tqdm.tqdm(cases, desc="segmenting raw scans",
                                unit="scan")]
  return segmentation.aggregate(rows)


def resolution_limit(cases: Sequence[Case]) -> dict[str, float]:
  """`segmentation.aggregate` of the references' round trips."""
  return segmentation.aggregate([
      segmentation.evaluate_subject(case.round_trip, case.reference,
                                    case.spacing) for case in cases])
