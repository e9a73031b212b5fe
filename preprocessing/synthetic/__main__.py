"""Writes a synthetic PVL cohort (see the package docstring for the model).

Usage:
  python -m preprocessing.synthetic --out=DIR --num_subjects=40 --seed=0
      [--resolution_mm=2] [--space=raw|template] [--modalities=FLAIR,T1w]
      [--deform_mm=3] [--noscale_spacings] [--num_workers=N]

Bad arguments stop it with `error: --flag: ...` and exit status 2.
"""

import sys

from absl import app
from absl import flags

from preprocessing.io import workers
from preprocessing.io.errors import InputError
from preprocessing.synthetic import cohort
from preprocessing.synthetic.params import AcquisitionParams
from preprocessing.synthetic.params import CohortParams

FLAGS = flags.FLAGS
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
flags.DEFINE_integer("num_workers", None, "At most this many worker "
                     "processes; default: one per CPU this process may use.")


def main(argv: list[str]) -> None:
  del argv
  try:
    cohort.generate_cohort(
        FLAGS.out, FLAGS.num_subjects, FLAGS.seed,
        CohortParams(resolution_mm=FLAGS.resolution_mm,
                     deform_mm=FLAGS.deform_mm),
        num_workers=workers.worker_count(FLAGS.num_workers),
        space=FLAGS.space,
        modalities=tuple(FLAGS.modalities),
        acquisition_params=AcquisitionParams(
            scale_spacings=FLAGS.scale_spacings))
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
