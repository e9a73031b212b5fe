"""Raw BIDS scans -> template-space training data (the library behind `run`).

Per subject, in worker processes (one subject each, in parallel):
  1. load and validate every scan and the lesion mask
     (`preprocessing.io.nifti`); the lesion mask is binarised
     (`mask >= mask_threshold`, or it must already be 0/1), voxels of
     `Params.ignore_label` apart (`lesion_labels`);
  2. register each modality to the template: the MNI152 2009c template, or
     the user's (`Params.template`, `Params.template_mask`); rigid, or rigid
     then affine with `Params.registration`;
  3. skull strip (the template's brain mask carried into native space);
  4. N4 bias-field correction inside the brain;
  5. resample into template space at `target_spacing`: images by cubic
     B-spline, the brain and the binarised lesion mask linearly then >= 0.5
     (`geometry.resample_mask`; it kept lesions 2.5 Dice points closer to
     the truth than nearest neighbour); ignored voxels the same way, written
     into the lesion mask with the ignore label where no lesion is;
  6. z-score inside the brain, crop to the brain's bounding box plus a
     margin, write.

Steps 2-6 without the lesion mask or the writing are
`template_space.to_template` (described there), which `pvl_jax.predict`
runs on the scans it segments.

The output is a BIDS derivative dataset that `bids.load_cohort` and the
TFDS builder read as a cohort; `outputs` describes its layout and how a
subject's outputs appear atomically. Raw inputs are only read.

Caching: a subject whose input files (path in the cohort, size,
modification time) and pipeline parameters hash to the value stored in its
json is not processed again.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tqdm

from preprocessing import bids
from preprocessing import geometry
from preprocessing import lesion_labels
from preprocessing import outputs
from preprocessing import qc
from preprocessing import registration
from preprocessing import template as template_lib
from preprocessing import template_space
from preprocessing.pipeline_output import DESCRIPTION_FILE
from preprocessing.pipeline_output import GENERATED_BY
from preprocessing.pipeline_output import Params
from preprocessing.pipeline_output import is_preprocessed
from preprocessing.io import nifti
from preprocessing.io import workers
from preprocessing.io.atomic import atomic_directory
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError

log = logging.getLogger(__name__)

# Part of every subject's cache key: bump it when the pipeline's output
# changes, so that existing outputs are recomputed.
VERSION = "1.2.0"
RUN_FILE = Path("qc") / "run.json"
# White matter, for the bias-correction QC: template WM probability >= this.
_WM_PROBABILITY = 0.9


@dataclasses.dataclass(frozen=True)
class Summary:
  """What `preprocess_cohort` did.

  Attributes:
    processed: ids of the subjects now in the output (computed or cached).
    cached: ids among them whose outputs were up to date already.
    failed: id -> error message of the subjects skipped (skip_failed only).
    seconds: wall time of the whole run.
  """
  processed: list[str]
  cached: list[str]
  failed: dict[str, str]
  seconds: float


def preprocess_cohort(bids_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      params: Params = Params(),
                      num_workers: int | None = None,
                      skip_failed: bool = False) -> Summary:
  """Preprocesses every subject of a raw BIDS cohort into `out_dir`.

  Args:
    bids_dir: the raw cohort (see `bids.load_cohort`); only read.
    out_dir: the derivative dataset to create or update.
    params: pipeline parameters.
    num_workers: at most this many subjects processed in parallel (one
      process each), fewer when this process may use fewer CPUs; None: one
      per usable CPU.
    skip_failed: report and skip subjects whose files fail instead of
      stopping at the first one.

  Returns:
    What was processed, reused and skipped.

  Raises:
    InputError: the cohort is invalid (participants.tsv, missing files: these
      always stop the run), `out_dir` is unusable, a subject failed (unless
      skip_failed), or no subject could be processed.
  """
  start = time.perf_counter()
  bids_dir = Path(bids_dir).resolve()
  out_dir = Path(out_dir).resolve()
  if num_workers is not None and num_workers < 1:
    raise InputError(f"num_workers: must be >= 1 (got {num_workers})")
  num_workers = workers.worker_count(num_workers)
  if params.target_spacing <= 0:
    raise InputError(f"target_spacing: must be > 0 (got "
                     f"{params.target_spacing})")
  if params.registration not in registration.KINDS:
    raise InputError(f"registration: one of {', '.join(registration.KINDS)} "
                     f"(got {params.registration!r})")
  if params.ignore_label in (0, 1):
    raise InputError(f"ignore_label: {params.ignore_label} is the "
                     f"{'background' if params.ignore_label == 0 else 'lesion'}"
                     " label; the ignored label must be another value")
  params.user_template()  # a bad template stops the run before any work
  subjects = bids.load_cohort(bids_dir, modalities=params.modalities,
                              selection=params.selection(),
                              require_label_column=False)
  _prepare_output_dir(bids_dir, out_dir, params)
  records, todo = {}, []
  for subject in subjects:
    digest = inputs_hash(bids_dir, subject, params)
    record = outputs.cached_record(out_dir, subject.participant_id, digest)
    if record is None:
      todo.append((subject, digest))
    else:
      records[subject.participant_id] = record
  cached = sorted(records)
  computed, failed = _run_parallel(todo, out_dir, params, num_workers,
                                   skip_failed)
  records.update(computed)
  if not records:
    raise InputError(f"{bids_dir}: no subject could be preprocessed")
  processed = sorted(records)
  outputs.prune(out_dir, processed)
  outputs.write_if_changed(
      out_dir / bids.PARTICIPANTS_FILE,
      outputs.participants_rows(bids_dir / bids.PARTICIPANTS_FILE, processed))
  rows = [records[pid]["qc"] for pid in processed] + [
      {"participant_id": pid,
       "status": f"failed: {message.splitlines()[0]}"}
      for pid, message in sorted(failed.items())]
  outputs.write_if_changed(out_dir / "qc" / "steps.csv",
                           qc.format_steps_csv(rows))
  seconds = time.perf_counter() - start
  if computed:
    # Each subject's record holds one worker's seconds, which overlap; the
    # run's wall time is what the subjects cost on this machine. A fully
    # cached rerun writes nothing (training hashes the files' times).
    atomic_write_text(out_dir / RUN_FILE, json.dumps(
        {"subjects_computed": len(computed), "num_workers": num_workers,
         "seconds": seconds}, indent=2) + "\n")
  return Summary(processed=processed, cached=cached, failed=failed,
                 seconds=seconds)


def inputs_hash(bids_dir: Path, subject: bids.Subject, params: Params) -> str:
  """Cache key of a subject: its input files' identity and the parameters.

  Files are identified by their path relative to the cohort, size and
  modification time, so a cohort moved or copied with its timestamps is
  not processed again. A user's template counts as an input of every
  subject.
  """
  paths = [subject.image_paths[m] for m in params.modalities]
  paths.append(subject.lesion_mask_path)
  paths += [Path(p) for p in (params.template, params.template_mask) if p]
  files = []
  for path in paths:
    stat = path.stat()
    name = (path.relative_to(bids_dir) if path.is_relative_to(bids_dir)
            else path)
    files.append([str(name), stat.st_size, stat.st_mtime_ns])
  key = json.dumps({"files": files, "params": dataclasses.asdict(params),
                    "version": VERSION}, sort_keys=True)
  return hashlib.sha256(key.encode()).hexdigest()


def preprocess_subject(subject: bids.Subject, out_dir: Path, params: Params,
                       digest: str) -> dict[str, object]:
  """Runs the pipeline on one subject and writes its outputs.

  Args:
    subject: the subject's raw files.
    out_dir: the derivative dataset.
    params: pipeline parameters.
    digest: the subject's `inputs_hash`, stored with its outputs.

  Returns:
    The subject's record: {"inputs_hash": ..., "qc": steps.csv row}.

  Raises:
    InputError: naming the file and the problem (bad input, or a step that
      failed on it).
  """
  pid = subject.participant_id
  outputs.remove_subject(out_dir, pid)
  seconds = dict.fromkeys(qc.STEPS, 0.0)
  reference = params.modalities[0]
  reference_path = subject.image_paths[reference]
  with template_space.timed_step(seconds, "load", reference_path):
    scans = {m: (subject.image_paths[m],
                 *nifti.load_volume(subject.image_paths[m]))
             for m in params.modalities}
    _, native, native_affine = scans[reference]
    labels = lesion_labels.load_lesion_labels(
        subject.lesion_mask_path, reference_shape=native.shape,
        reference_affine=native_affine, reference_path=reference_path,
        threshold=params.mask_threshold, ignore_label=params.ignore_label)
    lesion = labels == lesion_labels.LESION
    template_files = params.user_template()
    template = template_space.template_for_scan(native_affine, template_files)
  result = template_space.to_template(scans, params.target_spacing, seconds,
                                      params.registration, template_files)
  reference_steps = result.native[reference]
  brain = sitk.GetArrayFromImage(reference_steps.mask).T > 0
  white_matter = brain & ~lesion & _white_matter(
      reference_steps.mask, result.to_native, template)
  cv_before, cv_after = (
      qc.white_matter_cv(image, white_matter) if white_matter.any()
      else float("nan")
      for image in (native, sitk.GetArrayFromImage(
          reference_steps.correction.corrected).T))
  with template_space.timed_step(seconds, "resample", reference_path):
    lesion_t, ignored_t = (sitk.GetArrayFromImage(geometry.resample_mask(
        geometry.image_from_array(mask.astype(np.uint8), native_affine),
        result.grid, result.to_native)).T
                           for mask in (lesion,
                                        labels == lesion_labels.IGNORE))
    mask_t = np.where(ignored_t > 0, params.ignore_label or 0, 0)
    mask_t = np.where(lesion_t > 0, 1, mask_t)
  voxel_ml = abs(np.linalg.det(native_affine[:3, :3])) / 1000
  row = {
      "participant_id": pid, "status": "ok",
      "registration_metric": reference_steps.fit.metric_value,
      "brain_volume_ml": brain.sum() * voxel_ml,
      "wm_cv_before_n4": cv_before, "wm_cv_after_n4": cv_after,
      "lesion_volume_native_ml": lesion.sum() * voxel_ml,
      "lesion_volume_template_ml":
          lesion_t.sum() * params.target_spacing ** 3 / 1000,
  }
  write_start = time.perf_counter()
  try:
    qc.write_figure(
        out_dir / "qc" / f"{pid}.png", native, native_affine, brain,
        result.images[reference], lesion_t,
        f"{pid}: MI {row['registration_metric']:.3f}, WM CV "
        f"{cv_before:.3f} -> {cv_after:.3f}, lesion "
        f"{row['lesion_volume_native_ml']:.2f} -> "
        f"{row['lesion_volume_template_ml']:.2f} ml")
    template_affine = geometry.image_affine(result.grid)
    with atomic_directory(outputs.lesion_dir(out_dir, pid)) as tmp:
      nifti.save_nifti(mask_t, template_affine,
                       tmp / "anat" / f"{pid}_label-lesion_mask.nii.gz",
                       np.uint8)
    with atomic_directory(out_dir / pid) as tmp:
      for modality, image in result.images.items():
        nifti.save_nifti(image, template_affine,
                         tmp / "anat" / f"{pid}_{modality}.nii.gz",
                         np.float32)
        (tmp / "xfm").mkdir(exist_ok=True)
        sitk.WriteTransform(result.native[modality].fit.transform, str(
            tmp / "xfm" / outputs.transform_name(pid, modality, reference)))
      nifti.save_nifti(result.brain.astype(np.uint8), template_affine,
                       tmp / "anat" / f"{pid}_desc-brain_mask.nii.gz",
                       np.uint8)
      nifti.save_nifti(brain.astype(np.uint8), native_affine,
                       tmp / "native" / f"{pid}_desc-brain_mask.nii.gz",
                       np.uint8)
      bias = sitk.GetArrayFromImage(reference_steps.correction.bias_field).T
      nifti.save_nifti(np.where(brain, bias, 0), native_affine,
                       tmp / "native" / f"{pid}_desc-biasfield.nii.gz",
                       np.float32)
      # The record, written last, cannot time its own writing.
      seconds["normalize_write"] += time.perf_counter() - write_start
      row.update({f"seconds_{s}": t for s, t in seconds.items()},
                 seconds_total=sum(seconds.values()))
      record = {"inputs_hash": digest, "qc": row}
      atomic_write_text(tmp / outputs.record_name(pid),
                        json.dumps(record, indent=1, default=float) + "\n")
  except BaseException as err:
    # The lesion folder or figure may already be in place.
    outputs.remove_subject(out_dir, pid)
    if isinstance(err, (OSError, RuntimeError)):
      raise InputError(f"{out_dir / pid}: cannot write the outputs ({err})"
                       ) from err
    raise
  return record


def _white_matter(image: sitk.Image, to_native: sitk.Transform,
                  template: template_lib.Template) -> np.ndarray:
  """Template white matter (probability >= _WM_PROBABILITY) on `image`.

  Empty for a template without a white-matter map (the QC's coefficients
  of variation are then NaN).
  """
  if template.white_matter is None:
    return np.zeros(image.GetSize(), bool)
  probability = sitk.Resample(template.white_matter, image,
                              to_native.GetInverse(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
  return sitk.GetArrayFromImage(probability).T >= _WM_PROBABILITY


def _run_parallel(todo: list[tuple[bids.Subject, str]], out_dir: Path,
                  params: Params, num_workers: int, skip_failed: bool
                  ) -> tuple[dict[str, dict], dict[str, str]]:
  """Processes (subject, inputs hash) pairs in worker processes.

  Returns:
    id -> record of the subjects processed, and id -> message of those that
    failed (only with skip_failed; otherwise the first failure is raised).
  """
  records: dict[str, dict] = {}
  failed: dict[str, str] = {}
  if not todo:
    return records, failed
  num_workers = min(num_workers, len(todo))
  log.info("preprocessing %d subjects in %d worker processes", len(todo),
           num_workers)
  # The usable CPUs shared among the workers' SimpleITK threads.
  threads = max(1, workers.available_cpus() // num_workers)
  # spawn: the caller may be a training process whose JAX threads make fork
  # unsafe.
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=num_workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=sitk.ProcessObject.SetGlobalDefaultNumberOfThreads,
      initargs=(threads,)) as pool:
    futures = {pool.submit(preprocess_subject, subject, out_dir, params,
                           digest): subject.participant_id
               for subject, digest in todo}
    progress = tqdm.tqdm(concurrent.futures.as_completed(futures),
                         total=len(futures), desc="preprocessing",
                         unit="subject")
    for future in progress:
      pid = futures[future]
      try:
        records[pid] = future.result()
      except InputError as err:
        if not skip_failed:
          # Subjects already running finish (and are complete); queued ones
          # never start.
          pool.shutdown(wait=True, cancel_futures=True)
          raise
        failed[pid] = str(err)
        progress.write(f"skipped {pid}: {err}", file=sys.stderr)
  return records, failed


def _prepare_output_dir(bids_dir: Path, out_dir: Path, params: Params) -> None:
  """Checks `out_dir` is safe to write into and marks it as ours."""
  if out_dir == bids_dir or out_dir in bids_dir.parents:
    raise InputError(f"{out_dir}: the output folder must not be the raw "
                     f"dataset {bids_dir} or contain it")
  if out_dir.exists() and not out_dir.is_dir():
    raise InputError(f"{out_dir}: exists and is not a directory")
  if (out_dir.is_dir() and any(out_dir.iterdir())
      and not is_preprocessed(out_dir)):
    raise InputError(f"{out_dir}: not empty and not an output of "
                     f"{GENERATED_BY} (no {DESCRIPTION_FILE} naming it); "
                     "choose another folder")
  description = {
      "Name": f"{bids_dir.name}, preprocessed into "
              f"{params.template or template_lib.TEMPLATE_SPACE}",
      "BIDSVersion": "1.9.0",
      "DatasetType": "derivative",
      "GeneratedBy": [{
          "Name": GENERATED_BY, "Version": VERSION,
          "Description": f"registration (SimpleITK {params.registration}, "
                         "Mattes MI),"
                         " template brain-mask skull stripping, N4, z-score,"
                         " brain crop"}],
      "SourceDatasets": [{"URL": bids_dir.as_uri()}],
      "PipelineParameters": dataclasses.asdict(params),
  }
  outputs.write_if_changed(out_dir / DESCRIPTION_FILE,
                           json.dumps(description, indent=2) + "\n")
