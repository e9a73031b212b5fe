r"""Segments new scans with a trained run: lesion masks in the scans' own grids.

Usage:
  python -m pvl_jax.predict --workdir=RUN_DIR --input=BIDS_DIR --output=OUT \
      [--session=first --run=last --bids_filter=acq-3D]
  python -m pvl_jax.predict --workdir=RUN_DIR --input=SCAN.nii.gz \
      --output=MASK.nii.gz [--probabilities=PROB.nii.gz]
  python -m pvl_jax.predict --workdir=RUN_DIR --input=SCANS_DIR \
      --output=MASKS_DIR [--probabilities=PROBS_DIR]

A BIDS dataset (a folder with sub-* folders) is read as training reads a
cohort (`preprocessing.bids.select_scans`: one scan per participant, chosen
by --session, --run and --bids_filter, one file per modality of the run),
and the output is a BIDS derivatives dataset (`inference.derivatives`: per
scan a `_desc-lesion_mask`, a `_probseg` and a JSON sidecar; lesions.tsv;
qc_report.html). The model is loaded and compiled once for the whole
dataset; a progress bar shows the rate and the time left. Rerunning skips
the scans whose outputs are complete. A scan that cannot be used gets no
output, the others are segmented, and the summary lists it with its problem
(exit status 2 at the end).

Per scan:
  1. load and check it: one volume per modality of the run (a 3D file for
     one modality, a 4D file with the volumes in the run's
     `data.modalities` order for several, or a BIDS file per modality), in
     any orientation;
  2. preprocess it as the training volumes were
     (`preprocessing.template_space.to_template`: registration to the MNI152
     template, skull stripping, N4, resampling to the run's template
     spacing, z-scoring, brain crop);
  3. predict with the run's latest checkpoint, sliding window overlap and
     mirroring, discard lesions outside the brain mask, then remove the
     lesion components smaller than the size chosen on validation
     (`trained_run`);
  4. bring the lesion probabilities back onto the scan's grid through the
     inverse of the registration, linearly interpolated, and threshold them
     at 0.5 (as nnU-Net resamples probabilities, not masks: the boundary
     falls between template voxels instead of snapping to them, which counts
     when the scan is finer than the template grid);
  5. write the mask (uint8 0/1) and the probability map (float32; 0 outside
     the brain and where postprocessing removed a component, so that mask =
     probability > 0.5; for loose files only with --probabilities), both
     with the scan's shape and affine: voxel (i, j, k) of a mask is voxel
     (i, j, k) of its scan, whatever the scan's orientation (oblique, LIA,
     ...), since every resampling happens in world coordinates. Files are
     written atomically.

For a joint model (r > 0) each scan's probability of bad hand function is
printed, with the decision at the run's threshold (chosen on validation; 0.5
for the located head's refitted read-out, which reads the scan's
segmentation as the baseline reads masks).

A folder of loose scans is every .nii / .nii.gz file in it (not recursive);
outputs take the scans' file names, and a QC report (qc_report.html) goes
beside them. All its scans are checked before the first is processed. Bad
input stops with `error: <file>: <problem>` on stderr and exit status 2,
writing nothing for that scan.
"""

import dataclasses
import os
from pathlib import Path
import sys
import time
from typing import TextIO

from absl import app
from absl import flags
import numpy as np
import tqdm

from preprocessing import bids
from preprocessing.io import console
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import qc_report
from pvl_jax.inference import bids_prediction
from pvl_jax.inference import native_space
from pvl_jax.inference import scan_report
from pvl_jax.inference import trained_run

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass(frozen=True)
class Job:
  """One scan and where its outputs go (probabilities None: not written)."""
  scan: Path
  mask: Path
  probabilities: Path | None


def plan_jobs(input_path: str | os.PathLike, output: str | os.PathLike,
              probabilities: str | os.PathLike | None = None) -> list[Job]:
  """Pairs every input scan with its output files.

  Args:
    input_path: a scan, or a folder of scans.
    output: the mask file, or (for a folder) the folder of masks.
    probabilities: the probability map file or folder; None for none.

  Returns:
    One job per scan, in file name order.

  Raises:
    InputError: the input is missing or holds no scan, or an output would
      overwrite an input or is not a NIfTI file name.
  """
  input_path, output = Path(input_path), Path(output)
  probabilities = None if probabilities is None else Path(probabilities)
  if not input_path.exists():
    raise InputError(f"{input_path}: not found")
  if not input_path.is_dir():
    for path in filter(None, (output, probabilities)):
      if not path.name.endswith(_NIFTI_SUFFIXES):
        raise InputError(f"{path}: output file name must end in .nii or "
                         ".nii.gz (or --input must be a folder)")
    jobs = [Job(input_path, output, probabilities)]
  else:
    scans = sorted(p for p in input_path.iterdir()
                   if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))
    if not scans:
      raise InputError(f"{input_path}: no .nii or .nii.gz scan in the folder")
    for path in filter(None, (output, probabilities)):
      if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder (--input is a "
                         "folder)")
    jobs = [Job(scan, output / scan.name,
                None if probabilities is None else probabilities / scan.name)
            for scan in scans]
  inputs = {job.scan.resolve() for job in jobs}
  for job in jobs:
    for path in filter(None, (job.mask, job.probabilities)):
      if path.resolve() in inputs:
        raise InputError(f"{path}: output would overwrite an input scan")
  if probabilities is not None and {j.mask.resolve() for j in jobs} & {
      j.probabilities.resolve() for j in jobs}:
    raise InputError(f"{probabilities}: --probabilities must differ from "
                     "--output")
  return jobs


def write(prediction: native_space.Prediction, job: Job) -> None:
  """Writes a job's outputs; on failure none of them is left behind.

  Raises:
    InputError: an output cannot be written.
  """
  outputs = [(prediction.mask, job.mask, np.uint8)]
  if job.probabilities is not None:
    outputs.append((prediction.probabilities, job.probabilities, np.float32))
  written = []
  for data, path, dtype in outputs:
    try:
      nifti.save_nifti(data, prediction.affine, path, dtype)
    except BaseException as err:
      for done in written:
        done.unlink(missing_ok=True)
      if isinstance(err, OSError):
        raise InputError(f"{path}: cannot write ({err.strerror or err})"
                         ) from err
      raise
    written.append(path)


def predict_files(workdir: str | os.PathLike, input_path: str | os.PathLike,
                  output: str | os.PathLike,
                  probabilities: str | os.PathLike | None = None,
                  stdout: TextIO = sys.stdout) -> list[Job]:
  """The command: segments a scan or a folder of scans with a run.

  Args:
    workdir: the training run.
    input_path: a scan or a folder of scans.
    output: the mask file or folder.
    probabilities: the probability map file or folder; None for none.
    stdout: where the per-scan result lines go.

  Returns:
    The jobs done.

  Raises:
    InputError: naming the file and the problem (see the module docstring).
  """
  jobs = plan_jobs(input_path, output, probabilities)
  start = time.perf_counter()
  run = trained_run.load(workdir)
  print(f"{workdir}: checkpoint of step {run.step}, template spacing "
        f"{run.template_spacing:g} mm", file=stdout)
  if len(jobs) > 1:
    for job in tqdm.tqdm(jobs, desc="checking scans", unit="scan"):
      native_space.load_scan(run, job.scan)
  rows = []
  preprocessed = native_space.preprocessed_ahead(run,
                                                 [job.scan for job in jobs])
  for job, template_scan in tqdm.tqdm(zip(jobs, preprocessed),
                                      total=len(jobs), desc="predicting",
                                      unit="scan", disable=len(jobs) == 1):
    prediction = native_space.segment_template_scan(run,
                                                    template_scan.result())
    write(prediction, job)
    rows.append(scan_report.qc_row(job.scan.name, run, prediction))
    tqdm.tqdm.write(
        scan_report.result_line(job.scan, job.mask, run, prediction),
        file=stdout)
  seconds = time.perf_counter() - start
  report = ""
  if Path(input_path).is_dir():
    report = ", QC report: " + str(qc_report.write(
        Path(output) / qc_report.REPORT_FILE, f"Predictions of {workdir}",
        rows, [f"Model run {Path(workdir).resolve()}, checkpoint step "
               f"{run.step}; scans: {Path(input_path).resolve()}"]))
  print(f"{len(jobs)} scan(s) segmented in {seconds:.1f} s "
        f"({seconds / len(jobs):.1f} s per scan, model loading included); "
        f"masks: {output}" + (f", probabilities: {probabilities}"
                              if probabilities is not None else "") + report,
        file=stdout)
  return jobs


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure()
  try:
    if bids_prediction.is_bids_dataset(Path(FLAGS.input)):
      if FLAGS.probabilities:
        raise InputError(f"--probabilities={FLAGS.probabilities}: a BIDS "
                         "dataset's probability maps go beside its masks "
                         "(_probseg); leave the flag out")
      summary = bids_prediction.predict_bids(
          FLAGS.workdir, FLAGS.input, FLAGS.output,
          bids.Selection(*(holder.value for holder in (
              selection_flags.SESSION, selection_flags.RUN,
              selection_flags.BIDS_FILTER))))
      for scan, problem in summary.failed:
        print(f"error: {problem}" if problem.startswith(str(scan))
              else f"error: {scan}: {problem}", file=sys.stderr)
      if summary.failed:
        sys.exit(2)
    else:
      given = selection_flags.given()
      if given:
        raise InputError(f"--{next(iter(given))}: only for a BIDS dataset "
                         f"(--input={FLAGS.input} is not one)")
      predict_files(FLAGS.workdir, FLAGS.input, FLAGS.output,
                    FLAGS.probabilities)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that
  # define --workdir.
  from preprocessing import selection_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run (its config.json, "
                      "checkpoints/ and results.json).", required=True)
  flags.DEFINE_string("input", None, "A BIDS dataset, a NIfTI scan, or a "
                      "folder of them.", required=True)
  flags.DEFINE_string("output", None, "The BIDS derivatives folder (for a "
                      "BIDS dataset), the lesion mask to write, or a folder "
                      "of them (a folder of scans).", required=True)
  flags.DEFINE_string("probabilities", None, "Also write the lesion "
                      "probability map here (a folder if --input is one).")
  app.run(main)
