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
printed, with the decision at the threshold chosen on validation.

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
from pvl_jax.inference import derivatives
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
  rows = []
  for job in tqdm.tqdm(jobs, desc="predicting", unit="scan",
                       disable=len(jobs) == 1):
    prediction = native_space.segment(run, job.scan)
    write(prediction, job)
    rows.append(qc_row(job.scan.name, run, prediction))
    tqdm.tqdm.write(result_line(job.scan, job.mask, run, prediction),
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


def result_line(scan: Path, mask: Path, run: trained_run.TrainedRun,
                prediction: native_space.Prediction) -> str:
  """`SCAN -> MASK: N lesion voxels` (and P(bad hand function) for r > 0)."""
  line = f"{scan} -> {mask}: {int(prediction.mask.sum())} lesion voxels"
  if run.classifies:
    line += f"; {hand_function_line(run, prediction)}"
  return line


def qc_row(name: str, run: trained_run.TrainedRun,
           prediction: native_space.Prediction) -> qc_report.Row:
  """A scan's row of the QC report."""
  volume, count = qc_report.lesion_stats(prediction.mask, prediction.affine)
  return qc_report.Row(
      name=name, overlay_png=qc_report.overlay_png(
          prediction.scan, prediction.mask, prediction.affine),
      lesion_volume_ml=volume, lesion_count=count,
      p_bad=prediction.hand_function_prob if run.classifies else None,
      warnings=tuple(qc_report.warnings_for(
          count, prediction.brain_template_dice)))


@dataclasses.dataclass
class Summary:
  """What a BIDS dataset's prediction did.

  Attributes:
    segmented: the scans segmented by this run.
    skipped: the scans whose outputs a previous run completed.
    failed: (scan, problem) of the scans that got no output.
  """
  segmented: list[derivatives.ScanOutputs]
  skipped: list[derivatives.ScanOutputs]
  failed: list[tuple[Path, str]]


def is_bids_dataset(path: Path) -> bool:
  """A folder with participant (sub-*) folders, as BIDS lays a dataset out."""
  return path.is_dir() and any(p.is_dir() and p.name.startswith("sub-")
                               for p in path.iterdir())


def predict_bids(workdir: str | os.PathLike, bids_dir: str | os.PathLike,
                 output: str | os.PathLike,
                 selection: bids.Selection = bids.Selection(),
                 stdout: TextIO = sys.stdout) -> Summary:
  """Segments a BIDS dataset's scans into a BIDS derivatives dataset.

  Args:
    workdir: the training run.
    bids_dir: the dataset (see the module docstring).
    output: the derivatives folder.
    selection: which scan of each participant (as training's
      `data.session`, `data.run`, `data.bids_filter`).
    stdout: where the per-scan result lines and the summary go.

  Returns:
    What was segmented, skipped and failed.

  Raises:
    InputError: before anything is written: the run cannot be loaded, no
      scan matches the selection (or a participant's rules match none or
      several), or the output folder holds another model's derivatives.
  """
  bids_dir, out = Path(bids_dir), Path(output)
  start = time.perf_counter()
  run = trained_run.load(workdir)
  chosen = bids.select_scans(bids_dir, run.modalities, selection)
  description = derivatives.description(run, workdir, bids_dir)
  derivatives.check_output(out, description)
  print(f"{workdir}: checkpoint of step {run.step}, template spacing "
        f"{run.template_spacing:g} mm; {len(chosen)} scan(s) in {bids_dir}",
        file=stdout)
  everyone = [derivatives.outputs_for(scans, bids_dir, out)
              for scans in chosen]
  summary = Summary(segmented=[],
                    skipped=[o for o in everyone if o.complete()], failed=[])
  rows: dict[Path, qc_report.Row] = {}
  for outputs in tqdm.tqdm([o for o in everyone if not o.complete()],
                           desc="predicting", unit="scan"):
    scan = outputs.reference
    try:
      prediction = native_space.segment(
          run, list(outputs.scans.image_paths.values()))
      row = qc_row(_row_name(outputs.scans), run, prediction)
      derivatives.write_description(out, description)
      derivatives.write_scan(outputs, prediction, derivatives.sidecar(
          outputs, bids_dir, run, workdir, prediction, list(row.warnings)))
    except InputError as err:
      summary.failed.append((scan, str(err)))
      tqdm.tqdm.write(f"failed: {err}", file=stdout)
      continue
    rows[outputs.mask] = row
    summary.segmented.append(outputs)
    tqdm.tqdm.write(result_line(scan, outputs.mask, run, prediction),
                    file=stdout)
  done = [o for o in everyone if o.complete()]
  seconds = time.perf_counter() - start
  if done:
    derivatives.write_table(out, done)
    qc_report.write(
        out / qc_report.REPORT_FILE, f"Predictions of {workdir}",
        [rows.get(o.mask) or _row_from_files(o, run) for o in done],
        [f"Model run {Path(workdir).resolve()}, checkpoint step {run.step}; "
         f"dataset {bids_dir.resolve()}"])
  processed = len(summary.segmented) + len(summary.failed)
  print(f"{len(summary.segmented)} scan(s) segmented in {seconds:.1f} s"
        + (f" ({seconds / processed:.1f} s per scan, model loading "
           "included)" if processed else "")
        + f", {len(summary.skipped)} skipped (outputs complete), "
        f"{len(summary.failed)} failed; derivatives: {out}"
        + (f" ({derivatives.TABLE_FILE}, {qc_report.REPORT_FILE})"
           if done else ""), file=stdout)
  return summary


def _row_name(scans: bids.Scans) -> str:
  return scans.participant_id + (f" ses-{scans.session}" if scans.session
                                 else "")


def _row_from_files(outputs: derivatives.ScanOutputs,
                    run: trained_run.TrainedRun) -> qc_report.Row:
  """The QC row of a scan a previous run segmented, from its files."""
  content = derivatives.read_sidecar(outputs)
  scan, affine = nifti.load_volume(outputs.reference)
  mask, _ = nifti.load_volume(outputs.mask, kind="mask")
  return qc_report.Row(
      name=_row_name(outputs.scans),
      overlay_png=qc_report.overlay_png(scan, mask, affine),
      lesion_volume_ml=content["LesionVolumeMl"],
      lesion_count=content["LesionCount"],
      p_bad=(content["HandFunction"]["ProbabilityBad"] if run.classifies
             else None),
      warnings=tuple(content["QCWarnings"]))


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.configure()
  try:
    if is_bids_dataset(Path(FLAGS.input)):
      if FLAGS.probabilities:
        raise InputError(f"--probabilities={FLAGS.probabilities}: a BIDS "
                         "dataset's probability maps go beside its masks "
                         "(_probseg); leave the flag out")
      summary = predict_bids(FLAGS.workdir, FLAGS.input, FLAGS.output,
                             bids.Selection(*(
                                 holder.value for holder in (
                                     selection_flags.SESSION,
                                     selection_flags.RUN,
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
