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

The cohort's own options (`data.label_column`, `data.phenotype_file`,
`data.session`, `data.run`, `data.bids_filter`, `data.ignore_label`,
`data.brain_mask`, `data.preprocess.template`) go into the builder config,
whose name encodes them, so each combination has its own records.
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

from preprocessing import participants
from preprocessing import pipeline_output
from preprocessing import template_files as template_files_lib
from preprocessing import template_geometry
from preprocessing import tfds_builder
from preprocessing.io import workers
from preprocessing.io.errors import InputError
from pvl_jax.data import splits
from pvl_jax.data import template_grid

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


def _as_tuples(value: Any) -> Any:
  """Lists, nested too, as the tuples `CohortParams` holds."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuples(v) for v in value)
  return value


def synthetic_cohort(config: ml_collections.ConfigDict,
                     space: str = "template") -> Path:
  """Generates (once) and returns the embedded synthetic cohort directory.

  Args:
    config: the config whose `data.synthetic` describes the cohort.
    space: "template": scans on the template grid, ready for training;
      "raw": native scans with skull, pose and the scanner's own grids, for
      the preprocessing pipeline and `pvl_jax.predict`.
  """
  # Imported here: the generator pulls in nilearn (seconds to import), which
  # a run on a user's cohort never needs.
  from preprocessing.synthetic import cohort as synthetic_cohort_lib  # pylint: disable=g-import-not-at-top
  from preprocessing.synthetic import params as synthetic_params  # pylint: disable=g-import-not-at-top
  spec = config.data.synthetic
  # A run's config.json gives tuples back as lists; older ones have none.
  overrides = {name: _as_tuples(value)
               for name, value in (spec.get("overrides") or {}).items()}
  try:
    params = synthetic_params.CohortParams(resolution_mm=spec.resolution_mm,
                                           **overrides)
  except TypeError as e:
    fields = [f.name for f in dataclasses.fields(synthetic_params.CohortParams)]
    raise InputError(f"config.data.synthetic.overrides: {e}; the fields are "
                     f"{fields}") from None
  identity = (synthetic_cohort_lib.GENERATOR_VERSION, spec.num_subjects,
              spec.seed, synthetic_params.identity(params))
  # Template-space cohorts keep the key they always had.
  key = _digest(repr(identity if space == "template" else (*identity, space)))
  out = (cache_root(config) / "cohorts" /
         f"synthetic{'' if space == 'template' else '-' + space}"
         f"-n{spec.num_subjects}-seed{spec.seed}-{spec.resolution_mm}mm-{key}")
  with _locked(out.with_suffix(".lock")):
    if not out.exists():
      num_workers = workers.worker_count()
      log.info("generating the synthetic cohort (%d subjects, %d worker "
               "processes) in %s", spec.num_subjects, num_workers, out)
      synthetic_cohort_lib.generate_cohort(
          out, spec.num_subjects, spec.seed, params, num_workers=num_workers,
          space=space)
  return out


def preprocessed_cohort(config: ml_collections.ConfigDict, cohort: Path
                        ) -> Path:
  """Runs the preprocessing pipeline on a raw cohort (cached, see above)."""
  # Imported here: SimpleITK and the pipeline are only needed for raw data.
  from preprocessing import pipeline  # pylint: disable=g-import-not-at-top
  if pipeline_output.is_preprocessed(cohort):
    return cohort
  data = config.data
  files = template_files(config)
  params = pipeline_output.Params(
      target_spacing=data.preprocess.target_spacing,
      mask_threshold=_mask_threshold(data), modalities=tuple(data.modalities),
      ignore_label=_ignore_label(data),
      template=files.image if files else "",
      template_mask=files.mask if files else "",
      **{k: _option(data, k) for k in ("session", "run", "bids_filter")})
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
  data = config.data
  # Runs older than the preprocessing option have no data.preprocess.
  preprocess = data.get("preprocess")
  if data.cohort_dir:
    cohort = Path(data.cohort_dir).expanduser()
    if pipeline_output.is_preprocessed(cohort):
      return pipeline_output.output_params(cohort).target_spacing
  elif not (preprocess and preprocess.enabled):
    return float(data.synthetic.resolution_mm)
  if preprocess is None:
    raise InputError(f"{data.cohort_dir}: the run's config has no "
                     "data.preprocess.target_spacing, so the template spacing "
                     "of its cohort is unknown")
  return float(preprocess.target_spacing)


def template_files(config: ml_collections.ConfigDict
                   ) -> template_files_lib.TemplateFiles | None:
  """The template the config's volumes are registered to; None: MNI152.

  The config's `data.preprocess.template` (checked), else the template of a
  cohort that is a pipeline output.

  Raises:
    InputError: naming the config key: an image without a mask or the
      reverse, or a mask on another grid (`template.check_files`).
  """
  data = config.data
  preprocess = data.get("preprocess") or {}
  key = "config.data.preprocess.template"
  files = template_files_lib.check_files(preprocess.get("template", ""),
                                   preprocess.get("template_mask", ""),
                                   key, f"{key}_mask")
  if files is None and data.cohort_dir:
    cohort = Path(data.cohort_dir).expanduser()
    if pipeline_output.is_preprocessed(cohort):
      return pipeline_output.output_template(cohort)
  return files


def pipeline_template_grid(config: ml_collections.ConfigDict
                           ) -> template_grid.TemplateGrid | None:
  """The template grid a preprocessing output's scans are crops of.

  The cohort is (`data.cohort_dir`) or becomes (`data.preprocess.enabled`)
  an output of `preprocessing.pipeline`, which saves each subject on its
  brain's crop of the template grid at its spacing (`template_spacing`,
  `template_files`); `pvl_jax.predict` brings new scans to the same grid.

  Returns:
    That grid; None for any other cohort, whose records alone say where
    they lie (`template_blocks.template_grid`).
  """
  data = config.data
  preprocess = data.get("preprocess")
  preprocessed = bool(preprocess and preprocess.enabled) or bool(
      data.cohort_dir and pipeline_output.is_preprocessed(
          Path(data.cohort_dir).expanduser()))
  if not preprocessed:
    return None
  return template_grid.TemplateGrid.of(*template_geometry.grid(
      template_spacing(config), template_files(config)))


def cohort_template_grid(cohort_dir: str | os.PathLike
                         ) -> template_grid.TemplateGrid | None:
  """The template grid of a cohort read as it is, without a training run.

  `pipeline_template_grid` of a config that names only the cohort, so the
  grid a located run on the cohort places its records in: for a
  preprocessing output, the template's own grid at the spacing its
  dataset_description.json names; None for any other cohort.
  """
  return pipeline_template_grid(ml_collections.ConfigDict(
      {"data": {"cohort_dir": str(cohort_dir)}}))


def cohort_fingerprint(cohort_dir: Path) -> str:
  """Hash of every file's relative path, size and modification time."""
  entries = []
  for path in sorted(cohort_dir.rglob("*")):
    if path.is_file():
      stat = path.stat()
      entries.append(f"{path.relative_to(cohort_dir)}:{stat.st_size}:"
                     f"{stat.st_mtime_ns}")
  return _digest("\n".join(entries))


def _file_identity(path: str) -> str:
  """A file outside the cohort, identified as the fingerprint does."""
  if not path:
    return ""
  stat = Path(path).stat()
  return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


# The cohort options of configs/joint.py, for configs of runs older than them
# (e.g. a finished run that `cross_evaluate` reads).
_OPTION_DEFAULTS = {"label_column": "hand_function", "phenotype_file": "",
                    "session": "first", "run": "last", "bids_filter": "",
                    "ignore_label": -1, "brain_mask": "auto",
                    "group_column": ""}


def _option(data: ml_collections.ConfigDict, key: str) -> Any:
  return data.get(key, _OPTION_DEFAULTS[key])


def _mask_threshold(data: ml_collections.ConfigDict) -> float | None:
  return data.mask_threshold if data.mask_threshold >= 0 else None


def _ignore_label(data: ml_collections.ConfigDict) -> int | None:
  label = _option(data, "ignore_label")
  return label if label >= 0 else None


def _phenotype(config: ml_collections.ConfigDict) -> str:
  """data.phenotype_file as an absolute path (relative: to the cohort)."""
  data = config.data
  if not _option(data, "phenotype_file"):
    return ""
  path = Path(data.phenotype_file).expanduser()
  if not path.is_absolute():
    path = Path(data.cohort_dir).expanduser() / path
  if not path.is_file():
    raise InputError(f"{path}: config.data.phenotype_file not found")
  return str(path.resolve())


def cohort_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """How the config reads its cohort's labels, scans and lesion masks.

  Returns:
    label_column, phenotype (absolute path or ""), session, run, bids_filter,
    ignore_label and mask_threshold (None when unset).
  """
  data = config.data
  return dict(label_column=_option(data, "label_column"),
              phenotype=_phenotype(config),
              **{k: _option(data, k) for k in ("session", "run",
                                               "bids_filter")},
              ignore_label=_ignore_label(data),
              mask_threshold=_mask_threshold(data))


def builder_config(config: ml_collections.ConfigDict,
                   preprocessed: bool = False
                   ) -> tfds_builder.PVLCohortConfig:
  """The TFDS builder config; its name encodes every field it depends on.

  Args:
    config: the training config.
    preprocessed: the cohort is a pipeline output: one scan per subject,
      already chosen, so the session, run and entity rules are not applied.
  """
  data = config.data
  files = template_files(config)
  options = cohort_options(config)
  threshold = options.pop("mask_threshold")
  if preprocessed:
    for key in ("session", "run", "bids_filter"):
      del options[key]
  options.update(brain_mask=_option(data, "brain_mask"),
                 group_column=_option(data, "group_column"),
                 template=files.image if files else "",
                 template_mask=files.mask if files else "")
  defaults = tfds_builder.PVLCohortConfig(name="defaults")
  changed = {k: v for k, v in options.items() if getattr(defaults, k) != v}
  # Options off their defaults enter the name as a hash (with the identity
  # of the files outside the cohort they name).
  key = repr(sorted(changed.items())) + "".join(
      _file_identity(changed.get(k, "")) for k in
      ("phenotype", "template", "template_mask"))
  name = (f"folds{data.num_folds}-{'-'.join(data.modalities)}"
          + ("" if threshold is None else f"-thr{threshold:g}")
          + (f"-{_digest(key)}" if changed else ""))
  return tfds_builder.PVLCohortConfig(
      name=name, num_folds=data.num_folds, modalities=tuple(data.modalities),
      mask_threshold=threshold, **options)


def _check_labels(config: ml_collections.ConfigDict, cohort: Path) -> None:
  """r > 0 needs the label column (an all-n/a column trains with r = 0)."""
  if config.r <= 0:
    return
  table = (Path(_phenotype(config)) if _phenotype(config)
           else cohort / participants.PARTICIPANTS_FILE)
  column = _option(config.data, "label_column")
  if not participants.has_column(table, column):
    raise InputError(
        f"{table}: no '{column}' column (config.data.label_column), which "
        f"r = {config.r:g} needs; set config.r=0 to train segmentation only")


def prepare(config: ml_collections.ConfigDict) -> tfds_builder.PVLCohort:
  """Returns the prepared TFDS builder for the config's cohort.

  Args:
    config: the training config.

  Raises:
    InputError: the cohort directory does not exist, the label column is
      missing while r > 0, or the cohort is invalid.
  """
  if config.data.cohort_dir:
    cohort = Path(config.data.cohort_dir).expanduser().resolve()
    if not cohort.is_dir():
      raise InputError(f"{cohort}: config.data.cohort_dir does not exist")
    _check_labels(config, cohort)
  else:
    cohort = synthetic_cohort(config)
  if config.data.preprocess.enabled:
    cohort = preprocessed_cohort(config, cohort)
  build_config = builder_config(config,
                                pipeline_output.is_preprocessed(cohort))
  data_dir = (cache_root(config) / "tfds" /
              f"{cohort.name}-{cohort_fingerprint(cohort)}")
  with _locked(data_dir.with_suffix(".lock")):
    return tfds_builder.build(cohort, data_dir, build_config)


def split_sources(builder: tfds_builder.PVLCohort,
                  config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Random-access data sources for train/validation/test of the fold."""
  names = splits.fold_splits(config.data.fold, config.data.num_folds,
                             splits.has_predefined_test(builder.info))
  return {name: builder.as_data_source(split)
          for name, split in names.items()}
