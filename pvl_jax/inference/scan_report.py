"""What prediction says of one segmented scan: its result line and QC row.

`pvl_jax.predict` prints the line for every scan it segments, a loose file
or a BIDS dataset's (`bids_prediction`), and puts the row in the QC report
(`evaluation.qc_report`).
"""

from pathlib import Path

from pvl_jax.evaluation import qc_report
from pvl_jax.inference import native_space
from pvl_jax.inference import trained_run


def hand_function_line(run: trained_run.TrainedRun,
                       prediction: native_space.Prediction) -> str:
  """`P(bad hand function) = p` and, with the run's threshold, the call."""
  prob = prediction.hand_function_prob
  if run.cls_threshold is None:
    return (f"P(bad hand function) = {prob:.3f} (no decision threshold: the "
            "run's results.json has none)")
  call = "bad" if prob >= run.cls_threshold else "good"
  # The refitted read-out was fitted on the validation subjects too, so its
  # threshold is the baseline's 0.5, not one chosen on them.
  source = ("the refitted read-out's" if run.readout is not None
            else "chosen on validation")
  return (f"P(bad hand function) = {prob:.3f} -> {call} (threshold "
          f"{run.cls_threshold:.3f}, {source})")


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
