"""Which records train, validate and test, and the run's record of it.

The TFDS dataset holds fold splits `fold0`, `fold1`, ... and, when
participants.tsv predefines a test set, a split `test`
(`preprocessing.tfds_builder`). Without a predefined test set, fold k tests,
fold k+1 validates and the rest train; with one, it tests, fold k validates
and the rest train.

At the start of training each run writes `<workdir>/splits.json`:

  {"rule": "5 folds stratified by hand_function; fold 0 test, fold 1
            validation, the rest train",
   "fold": 0, "num_folds": 5,
   "subjects": {"train": [ids], "validation": [ids], "test": [ids]},
   "labelled": {"train": n, "validation": n, "test": n}}

with participant ids as in participants.tsv, and logs how many subjects of
each split are labelled and where their brain masks came from. A cohort
without any label trains with r = 0.
"""

from collections import Counter
from collections.abc import Mapping
import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from preprocessing import folds as folds_lib
from preprocessing import skull_strip_rules
from preprocessing import tfds_builder
from preprocessing.io.atomic import atomic_write_text
from pvl_jax.data import records

log = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
SPLIT_NAMES = ("train", "validation", "test")


def fold_splits(fold: int, num_folds: int, predefined_test: bool = False
                ) -> dict[str, str]:
  """TFDS split strings for one cross-validation fold.

  Args:
    fold: without a predefined test set the test fold, with one the
      validation fold.
    num_folds: fold splits the builder wrote.
    predefined_test: the dataset has a `test` split.

  Returns:
    {"train": "foldA+foldB+...", "validation": ..., "test": ...}.
  """
  if not 0 <= fold < num_folds:
    raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
  if predefined_test:
    test, val = folds_lib.TEST, f"fold{fold}"
    held = (fold,)
  else:
    test, val = f"fold{fold}", f"fold{(fold + 1) % num_folds}"
    held = (fold, (fold + 1) % num_folds)
  train = [k for k in range(num_folds) if k not in held]
  return {"train": "+".join(f"fold{k}" for k in train), "validation": val,
          "test": test}


def has_predefined_test(info: Any) -> bool:
  """Whether a dataset (its DatasetInfo) holds a predefined test split."""
  return folds_lib.TEST in info.splits


def split_rule(fold_rule: str, fold: int, num_folds: int,
               predefined_test: bool) -> str:
  """The whole rule: how folds were made and which ones this run uses."""
  if predefined_test:
    return f"{fold_rule}; fold {fold} validation, the rest train"
  return (f"{fold_rule}; fold {fold} test, fold {(fold + 1) % num_folds} "
          "validation, the rest train")


def summarize(sources: Mapping[str, Any], config: ml_collections.ConfigDict
              ) -> dict[str, Any]:
  """splits.json's content for the run's data sources (see module doc)."""
  info = sources["train"].dataset_info
  predefined = has_predefined_test(info)
  headers = {name: records.headers(sources[name]) for name in SPLIT_NAMES}
  rule = split_rule(info.metadata[tfds_builder.FOLD_RULE], config.data.fold,
                    config.data.num_folds, predefined)
  limit = config.data.get("max_train_subjects", 0)
  if limit and limit < len(headers["train"]):
    # The input pipeline trains on the split's first N records only.
    headers["train"] = headers["train"][:limit]
    rule += f" (its first {limit} subjects: data.max_train_subjects)"
  return {
      "rule": rule,
      "fold": int(config.data.fold),
      "num_folds": int(config.data.num_folds),
      "subjects": {name: [records.subject_id(h) for h in split]
                   for name, split in headers.items()},
      "labelled": {name: sum(int(h["hand_function"]) != tfds_builder.UNLABELLED
                             for h in split)
                   for name, split in headers.items()},
      "brain_masks": dict(sorted(Counter(
          records.text(h["brain_mask_source"])
          for split in headers.values() for h in split).items())),
  }


def record_splits(config: ml_collections.ConfigDict,
                  sources: Mapping[str, Any], workdir: str | Path
                  ) -> ml_collections.ConfigDict:
  """Writes splits.json, reports the labels, and drops r without labels.

  Args:
    config: the run's config.
    sources: split name -> data source (`dataset.split_sources`).
    workdir: the run directory.

  Returns:
    The config; with r = 0 (and config.json rewritten) when r > 0 and no
    subject of the cohort is labelled.
  """
  summary = summarize(sources, config)
  workdir = Path(workdir)
  atomic_write_text(workdir / SPLITS_FILE, json.dumps(summary, indent=2))
  counts = ", ".join(f"{summary['labelled'][n]} of "
                     f"{len(summary['subjects'][n])} {n}"
                     for n in SPLIT_NAMES)
  label = config.data.label_column
  log.info("split: %s; %s labelled (%s)", summary["rule"], label, counts)
  log.info("brain masks: %s", ", ".join(
      f"{n} from the cohort's files" if source == skull_strip_rules.FROM_FILE
      else f"{n} computed ({source})"
      for source, n in summary["brain_masks"].items()))
  if config.r > 0 and not any(summary["labelled"].values()):
    log.warning("no subject has a %s label: training with r = 0 "
                "(segmentation only) instead of r = %g", label, config.r)
    config = config.copy_and_resolve_references()
    config.r = 0.0
    atomic_write_text(workdir / "config.json",
                      config.to_json_best_effort(indent=2))
  return config
