r"""Scores each preprocessing step against a synthetic cohort's ground truth.

Usage (from the repository root):
  python -m benchmarks.preprocessing --bids=RAW_DIR --prep=PREP_DIR \
      [--run=RUN_DIR]

RAW_DIR is a raw-space synthetic cohort (`python -m preprocessing.synthetic
--space=raw`) and PREP_DIR its `preprocessing.run` output. The generator
records its ground truth per subject under
`RAW_DIR/derivatives/synthetic/sub-X/anat/`:

  sub-X_desc-brain_mask.nii.gz                      native brain mask
  sub-X_desc-biasfield.nii.gz                       multiplicative bias field
  sub-X_from-MNI152NLin2009cAsym_to-native_xfm.tfm  template -> native points
  sub-X_space-MNI152NLin2009cAsym_label-lesion_mask.nii.gz

Per subject it prints:
  reg_mm      mean distance between where the true and the recovered
              transform send each template brain voxel (mm);
  brain_dice  Dice of the native brain mask with the true one;
  cv_raw, cv_n4, cv_true  white-matter coefficient of variation of the raw
              scan, of the scan divided by the estimated bias field, and by
              the true one (the floor that noise leaves); white matter is
              the template's (probability >= 0.9) carried into native space
              by the true transform, inside both brain masks, lesions out;
  cv_cut      1 - cv_n4 / cv_raw, the reduction by N4;
  lesion_dice Dice of the template-space lesion mask with the generator's;
  lesion_ceil the same for the native lesion mask carried by the TRUE
              transform (resampled as the pipeline does): what the scan's
              grid leaves for any registration to reach;
  seconds     the pipeline's processing time of the subject (one worker);
then the means, the means per voxel size of the scans (thick slices lose
small lesions), and the targets. The time target is on the wall time per
subject of the run that processed them (PREP_DIR/qc/run.json: workers
overlap, so it is less than the mean of `seconds` when they share the
machine well), or on that mean for outputs without the record.

With --run, a `pvl_jax.main` run trained on PREP_DIR, it also scores the
run's test predictions (`RUN_DIR/predictions/`) against the generator's
template-space lesion masks, beside the Dice the run reported against its
references, the preprocessed masks: the end-to-end figure that the masks'
trip through the scan's grid does not flatter or penalise.
"""

from pathlib import Path

from absl import app
from absl import flags
import numpy as np
import SimpleITK as sitk

from preprocessing import bids
from preprocessing import geometry
from preprocessing import pipeline
from preprocessing import qc
from preprocessing import template
from preprocessing.io import nifti
from preprocessing.io.errors import InputError
from preprocessing.io.json_files import read_json
from pvl_jax.evaluation import compare

FLAGS = flags.FLAGS
flags.DEFINE_string("bids", None, "Raw synthetic cohort (with ground truth).",
                    required=True)
flags.DEFINE_string("prep", None, "Its preprocessing.run output.",
                    required=True)
flags.DEFINE_string("modality", "FLAIR", "The reference modality.")
flags.DEFINE_string("run", None, "Optional pvl_jax.main workdir trained on "
                    "--prep: score its test predictions against the truth.")

SPACE = template.TEMPLATE_SPACE
# (column, target, whether larger is better): registration within 1 mm,
# brain masks of Dice 0.95, N4 halving the white matter's variation, lesion
# masks of Dice 0.95, 20 s of wall time per subject (`format_table`).
TARGETS = (("reg_mm", 1.0, False), ("brain_dice", 0.95, True),
           ("cv_cut", 0.5, True), ("lesion_dice", 0.95, True),
           ("seconds", 20.0, False))
COLUMNS = ("reg_mm", "brain_dice", "cv_raw", "cv_n4", "cv_true", "cv_cut",
           "lesion_dice", "lesion_ceil", "seconds")
_WM_PROBABILITY = 0.9


def score_subject(raw_dir: Path, prep_dir: Path, pid: str,
                  modality: str = "FLAIR") -> dict[str, float]:
  """The figures of one subject (see the module docstring)."""
  truth = _truth_dir(raw_dir, pid)
  out = prep_dir / pid
  true_xfm = sitk.ReadTransform(
      str(truth / f"{pid}_from-{SPACE}_to-native_xfm.tfm"))
  xfm = sitk.ReadTransform(
      str(out / "xfm" / f"{pid}_from-native_to-{SPACE}_xfm.tfm"))
  mni = template.load_template(2)
  scan_path = raw_dir / pid / "anat" / f"{pid}_{modality}.nii.gz"
  scan, affine = nifti.load_volume(scan_path)
  true_brain = nifti.load_mask(truth / f"{pid}_desc-brain_mask.nii.gz",
                                  reference_shape=scan.shape,
                                  reference_affine=affine)
  brain = nifti.load_mask(out / "native" / f"{pid}_desc-brain_mask.nii.gz",
                             reference_shape=scan.shape,
                             reference_affine=affine)
  bias, _ = nifti.load_volume(
      out / "native" / f"{pid}_desc-biasfield.nii.gz")
  true_bias, _ = nifti.load_volume(truth / f"{pid}_desc-biasfield.nii.gz")
  lesion = nifti.load_mask(raw_dir / "derivatives" / "lesions" / pid /
                              "anat" / f"{pid}_label-lesion_mask.nii.gz",
                              threshold=0.5)
  native = geometry.image_from_array(scan, affine)
  white_matter = sitk.GetArrayFromImage(sitk.Resample(
      mni.white_matter, native, true_xfm.GetInverse(), sitk.sitkLinear,
      0.0, sitk.sitkFloat32)).T >= _WM_PROBABILITY
  white_matter &= brain & true_brain & ~lesion
  cv_raw = qc.white_matter_cv(scan, white_matter)
  cv_n4 = qc.white_matter_cv(scan / np.where(brain, bias, 1), white_matter)
  record = read_json(out / f"{pid}_desc-preprocessing.json")
  true_lesion = _true_lesion_path(raw_dir, pid)
  return {
      "reg_mm": _transform_error(true_xfm, xfm, mni.brain_mask),
      "brain_dice": _dice(brain, true_brain),
      "cv_raw": cv_raw, "cv_n4": cv_n4,
      "cv_true": qc.white_matter_cv(scan / true_bias, white_matter),
      "cv_cut": 1 - cv_n4 / cv_raw,
      "lesion_dice": _lesion_dice(
          prep_dir / "derivatives" / "lesions" / pid / "anat" /
          f"{pid}_label-lesion_mask.nii.gz", true_lesion),
      "lesion_ceil": _lesion_ceiling(lesion, affine, true_xfm, true_lesion),
      "seconds": float(record["qc"]["seconds_total"]),
  }


def score_predictions(raw_dir: Path, run_dir: Path) -> dict[str, float]:
  """Dice of a run's saved test predictions with the generator's masks.

  Args:
    raw_dir: the raw synthetic cohort (with ground truth).
    run_dir: a `pvl_jax.main` workdir whose cohort was preprocessed from
      `raw_dir`.

  Returns:
    subject -> Dice with its template-space lesion mask.

  Raises:
    app.UsageError: the run holds no predictions, or one names a subject
      the cohort has no ground truth for.
  """
  paths = sorted((run_dir / "predictions").glob("*_pred.nii.gz"))
  if not paths:
    raise app.UsageError(f"{run_dir / 'predictions'}: no *_pred.nii.gz "
                         "(not a finished pvl_jax.main run?)")
  scores = {}
  for path in paths:
    pid = path.name.removesuffix("_pred.nii.gz")
    truth = _true_lesion_path(raw_dir, pid)
    if not truth.is_file():
      raise app.UsageError(f"{path}: {raw_dir} has no ground truth for {pid}"
                           f" ({truth} missing)")
    scores[pid] = _lesion_dice(path, truth)
  return scores


def format_run_table(truth_dice: dict[str, float],
                     reported_dice: dict[str, float]) -> str:
  """Per test subject: Dice against the references and against the truth."""
  width = max(len("subject"), len("mean"), *map(len, truth_dice))
  lines = [f"{'subject':<{width}} {'dice_refs':>11} {'dice_truth':>11}"]
  rows = [(pid, reported_dice.get(pid, float("nan")), truth_dice[pid])
          for pid in truth_dice]
  rows.append(("mean", float(np.mean([r[1] for r in rows])),
               float(np.mean([r[2] for r in rows]))))
  lines += [f"{pid:<{width}} {refs:11.4f} {truth:11.4f}"
            for pid, refs, truth in rows]
  return "\n".join(lines)


def voxel_size(raw_dir: Path, pid: str, modality: str = "FLAIR") -> str:
  """A scan's voxel size, smallest first, e.g. "0.9x0.9x3.0" (mm)."""
  _, affine = nifti.load_volume(raw_dir / pid / "anat" /
                                   f"{pid}_{modality}.nii.gz")
  return "x".join(f"{s:.1f}" for s in
                  sorted(np.linalg.norm(affine[:3, :3], axis=0)))


def wall_seconds_per_subject(prep_dir: Path) -> float | None:
  """Wall seconds per subject of the run that processed PREP_DIR's subjects.

  None when the output has no run record (`pipeline.RUN_FILE`).
  """
  path = prep_dir / pipeline.RUN_FILE
  if not path.is_file():
    return None
  run = read_json(path)
  return run["seconds"] / run["subjects_computed"]


def format_table(scores: dict[str, dict[str, float]],
                 voxel_sizes: dict[str, str],
                 wall_seconds: float | None = None) -> str:
  """Per-subject rows, the means, and the targets with pass/FAIL.

  Args:
    scores: subject -> its `score_subject` figures.
    voxel_sizes: subject -> its scan's `voxel_size`, for the means per
      voxel size.
    wall_seconds: `wall_seconds_per_subject`; the time target is checked on
      it, or on the mean of the `seconds` column when None.

  Returns:
    The table as text.
  """
  groups = {"mean": list(scores)}
  for size in sorted(set(voxel_sizes.values())):
    members = [pid for pid in scores if voxel_sizes[pid] == size]
    groups[f"{size} mm (n={len(members)})"] = members
  width = max(len("subject"), *map(len, scores), *map(len, groups))
  lines = [f"{'subject':<{width}} " + " ".join(f"{c:>11}" for c in COLUMNS)]
  for pid, row in scores.items():
    lines.append(f"{pid:<{width}} " +
                 " ".join(f"{row[c]:11.4f}" for c in COLUMNS))
  for name, members in groups.items():
    group_means = {c: float(np.mean([scores[pid][c] for pid in members]))
                   for c in COLUMNS}
    lines.append(f"{name:<{width}} " +
                 " ".join(f"{group_means[c]:11.4f}" for c in COLUMNS))
  means = {c: float(np.mean([row[c] for row in scores.values()]))
           for c in COLUMNS}
  lines.append(f"\n{len(scores)} subjects; targets (on the means):")
  for column, target, larger in TARGETS:
    value = means[column]
    if column == "seconds" and wall_seconds is not None:
      column, value = "wall_s/subj", wall_seconds
    ok = value >= target if larger else value <= target
    lines.append(f"  {column:<12} {value:8.4f} "
                 f"{'>=' if larger else '<='} {target:<6g} "
                 f"{'pass' if ok else 'FAIL'}")
  return "\n".join(lines)


def _truth_dir(raw_dir: Path, pid: str) -> Path:
  """Where the generator put a subject's ground truth."""
  return raw_dir / "derivatives" / "synthetic" / pid / "anat"


def _true_lesion_path(raw_dir: Path, pid: str) -> Path:
  """The generator's template-space lesion mask of a subject."""
  return _truth_dir(raw_dir, pid) / (
      f"{pid}_space-{SPACE}_label-lesion_mask.nii.gz")


def _transform_error(true_xfm: sitk.Transform, xfm: sitk.Transform,
                     brain: sitk.Image) -> float:
  """Mean distance (mm) between two transforms' images of brain voxels."""
  def displacement(transform):
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, brain.GetSize(), brain.GetOrigin(),
        brain.GetSpacing(), brain.GetDirection())
    return sitk.GetArrayFromImage(field)
  distance = np.linalg.norm(displacement(true_xfm) - displacement(xfm),
                            axis=-1)
  return float(distance[sitk.GetArrayFromImage(brain) > 0].mean())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  total = a.sum() + b.sum()
  return float(2 * (a & b).sum() / total) if total else 1.0


def _lesion_ceiling(lesion: np.ndarray, affine: np.ndarray,
                    true_xfm: sitk.Transform, true_path: Path) -> float:
  """Dice of the native lesion mask carried by the true transform."""
  true, true_affine = nifti.load_volume(true_path, kind="lesion mask")
  carried = geometry.resample_mask(
      geometry.image_from_array(lesion.astype(np.uint8), affine),
      geometry.image_from_array(true, true_affine), true_xfm)
  return _dice(sitk.GetArrayFromImage(carried).T > 0, true > 0.5)


def _lesion_dice(path: Path, true_path: Path) -> float:
  """Dice of a lesion mask with the true one, on the true mask's grid.

  The preprocessed mask is cropped (and possibly at another spacing), so it
  is carried onto the generator's template grid by nearest neighbour; where
  the grids coincide this only undoes the crop.
  """
  data, affine = nifti.load_volume(path, kind="lesion mask")
  true, true_affine = nifti.load_volume(true_path, kind="lesion mask")
  on_truth = sitk.Resample(
      geometry.image_from_array(data, affine),
      geometry.image_from_array(true, true_affine), sitk.Transform(),
      sitk.sitkNearestNeighbor, 0.0)
  return _dice(sitk.GetArrayFromImage(on_truth).T > 0.5, true > 0.5)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    _report(Path(FLAGS.bids), Path(FLAGS.prep), FLAGS.modality,
            Path(FLAGS.run) if FLAGS.run else None)
  except InputError as e:
    # A missing or unreadable file among the inputs the user named.
    raise app.UsageError(str(e)) from e


def _report(raw_dir: Path, prep_dir: Path, modality: str,
            run_dir: Path | None) -> None:
  """Prints the steps' table and, given a run, its predictions' table."""
  if not pipeline.is_preprocessed(prep_dir):
    raise app.UsageError(f"{prep_dir}: not a preprocessing.run output")
  subjects = bids.read_participants(prep_dir / bids.PARTICIPANTS_FILE)
  scores = {pid: score_subject(raw_dir, prep_dir, pid, modality)
            for pid in sorted(subjects)}
  print(format_table(scores, {pid: voxel_size(raw_dir, pid, modality)
                              for pid in scores},
                     wall_seconds_per_subject(prep_dir)))
  if run_dir is not None:
    truth_dice = score_predictions(raw_dir, run_dir)
    test_results = compare.load_test_results(run_dir)
    reported = {row["subject_id"]: row["dice"]
                for row in test_results["per_subject"]}
    print(f"\n{run_dir}: test predictions")
    print(format_run_table(truth_dice, reported))


if __name__ == "__main__":
  app.run(main)
