"""TFDS builder for a PVL cohort: sharded array_record records, fold splits.

The builder reads a BIDS cohort whose scans already share one space (the
template-space synthetic cohort, or the output of `preprocessing.run`) from
the TFDS *manual dir*, z-scores each modality inside the brain mask, crops to
the brain's bounding box, and writes one record per subject.

Subjects are assigned to `num_folds` splits `fold0`, `fold1`, ... stratified by
hand function and deterministic (a fixed-seed permutation of the sorted ids).
`fold_splits` turns a fold index into train/validation/test split strings
(test = fold k, validation = fold k+1, train = the rest), which TFDS split
arithmetic ("fold0+fold2") resolves without copying data. No TensorFlow is
needed: build with `file_format="array_record"`, read with
`tfds.data_source` / `builder.as_data_source`.
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
from preprocessing.io import nifti
from preprocessing import normalize
from preprocessing.io.errors import InputError

# Seed of the permutation that assigns subjects to folds; fixed so that the
# split of a cohort never changes between builds.
FOLD_SEED = 20261124


@dataclasses.dataclass
class PVLCohortConfig(tfds.core.BuilderConfig):
  """Builder config: how many folds, which modalities, mask binarisation.

  Attributes:
    num_folds: number of stratified fold splits written.
    modalities: BIDS suffixes of the input channels, in channel order.
    mask_threshold: binarise lesion masks with mask >= threshold (None means
      masks must already be binary).
  """
  num_folds: int = 5
  modalities: tuple[str, ...] = ("FLAIR",)
  mask_threshold: float | None = None


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

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Template-space cohort, z-scored, brain-cropped.",
      "1.1.0": "Z-scoring no longer clips intensities (kept lesion contrast).",
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
            "hand_function": tfds.features.ClassLabel(names=["good", "bad"]),
            "subject_id": tfds.features.Text(),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
            "crop_start": tfds.features.Tensor(shape=(3,), dtype=np.int32),
            "original_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    subjects = bids.load_cohort(dl_manager.manual_dir,
                                modalities=config.modalities)
    folds = assign_folds([s.participant_id for s in subjects],
                         [s.hand_function for s in subjects], config.num_folds)
    return {
        f"fold{k}": self._generate_examples(
            [s for s, f in zip(subjects, folds) if f == k])
        for k in range(config.num_folds)
    }

  def _generate_examples(self, subjects: list[bids.Subject]):
    for subject in subjects:
      yield subject.participant_id, encode_subject(
          subject, self.builder_config.modalities,
          self.builder_config.mask_threshold)


def encode_subject(subject: bids.Subject, modalities: tuple[str, ...],
                   mask_threshold: float | None) -> dict[str, object]:
  """Loads, normalises and crops one subject into a TFDS example dict."""
  reference_path = subject.image_paths[modalities[0]]
  reference, affine = nifti.load_volume(reference_path)
  channels = [reference]
  for modality in modalities[1:]:
    path = subject.image_paths[modality]
    image, other_affine = nifti.load_volume(path)
    nifti.check_same_geometry(reference_path, reference.shape, affine,
                                 path, image.shape, other_affine)
    channels.append(image)
  lesion = nifti.load_mask(
      subject.lesion_mask_path, reference_shape=reference.shape,
      reference_affine=affine, reference_path=reference_path,
      threshold=mask_threshold)
  if subject.brain_mask_path is not None:
    brain = nifti.load_mask(
        subject.brain_mask_path, reference_shape=reference.shape,
        reference_affine=affine, reference_path=reference_path)
  else:
    # Skull-stripped inputs: the brain is everything above background.
    brain = reference > 0
  start, stop = normalize.bounding_box(
      brain, margin=normalize.BRAIN_CROP_MARGIN)
  crop = tuple(slice(a, b) for a, b in zip(start, stop))
  image = np.stack([normalize.zscore_in_mask(c, brain)[crop]
                    for c in channels], axis=-1)
  return {
      "image": image,
      "lesion_mask": lesion[crop].astype(np.uint8),
      "brain_mask": brain[crop].astype(np.uint8),
      "hand_function": int(subject.hand_function),
      "subject_id": subject.participant_id,
      "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32),
      "affine": normalize.crop_affine(affine, start),
      "crop_start": np.asarray(start, np.int32),
      "original_shape": np.asarray(reference.shape, np.int32),
  }


def assign_folds(subject_ids: list[str], labels: list[int], num_folds: int
                 ) -> list[int]:
  """Stratified, deterministic fold index per subject.

  Within each class, subjects (sorted by id, then permuted with a fixed seed)
  are dealt round-robin to folds, so each fold gets a near-equal share of
  every class, and the class dealing continues where the previous class
  stopped so fold sizes differ by at most one.

  Args:
    subject_ids: unique ids.
    labels: class per subject.
    num_folds: number of folds (>= 2).

  Returns:
    Fold index per subject, aligned with `subject_ids`.
  """
  if num_folds < 2:
    raise ValueError(f"num_folds must be >= 2, got {num_folds}")
  if len(subject_ids) < num_folds:
    raise ValueError(f"{len(subject_ids)} subjects cannot fill {num_folds} "
                     "folds")
  rng = np.random.default_rng(FOLD_SEED)
  folds = [0] * len(subject_ids)
  next_fold = 0
  for label in sorted(set(labels)):
    members = sorted((i for i, l in enumerate(labels) if l == label),
                     key=lambda i: subject_ids[i])
    for i in rng.permutation(members):
      folds[i] = next_fold
      next_fold = (next_fold + 1) % num_folds
  return folds


def fold_splits(fold: int, num_folds: int) -> dict[str, str]:
  """TFDS split strings for one cross-validation fold.

  Args:
    fold: index of the test fold.
    num_folds: total folds written by the builder.

  Returns:
    {"train": "foldA+foldB+...", "validation": "foldV", "test": "foldT"}.
  """
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
  val = (fold + 1) % num_folds
  train = [k for k in range(num_folds) if k not in (fold, val)]
  return {"train": "+".join(f"fold{k}" for k in train),
          "validation": f"fold{val}", "test": f"fold{fold}"}


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
