"""Segments a BIDS dataset's scans into a BIDS derivatives dataset.

`pvl_jax.predict`'s BIDS input: one scan per participant, chosen as training
chooses a cohort's (`preprocessing.bids.select_scans`), each segmented with
the run (`native_space`) and written as derivatives
(`derivatives`), with lesions.tsv and the QC report over every complete
scan. A rerun skips the scans whose outputs are complete; a scan that
cannot be used gets no output and is listed in the `Summary` with its
problem, and the others are segmented. The next scan is preprocessed
while the current one is segmented (`native_space.preprocessed_ahead`).
"""

import dataclasses
import os
from pathlib import Path
import sys
import time
from typing import TextIO

import tqdm

from preprocessing import bids
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from pvl_jax.evaluation import qc_report
from pvl_jax.inference import derivatives
from pvl_jax.inference import native_space
from pvl_jax.inference import scan_report
from pvl_jax.inference import trained_run


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
    bids_dir: the dataset (see `pvl_jax.predict`'s docstring).
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
  pending = [o for o in everyone if not o.complete()]
  preprocessed = native_space.preprocessed_ahead(
      run, [list(o.scans.image_paths.values()) for o in pending])
  for outputs, template_scan in tqdm.tqdm(zip(pending, preprocessed),
                                          total=len(pending),
                                          desc="predicting", unit="scan"):
    scan = outputs.reference
    try:
      prediction = native_space.segment_template_scan(run,
                                                      template_scan.result())
      row = scan_report.qc_row(_row_name(outputs.scans), run, prediction)
      derivatives.write_description(out, description)
      derivatives.write_scan(outputs, prediction, derivatives.sidecar(
          outputs, bids_dir, run, workdir, prediction, list(row.warnings)))
    except InputError as err:
      summary.failed.append((scan, str(err)))
      tqdm.tqdm.write(f"failed: {err}", file=stdout)
      continue
    rows[outputs.mask] = row
    summary.segmented.append(outputs)
    tqdm.tqdm.write(
        scan_report.result_line(scan, outputs.mask, run, prediction),
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
