"""The synthetic cohort as a BIDS dataset: subjects in parallel, then tables.

A cohort is written in one of two spaces: "raw" scans as a scanner would
write them, with the ground truth that preprocessing is scored against
(`acquisition`), or "template" scans on the template grid, ready for
training. Every file is byte-deterministic in the seed, and the dataset
appears atomically (built in a temporary folder).
"""

import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import tqdm

from preprocessing.io import nifti
from preprocessing.io import workers
from preprocessing.io.atomic import atomic_directory
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from preprocessing.synthetic import anatomy
from preprocessing.synthetic import contrast
from preprocessing.synthetic import lesions
from preprocessing.synthetic import subject as subject_lib
from preprocessing.synthetic.params import AcquisitionParams
from preprocessing.synthetic.params import CohortParams
from preprocessing.synthetic.params import MAX_DEFORM_MM

# Part of the cached cohorts' key (with `CohortParams`): bump it when the
# files a seed gives change.
GENERATOR_VERSION = "4"
# What the generator writes: scans as the scanner wrote them ("raw", see
# `acquisition`) or on the template grid, and which contrasts. Modalities
# draw their noise in this order.
SPACES = ("raw", "template")
MODALITIES = ("FLAIR", "T1w")


def validate_arguments(num_subjects: int, seed: int, num_workers: int,
                       params: CohortParams, space: str = "raw",
                       modalities: tuple[str, ...] = ("FLAIR",)) -> None:
  """Raises InputError naming the bad argument."""
  if seed < 0:
    raise InputError(f"--seed: must be >= 0 (got {seed})")
  if num_workers < 1:
    raise InputError(f"--num_workers: must be >= 1 (got {num_workers})")
  if num_subjects < 1:
    raise InputError(f"--num_subjects: must be >= 1 (got {num_subjects})")
  if params.resolution_mm not in (1, 2):
    raise InputError("--resolution_mm: the template ships at 1 or 2 mm "
                     f"(got {params.resolution_mm})")
  if not 0 <= params.deform_mm <= MAX_DEFORM_MM:
    raise InputError(f"--deform_mm: must be in [0, {MAX_DEFORM_MM:g}] "
                     f"(got {params.deform_mm:g})")
  if space not in SPACES:
    raise InputError(f"--space: must be one of {', '.join(SPACES)} "
                     f"(got {space!r})")
  unknown = [m for m in modalities if m not in MODALITIES]
  if unknown or not modalities or len(set(modalities)) < len(modalities):
    raise InputError(f"--modalities: distinct names among "
                     f"{', '.join(MODALITIES)} (got {','.join(modalities)!r})")


def generate_cohort(
    out_dir: str | os.PathLike, num_subjects: int, seed: int,
    params: CohortParams = CohortParams(), num_workers: int = 1,
    progress: bool = True, space: str = "raw",
    modalities: tuple[str, ...] = ("FLAIR",),
    acquisition_params: AcquisitionParams = (
        AcquisitionParams())) -> Path:
  """Generates a synthetic PVL cohort as a BIDS dataset.

  Args:
    out_dir: the dataset directory to create (must not exist).
    num_subjects: number of subjects.
    seed: cohort seed; the same seed gives byte-identical files.
    params: generator parameters.
    num_workers: at most this many worker processes (fewer when this
      process may use fewer CPUs).
    progress: show a progress bar.
    space: "raw" for native scans with ground truth (`acquisition`),
      "template" for scans on the template grid.
    modalities: scans to write, among `MODALITIES` (in any order).
    acquisition_params: the ranges of the raw scans' acquisitions.

  Returns:
    The dataset directory.

  Raises:
    InputError: bad arguments, or `out_dir` already exists.
  """
  validate_arguments(num_subjects, seed, num_workers, params, space,
                     modalities)
  num_workers = min(workers.worker_count(num_workers), num_subjects)
  # One order, so that the noise draws do not depend on the caller's.
  modalities = tuple(m for m in MODALITIES if m in modalities)
  out_dir = Path(out_dir)
  if out_dir.exists():
    raise InputError(f"{out_dir}: already exists; choose a new --out")
  seeds = np.random.SeedSequence(seed).spawn(num_subjects)
  subjects = [_subject_id(i, num_subjects) for i in range(num_subjects)]
  with atomic_directory(out_dir) as root:
    jobs = [(root, s, params, sd, space, modalities, acquisition_params)
            for s, sd in zip(subjects, seeds)]
    with contextlib.ExitStack() as stack:
      if num_workers > 1:
        # "spawn": the caller may have started JAX, which does not survive
        # fork.
        pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=multiprocessing.get_context("spawn")))
        results = pool.map(_generate_and_write, jobs)
      else:
        results = map(_generate_and_write, jobs)
      loads = list(tqdm.tqdm(results, total=num_subjects,
                             disable=not progress, desc="synthetic subjects",
                             unit="subject"))
    motor = np.array([l["motor_ml"] for l in loads])
    p_bad = lesions.label_probability(motor, params)
    labels = (np.array([l["label_draw"] for l in loads]) < p_bad).astype(int)
    rows = ["participant_id\thand_function\tlesion_volume_ml\t"
            "motor_lesion_volume_ml\tnum_lesions"]
    rows += [f"{s}\t{y}\t{l['lesion_ml']:.4f}\t{l['motor_ml']:.4f}\t"
             f"{l['num_lesions']}" for s, y, l in zip(subjects, labels, loads)]
    atomic_write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    atomic_write_text(root / "dataset_description.json",
                      _description("pvl_jax synthetic PVL cohort", "raw"))
    for sub in ("lesions", "synthetic"):
      atomic_write_text(root / "derivatives" / sub / "dataset_description.json",
                        _description(f"pvl_jax synthetic {sub}", "derivative"))
    atomic_write_text(
        root / "derivatives" / "synthetic" / "generator.json",
        json.dumps({
            "version": GENERATOR_VERSION, "seed": seed,
            "num_subjects": num_subjects, "params": dataclasses.asdict(params),
            "motor_roi": {"centres_mm": params.label_roi_centres_mm,
                          "radii_mm": lesions.MOTOR_ROI_RADII_MM},
            "label_model": "P(bad) = sigmoid(label_slope * (log(motor_ml + "
                           "0.01) - log(label_threshold_ml)))",
            # The best any classifier can do knowing motor_ml exactly.
            "bayes_accuracy": float(np.maximum(p_bad, 1 - p_bad).mean()),
            "fraction_bad": float(labels.mean()),
        }, indent=2) + "\n")
    if space == "raw":
      atomic_write_text(
          root / "derivatives" / "synthetic" / "acquisition.json",
          json.dumps({
              "modalities": modalities,
              "params": dataclasses.asdict(acquisition_params),
              "subjects": {s: l["acquisition"]
                           for s, l in zip(subjects, loads)},
          }, indent=2) + "\n")
  return out_dir


def _generate_and_write(args) -> dict[str, object]:
  """Worker: generates and writes one subject.

  Returns:
    Its lesion loads and label draw, and in raw space its acquisition.
  """
  root, subject, params, seed, space, modalities, acquisition_params = args
  data = subject_lib.generate_subject(params, seed, modalities)
  result = {k: data[k] for k in ("lesion_ml", "motor_ml", "num_lesions",
                                 "label_draw")}
  if space == "template":
    _write_template_subject(root, subject, data, params, seed, modalities)
  else:
    result["acquisition"] = _write_raw_subject(
        root, subject, data, params, seed, modalities, acquisition_params)
  return result


def _write_template_subject(root: Path, subject: str, data: dict,
                            params: CohortParams,
                            seed: np.random.SeedSequence,
                            modalities: tuple[str, ...]) -> None:
  """Writes a subject's template-space scans and masks."""
  affine = anatomy.load_template(params.resolution_mm).affine
  scanner = _acquisition_rng(seed)
  anat = Path(subject, "anat")
  for modality in modalities:
    image = (data["flair"] if modality == "FLAIR" else contrast.template_scan(
        scanner, data["clean"][modality], params,
        contrast.white_matter_intensity(modality, params)))
    nifti.save_nifti(image, affine,
                     root / anat / f"{subject}_{modality}.nii.gz", np.float32)
  nifti.save_nifti(data["lesion"], affine,
                   root / "derivatives" / "lesions" / anat /
                   f"{subject}_label-lesion_mask.nii.gz", np.uint8)
  nifti.save_nifti(data["brain"], affine,
                   root / "derivatives" / "synthetic" / anat /
                   f"{subject}_desc-brain_mask.nii.gz", np.uint8)


def _write_raw_subject(root: Path, subject: str, data: dict,
                       params: CohortParams, seed: np.random.SeedSequence,
                       modalities: tuple[str, ...],
                       acquisition_params: AcquisitionParams
                       ) -> dict[str, object]:
  """Writes a subject's native scans and ground truth; returns its record."""
  # Imported here: only raw scans need SimpleITK (resampling onto scanner
  # grids), so template-space cohorts are generated without it, e.g. on an
  # accelerator machine whose image lacks it.
  # pylint: disable=g-import-not-at-top
  import SimpleITK as sitk
  from preprocessing.synthetic import acquisition
  from preprocessing.template import TEMPLATE_SPACE
  # pylint: enable=g-import-not-at-top
  affine = anatomy.load_template(params.resolution_mm).affine
  scan = acquisition.acquire(
      _acquisition_rng(seed),
      acquisition.TemplateSubject(
          images={m: data["clean"][m] for m in modalities},
          white_matter={m: contrast.white_matter_intensity(m, params)
                        for m in modalities},
          brain=data["brain"] > 0, lesion=data["lesion"] > 0, affine=affine),
      params.noise_level, acquisition_params)
  anat = Path(subject, "anat")
  truth = root / "derivatives" / "synthetic" / anat
  for modality, image in scan.images.items():
    nifti.save_nifti(image, scan.affine,
                     root / anat / f"{subject}_{modality}.nii.gz", np.float32)
  nifti.save_nifti(scan.lesion, scan.affine,
                   root / "derivatives" / "lesions" / anat /
                   f"{subject}_label-lesion_mask.nii.gz", np.uint8)
  nifti.save_nifti(scan.brain, scan.affine,
                   truth / f"{subject}_desc-brain_mask.nii.gz", np.uint8)
  nifti.save_nifti(scan.bias, scan.affine,
                   truth / f"{subject}_desc-biasfield.nii.gz", np.float32)
  nifti.save_nifti(data["lesion"], affine, truth /
                   f"{subject}_space-{TEMPLATE_SPACE}_label-lesion_mask"
                   ".nii.gz", np.uint8)
  sitk.WriteTransform(scan.to_native, str(
      truth / f"{subject}_from-{TEMPLATE_SPACE}_to-native_xfm.tfm"))
  return scan.record


def _acquisition_rng(seed: np.random.SeedSequence) -> np.random.Generator:
  """The subject's scanner stream, apart from its anatomy stream.

  The first child of the subject's seed (built, not spawned, so that every
  call gives the same one): anatomy, lesions and the label draw stay the
  same whatever the space and modalities.
  """
  return np.random.default_rng(np.random.SeedSequence(
      seed.entropy, spawn_key=(*seed.spawn_key, 0)))


def _subject_id(index: int, num_subjects: int) -> str:
  return f"sub-{index + 1:0{max(3, len(str(num_subjects)))}d}"


def _description(name: str, dataset_type: str) -> str:
  return json.dumps({
      "Name": name, "BIDSVersion": "1.9.0", "DatasetType": dataset_type,
      "GeneratedBy": [{"Name": "pvl_jax preprocessing.synthetic",
                       "Version": GENERATOR_VERSION}]}, indent=2) + "\n"
