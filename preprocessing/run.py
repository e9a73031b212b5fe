r"""Preprocesses a raw BIDS cohort into template space for training.

Usage:
  python -m preprocessing.run --bids=RAW_DIR --out=PREP_DIR \
      [--target_spacing=1.0] [--mask_threshold=0.5] [--num_workers=N] \
      [--skip_failed] [--modalities=FLAIR,T1w] [--registration=rigid] \
      [--template=T.nii.gz --template_mask=M.nii.gz] [--ignore_label=2] \
      [--session=first] [--run=last] [--bids_filter=acq-3D]

Registers every scan to the MNI152 2009c template (or the user's own,
`--template` with its brain mask `--template_mask`, e.g. an age-matched
paediatric template), skull strips, N4-corrects, resamples to
`target_spacing`, z-scores and crops it; see
`preprocessing.pipeline` for the steps and the output layout. PREP_DIR is
then a cohort for training (`--config.data.cohort_dir=PREP_DIR`). A rerun
only processes subjects whose inputs or parameters changed.

Bad input stops the run with `error: <file>: <problem>` and exit status 2,
leaving raw inputs untouched and no partial subject in PREP_DIR. With
--skip_failed, a subject whose files fail is reported on stderr, skipped and
listed in qc/steps.csv instead, and the run exits 0 if any subject is left
(problems with participants.tsv or missing files always stop the run).
"""

from pathlib import Path
import sys

from absl import app
from absl import flags

from preprocessing import pipeline
from preprocessing import selection_flags
from preprocessing.io import console
from preprocessing.io.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string("bids", None, "Raw BIDS cohort directory (participants.tsv,"
                    " sub-*/anat/, derivatives/lesions/).", required=True)
flags.DEFINE_string("out", None, "Output derivative dataset directory.",
                    required=True)
flags.DEFINE_float("target_spacing", 1.0, "Isotropic voxel size (mm) of the "
                   "template-space output.")
flags.DEFINE_float("mask_threshold", None, "Binarise lesion masks with mask >="
                   " threshold (for probabilities or label maps); unset: masks"
                   " must contain only 0 and 1.")
flags.DEFINE_integer("num_workers", None, "At most this many subjects "
                     "processed in parallel; default: one per CPU this "
                     "process may use.")
flags.DEFINE_bool("skip_failed", False, "Report and skip subjects whose files "
                  "fail instead of stopping.")
flags.DEFINE_list("modalities", ["FLAIR"], "BIDS suffixes of the scans; the "
                  "first is the one the lesion mask is drawn on.")
flags.DEFINE_string("registration", "rigid", "What registration to the "
                    "template fits: rigid (the head's pose) or affine (also "
                    "head size and shear, e.g. children against the adult "
                    "template).")
flags.DEFINE_string("template", "", "Your own registration template (a "
                    "skull-stripped NIfTI image, e.g. age-matched); empty: "
                    "the MNI152 2009c template that nilearn ships.")
flags.DEFINE_string("template_mask", "", "The brain mask (0/1) of --template,"
                    " on its grid.")
flags.DEFINE_integer("ignore_label", None, "Lesion-mask value of voxels that "
                     "are neither lesion nor background (e.g. 2, 'other "
                     "pathology'); kept as this value in the outputs.")

flags.adopt_module_key_flags(selection_flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure()
  params = pipeline.Params(target_spacing=FLAGS.target_spacing,
                           mask_threshold=FLAGS.mask_threshold,
                           modalities=tuple(FLAGS.modalities),
                           registration=FLAGS.registration,
                           ignore_label=FLAGS.ignore_label,
                           template=FLAGS.template,
                           template_mask=FLAGS.template_mask,
                           session=selection_flags.SESSION.value,
                           run=selection_flags.RUN.value,
                           bids_filter=selection_flags.BIDS_FILTER.value)
  try:
    summary = pipeline.preprocess_cohort(
        FLAGS.bids, FLAGS.out, params, num_workers=FLAGS.num_workers,
        skip_failed=FLAGS.skip_failed)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{len(summary.processed)} subjects in {FLAGS.out} "
        f"({len(summary.cached)} up to date already, {len(summary.failed)} "
        f"skipped) in {summary.seconds:.1f} s")
  qc = Path(FLAGS.out) / "qc"
  print(f"quality control: {qc / 'steps.csv'} (numbers per subject and "
        f"step), {qc}/sub-*.png (overlays)")


if __name__ == "__main__":
  app.run(main)
