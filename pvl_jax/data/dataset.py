"""Resolves the config's cohort to a built TFDS dataset and its fold splits.

With no `config.data.cohort_dir`, the embedded synthetic cohort is generated
once and cached (keyed by its parameters). The TFDS records are built once per
cohort content: the cache key fingerprints every file of the cohort (path,
size, modification time), so an edited cohort is rebuilt and an unchanged one
is not. A file lock serialises concurrent preparers (e.g. sweep points started
together), and everything is written atomically, so a killed preparation
leaves nothing that a later run would take for finished.

With `config.data.preprocess.enabled`, the cohort holds raw scans: it is first
run through `preprocessing.pipeline` (registration to the template, skull
stripping, N4, resampling to `config.data.preprocess.target_spacing`) into
`<cache>/preprocessed/<cohort name>-<hash of its path and the parameters>`,
and the records are built from that. The pipeline skips subjects whose input
files and parameters are unchanged, so a rerun processes nothing again and,
writing nothing, keeps the records' cache key. A cohort that is already a
pipeline output is used as it is.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import ml_collections

from preprocessing import tfds_builder
from preprocessing.io import workers
from preprocessing.io.errors import InputError

log = logging.getLogger(__name__)


def cache_root(config: ml_collections.ConfigDict) -> Path:
  """Directory for generated cohorts and TFDS records."""
  root = (config.data.cache_dir or os.environ.get("PVL_JAX_CACHE")
          or Path.home() / ".cache" / "pvl_jax")
  return Path(root).expanduser()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def synthetic_cohort(config: ml_collections.ConfigDict) -> Path:
  """Generates (once) and returns the embedded synthetic cohort directory."""
  # Imported here: the generator pulls in nilearn (seconds to import), which
  # a run on a user's cohort never needs.
  from preprocessing.synthetic import cohort as synthetic_cohort_lib  # pylint: disable=g-import-not-at-top
  from preprocessing.synthetic import params as synthetic_params  # pylint: disable=g-import-not-at-top
  spec = config.data.synthetic
  params = synthetic_params.CohortParams(resolution_mm=spec.resolution_mm)
  key = _digest(repr((synthetic_cohort_lib.GENERATOR_VERSION, spec.num_subjects,
                      spec.seed, dataclasses.asdict(params))))
  out = (cache_root(config) / "cohorts" /
         f"synthetic-n{spec.num_subjects}-seed{spec.seed}-"
         f"{spec.resolution_mm}mm-{key}")
  with _locked(out.with_suffix(".lock")):
    if not out.exists():
      num_workers = workers.worker_count()
      log.info("generating the synthetic cohort (%d subjects, %d worker "
               "processes) in %s", spec.num_subjects, num_workers, out)
      # Template space: ready for training as it is (raw scans would need
      # the preprocessing pipeline first).
      synthetic_cohort_lib.generate_cohort(
          out, spec.num_subjects, spec.seed, params, num_workers=num_workers,
          space="template")
  return out


def preprocessed_cohort(config: ml_collections.ConfigDict, cohort: Path
                        ) -> Path:
  """Runs the preprocessing pipeline on a raw cohort (cached, see above)."""
  # Imported here: SimpleITK and the pipeline are only needed for raw data.
  from preprocessing import pipeline  # pylint: disable=g-import-not-at-top
  if pipeline.is_preprocessed(cohort):
    return cohort
  threshold = config.data.mask_threshold
  params = pipeline.Params(
      target_spacing=config.data.preprocess.target_spacing,
      mask_threshold=threshold if threshold >= 0 else None,
      modalities=tuple(config.data.modalities))
  out = (cache_root(config) / "preprocessed" /
         f"{cohort.name}-{_digest(repr((str(cohort), params)))}")
  with _locked(out.with_suffix(".lock")):
    log.info("preprocessing %s into %s", cohort, out)
    # One worker per usable CPU (the pipeline's default); it logs how many.
    pipeline.preprocess_cohort(cohort, out, params)
  return out


def template_spacing(config: ml_collections.ConfigDict) -> float:
  """Voxel size (mm) of the template grid the config's volumes are on.

  The synthetic cohort is generated on the template grid at its resolution,
  a raw cohort is preprocessed to data.preprocess.target_spacing, and a
  pipeline output records its own spacing. Any other cohort is taken to be
  in template space at data.preprocess.target_spacing.
  """
  # Imported here: SimpleITK and the pipeline are only needed for raw data.
  from preprocessing import pipeline  # pylint: disable=g-import-not-at-top
  data = config.data
  # Runs older than the preprocessing option have no data.preprocess.
  preprocess = data.get("preprocess")
  if data.cohort_dir:
    cohort = Path(data.cohort_dir).expanduser()
    if pipeline.is_preprocessed(cohort):
      return pipeline.output_params(cohort).target_spacing
  elif not (preprocess and preprocess.enabled):
    return float(data.synthetic.resolution_mm)
  if preprocess is None:
    raise InputError(f"{data.cohort_dir}: the run's config has no "
                     "data.preprocess.target_spacing, so the template spacing "
                     "of its cohort is unknown")
  return float(preprocess.target_spacing)


def cohort_fingerprint(cohort_dir: Path) -> str:
  """Hash of every file's relative path, size and modification time."""
  entries = []
  for path in sorted(cohort_dir.rglob("*")):
    if path.is_file():
      stat = path.stat()
      entries.append(f"{path.relative_to(cohort_dir)}:{stat.st_size}:"
                     f"{stat.st_mtime_ns}")
  return _digest("\n".join(entries))


def builder_config(config: ml_collections.ConfigDict
                   ) -> tfds_builder.PVLCohortConfig:
  """The TFDS builder config; its name encodes every field it depends on."""
  data = config.data
  threshold = data.mask_threshold if data.mask_threshold >= 0 else None
  name = (f"folds{data.num_folds}-{'-'.join(data.modalities)}"
          + ("" if threshold is None else f"-thr{threshold:g}"))
  return tfds_builder.PVLCohortConfig(
      name=name, num_folds=data.num_folds, modalities=tuple(data.modalities),
      mask_threshold=threshold)


def prepare(config: ml_collections.ConfigDict) -> tfds_builder.PVLCohort:
  """Returns the prepared TFDS builder for the config's cohort.

  Args:
    config: the training config.

  Raises:
    InputError: if a configured cohort directory does not exist.
  """
  if config.data.cohort_dir:
    cohort = Path(config.data.cohort_dir).expanduser().resolve()
    if not cohort.is_dir():
      raise InputError(f"{cohort}: config.data.cohort_dir does not exist")
  else:
    cohort = synthetic_cohort(config)
  if config.data.preprocess.enabled:
    cohort = preprocessed_cohort(config, cohort)
  data_dir = (cache_root(config) / "tfds" /
              f"{cohort.name}-{cohort_fingerprint(cohort)}")
  with _locked(data_dir.with_suffix(".lock")):
    return tfds_builder.build(cohort, data_dir, builder_config(config))


def split_sources(builder: tfds_builder.PVLCohort,
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Random-access data sources for train/validation/test of the fold."""
  splits = tfds_builder.fold_splits(config.data.fold, config.data.num_folds)
  return {name: builder.as_data_source(split)
          for name, split in splits.items()}
