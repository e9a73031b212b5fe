r"""Segments new scans with a trained run: lesion masks in the scans' own grids.

Usage:
  python -m pvl_jax.predict --workdir=RUN_DIR --input=SCAN.nii.gz \
      --output=MASK.nii.gz [--probabilities=PROB.nii.gz]
  python -m pvl_jax.predict --workdir=RUN_DIR --input=SCANS_DIR \
      --output=MASKS_DIR [--probabilities=PROBS_DIR]

Per scan:
  1. load and check it: one volume per modality of the run (a 3D file for
     one modality, a 4D file with the volumes in the run's
     `data.modalities` order for several), in any orientation;
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
  5. write the mask (uint8 0/1) and, with --probabilities, the probability
     map (float32; 0 outside the brain and where postprocessing removed a
     component, so that mask = probability > 0.5), both with the scan's
     shape and affine: voxel (i, j, k) of a mask is voxel (i, j, k) of its
     scan, whatever the scan's orientation (oblique, LIA, ...), since every
     resampling happens in world coordinates. Files are written atomically.

For a joint model (r > 0) each scan's probability of bad hand function is
printed, with the decision at the threshold chosen on validation.

A folder is every .nii / .nii.gz file in it (not recursive); outputs take
the scans' file names. All its scans are checked before the first is
processed. Bad input stops with `error: <file>: <problem>` on stderr and exit
status 2, writing nothing for that scan.
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

from preprocessing.io import console
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.inference import native_space
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


def hand_function_line(run: trained_run.TrainedRun,
                       prediction: native_space.Prediction) -> str:
  """`P(bad hand function) = p` and, with a validation threshold, the call."""
  prob = prediction.hand_function_prob
  if run.cls_threshold is None:
    return (f"P(bad hand function) = {prob:.3f} (no decision threshold: the "
            "run's results.json has none)")
  call = "bad" if prob >= run.cls_threshold else "good"
  return (f"P(bad hand function) = {prob:.3f} -> {call} (threshold "
          f"{run.cls_threshold:.3f} chosen on validation)")


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
  for job in tqdm.tqdm(jobs, desc="predicting", unit="scan",
                       disable=len(jobs) == 1):
    prediction = native_space.segment(run, job.scan)
    write(prediction, job)
    line = (f"{job.scan} -> {job.mask}: {int(prediction.mask.sum())} "
            "lesion voxels")
    if run.classifies:
      line += f"; {hand_function_line(run, prediction)}"
    tqdm.tqdm.write(line, file=stdout)
  seconds = time.perf_counter() - start
  print(f"{len(jobs)} scan(s) segmented in {seconds:.1f} s "
        f"({seconds / len(jobs):.1f} s per scan, model loading included); "
        f"masks: {output}" + (f", probabilities: {probabilities}"
                              if probabilities is not None else ""),
        file=stdout)
  return jobs


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure()
  try:
    predict_files(FLAGS.workdir, FLAGS.input, FLAGS.output,
                  FLAGS.probabilities)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  # Defined here, not at import: tests import this module beside others that
  # define --workdir.
  flags.DEFINE_string("workdir", None, "The training run (its config.json, "
                      "checkpoints/ and results.json).", required=True)
  flags.DEFINE_string("input", None, "A NIfTI scan, or a folder of them.",
                      required=True)
  flags.DEFINE_string("output", None, "The lesion mask to write (a folder if "
                      "--input is one).", required=True)
  flags.DEFINE_string("probabilities", None, "Also write the lesion "
                      "probability map here (a folder if --input is one).")
  app.run(main)
