"""TFDS builder for a PVL cohort: sharded array_record records, fold splits.

The builder reads a BIDS cohort (`bids.load_cohort`) from the TFDS *manual
dir*, takes each scan's brain mask from the cohort or computes it
(`skull_strip_rules`), z-scores each modality inside the brain mask, crops to
the brain's bounding box, and writes one record per subject. Lesion masks are
stored as `lesion_labels` values: 0, 1, and `IGNORE` for voxels of the
cohort's ignore label. Unlabelled subjects have hand_function -1.

Subjects are assigned to `num_folds` splits `fold0`, `fold1`, ... and, when
participants.tsv predefines a test set, a split `test` (`folds.assign`, whose
rule is kept in the dataset's metadata as `fold_rule`). Which of them train,
validate and test is `pvl_jax.data.splits`'; TFDS split arithmetic
("fold0+fold2") joins them without copying data. No TensorFlow is needed:
build with `file_format="array_record"`, read with `tfds.data_source` /
`builder.as_data_source`.
"""

import contextlib
import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Iterator

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds

from preprocessing import bids
from preprocessing import folds as folds_lib
from preprocessing import lesion_labels
from preprocessing import normalize
from preprocessing import participants
from preprocessing import skull_strip_rules
from preprocessing import template_files
from preprocessing.io import nifti
from preprocessing.io.errors import InputError

# The hand_function of a subject without a label.
UNLABELLED = -1
# The metadata key of the rule the folds were made by.
FOLD_RULE = "fold_rule"


@dataclasses.dataclass
class PVLCohortConfig(tfds.core.BuilderConfig):
  """Builder config: folds, inputs, labels and masks.

  Attributes:
    num_folds: number of fold splits written.
    modalities: BIDS suffixes of the input channels, in channel order.
    mask_threshold: binarise lesion masks with mask >= threshold (None means
      masks must already be binary).
    ignore_label: lesion-mask value stored as `lesion_labels.IGNORE`; None:
      none.
    label_column: the participants.tsv (or phenotype) column of the label.
    phenotype: a table the labels come from instead; "" for none.
    session, run, bids_filter: which scans are used (`bids.Selection`).
    brain_mask: where brain masks come from (`skull_strip_rules.RULES`).
    template, template_mask: the user's template for the `skull_strip`
      brain-mask rule; "" for MNI152.
    group_column: "site": folds grouped by site (`folds.assign`).
  """
  num_folds: int = 5
  modalities: tuple[str, ...] = ("FLAIR",)
  mask_threshold: float | None = None
  ignore_label: int | None = None
  label_column: str = "hand_function"
  phenotype: str = ""
  session: str = "first"
  run: str = "last"
  bids_filter: str = ""
  brain_mask: str = "auto"
  template: str = ""
  template_mask: str = ""
  group_column: str = ""

  def selection(self) -> bids.Selection:
    return bids.Selection(self.session, self.run, self.bids_filter)


class _DropCustomConfigNotice(logging.Filter):
  """Hides TFDS's warning that a builder config is not predefined.

  Every config here is built at run time from the training config (folds,
  modalities, threshold), which is the intended use, so the warning TFDS
  logs for each builder (twice per run) says nothing a user can act on.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(
        "Using custom data configuration")


logging.getLogger("absl").addFilter(_DropCustomConfigNotice())
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _tfds_progress_bars_off() -> Iterator[None]:
  """TFDS's progress bars off within the block (they are global in TFDS)."""
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    tfds.enable_progress_bar()

class PVLCohort(tfds.core.GeneratorBasedBuilder):
  """A PVL cohort: images, lesion masks, brain masks and hand function."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.0.0": "Template-space cohort, z-scored, brain-cropped.",
      "1.1.0": "Z-scoring no longer clips intensities (kept lesion contrast).",
      "1.2.0": "Unlabelled subjects (-1), ignored voxels (255), computed "
               "brain masks and their source, a predefined test split.",
      "1.3.0": "A site column no longer groups the folds unless asked "
               "(group_column); it balances them across sites.",
  }
  BUILDER_CONFIGS = [PVLCohortConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Pass the BIDS cohort directory as the manual dir: "
      "download_and_prepare(download_config=tfds.download.DownloadConfig("
      "manual_dir=COHORT_DIR), file_format='array_record').")

  def _info(self) -> tfds.core.DatasetInfo:
    channels = len(self.builder_config.modalities)
    volume = (None, None, None)
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=volume + (channels,), dtype=np.float32, encoding="zlib"),
            "lesion_mask": tfds.features.Tensor(
                shape=volume, dtype=np.uint8, encoding="zlib"),
            "brain_mask": tfds.features.Tensor(
                shape=volume, dtype=np.uint8, encoding="zlib"),
            # 0 good, 1 bad, UNLABELLED.
            "hand_function": tfds.features.Scalar(dtype=np.int32),
            "subject_id": tfds.features.Text(),
            "brain_mask_source": tfds.features.Text(),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
            "crop_start": tfds.features.Tensor(shape=(3,), dtype=np.int32),
            "original_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    cohort = Path(dl_manager.manual_dir)
    subjects = bids.load_cohort(
        cohort, modalities=config.modalities, label_column=config.label_column,
        selection=config.selection(), phenotype=config.phenotype or None,
        require_label_column=False)
    assignment = folds_lib.assign(subjects, config.num_folds,
                                  config.label_column,
                                  cohort / participants.PARTICIPANTS_FILE,
                                  config.group_column)
    self.info.metadata[FOLD_RULE] = assignment.rule
    without = sum(s.brain_mask_path is None for s in subjects)
    if without and config.brain_mask != "files":
      log.info("%d of %d subjects have no brain mask: computing them "
               "(data.brain_mask=%s)", without, len(subjects),
               config.brain_mask)
    split_of = {pid: fold if fold == folds_lib.TEST else f"fold{fold}"
                for pid, fold in assignment.folds.items()}
    return {
        name: self._generate_examples(
            [s for s in subjects if split_of[s.participant_id] == name])
        for name in sorted(set(split_of.values()))
    }

  def _generate_examples(self, subjects: list[bids.Subject]):
    for subject in subjects:
      yield subject.participant_id, encode_subject(subject,
                                                   self.builder_config)


def encode_subject(subject: bids.Subject, config: PVLCohortConfig
                   ) -> dict[str, object]:
  """Loads, normalises and crops one subject into a TFDS example dict."""
  modalities = config.modalities
  reference_path = subject.image_paths[modalities[0]]
  reference, affine = nifti.load_volume(reference_path)
  channels = [reference]
  for modality in modalities[1:]:
    path = subject.image_paths[modality]
    image, other_affine = nifti.load_volume(path)
    nifti.check_same_geometry(reference_path, reference.shape, affine,
                              path, image.shape, other_affine)
    channels.append(image)
  lesion = lesion_labels.load_lesion_labels(
      subject.lesion_mask_path, reference_shape=reference.shape,
      reference_affine=affine, reference_path=reference_path,
      threshold=config.mask_threshold, ignore_label=config.ignore_label)
  brain, source = skull_strip_rules.brain_mask(
      config.brain_mask, reference_path, reference, affine,
      subject.brain_mask_path,
      # Checked when the config was made (`template_files.check_files`).
      template_files.TemplateFiles(config.template, config.template_mask)
      if config.template else None)
  start, stop = normalize.bounding_box(
      brain, margin=normalize.BRAIN_CROP_MARGIN)
  crop = tuple(slice(a, b) for a, b in zip(start, stop))
  image = np.stack([normalize.zscore_in_mask(c, brain)[crop]
                    for c in channels], axis=-1)
  return {
      "image": image,
      "lesion_mask": lesion[crop],
      "brain_mask": brain[crop].astype(np.uint8),
      "hand_function": (UNLABELLED if subject.hand_function is None
                        else int(subject.hand_function)),
      "subject_id": subject.participant_id,
      "brain_mask_source": source,
      "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32),
      "affine": normalize.crop_affine(affine, start),
      "crop_start": np.asarray(start, np.int32),
      "original_shape": np.asarray(reference.shape, np.int32),
  }


def build(cohort_dir: str | Path, data_dir: str | Path,
          config: PVLCohortConfig | None = None) -> PVLCohort:
  """Builds (or reuses) the array_record dataset for `cohort_dir`.

  Args:
    cohort_dir: BIDS cohort (the manual dir).
    data_dir: TFDS data dir where the records go.
    config: builder config; the default config when None.

  Returns:
    The prepared builder (use `builder.as_data_source(split)`).

  Raises:
    InputError: the cohort is missing or invalid (from `bids.load_cohort`),
      or an already prepared dataset in `data_dir` is damaged.
  """
  if not Path(cohort_dir).is_dir():
    raise InputError(f"{cohort_dir}: cohort directory does not exist")
  config = config or "default"
  name = config if isinstance(config, str) else config.name
  _check_dataset_info(
      Path(data_dir) / PVLCohort.name / name / str(PVLCohort.VERSION), data_dir)
  builder = PVLCohort(data_dir=str(data_dir), config=config)
  if not (Path(builder.data_dir) / "dataset_info.json").exists():
    log.info("building the TFDS records of %s in %s", cohort_dir,
             builder.data_dir)
  # TFDS's own progress bars (a dozen per build) and its "Downloading and
  # preparing" banner on stdout are library internals here.
  with contextlib.redirect_stdout(io.StringIO()), _tfds_progress_bars_off():
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(cohort_dir)))
  for split in builder.info.splits.values():
    for path, num_records in zip(split.filepaths, split.shard_lengths):
      _check_shard(Path(path), num_records, data_dir)
  return builder


def _rebuild_hint(data_dir: str | Path) -> str:
  return (f"delete {data_dir} (cached records of the cohort) and rerun to "
          "rebuild it")


def _check_dataset_info(version_dir: Path, data_dir: str | Path) -> None:
  """Rejects a prepared dataset whose dataset_info.json is missing or corrupt.

  TFDS takes an existing version directory for a finished build; without a
  readable dataset_info.json it fails later with unrelated errors.
  """
  if not version_dir.is_dir():
    return  # not built yet
  info = version_dir / "dataset_info.json"
  try:
    json.loads(info.read_text())
  except (OSError, ValueError) as err:
    problem = ("missing" if isinstance(err, FileNotFoundError)
               else f"unreadable ({err})")
    raise InputError(f"{info}: {problem} in a prepared TFDS dataset; "
                     f"{_rebuild_hint(data_dir)}") from None


def _check_shard(path: Path, num_records: int, data_dir: str | Path) -> None:
  """Checks a record file exists, has its records and its ends decode.

  Reading the first and last record verifies their chunk checksums and the
  file's index (truncation breaks the index) without a pass over all data.
  """
  if not path.is_file():
    raise InputError(f"{path}: shard of the prepared TFDS dataset is missing;"
                     f" {_rebuild_hint(data_dir)}")
  try:
    reader = array_record_module.ArrayRecordReader(str(path))
    try:
      found = reader.num_records() if reader.ok() else 0
      if found == num_records and num_records:
        reader.read(sorted({0, num_records - 1}))
    finally:
      reader.close()  # raises the reader's error if it failed to open
  except RuntimeError as err:  # array_record reports corruption this way
    raise InputError(f"{path}: corrupt or truncated shard of the prepared "
                     f"TFDS dataset ({str(err) or 'unreadable'}); "
                     f"{_rebuild_hint(data_dir)}") from None
  if found != num_records:
    raise InputError(
        f"{path}: corrupt or truncated shard of the prepared TFDS dataset "
        f"({found} readable records, dataset_info.json lists {num_records}); "
        f"{_rebuild_hint(data_dir)}")
