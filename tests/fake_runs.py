"""Fake training-run workdirs for the baseline and poster tests.

A run as `pvl_jax.handfunction.crossfit` and `cohort_reading` read it:
splits.json, config.json (its `data` fields: the cohort and how it was
read), predictions/<subject>_pred.nii.gz (copies of the cohort's reference
masks) and optionally results.json.
"""

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def rule(fold: int, num_folds: int) -> str:
  """As training writes it: the rule text names the run's own fold."""
  return (f"contiguous {num_folds}-fold, fold {fold} test, fold "
          f"{(fold + 1) % num_folds} validation")


def reference_mask(cohort: Path, subject: str) -> Path:
  return (cohort / "derivatives" / "lesions" / subject / "anat"
          / f"{subject}_label-lesion_mask.nii.gz")


def write_run(workdir: Path, fold: int, num_folds: int,
              splits: Mapping[str, Sequence[str]], cohort: Path,
              predicted: Sequence[str] | None = None,
              results: Mapping[str, Any] | None = None,
              data: Mapping[str, Any] | None = None) -> Path:
  """Writes a run; `predicted` defaults to its test split.

  `data` sets config.json's data fields beyond the cohort (the rest take
  `configs/joint.py`'s defaults when read).
  """
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(
      {"data": {"cohort_dir": str(cohort), "mask_threshold": -1.0,
                **(data or {})}}))
  (workdir / "splits.json").write_text(json.dumps(
      {"rule": rule(fold, num_folds), "fold": fold, "num_folds": num_folds,
       "subjects": {k: list(v) for k, v in splits.items()}}))
  folder = workdir / "predictions"
  folder.mkdir(exist_ok=True)
  for subject in splits["test"] if predicted is None else predicted:
    shutil.copy(reference_mask(cohort, subject),
                folder / f"{subject}_pred.nii.gz")
  if results is not None:
    (workdir / "results.json").write_text(json.dumps(results))
  return workdir


def fold_splits(ids: Sequence[str], fold: int, num_folds: int
                ) -> dict[str, list[str]]:
  """Contiguous folds of `ids`: test fold k, validation k + 1, train rest."""
  chunks = np.array_split(np.asarray(ids), num_folds)
  validation = (fold + 1) % num_folds
  return {"train": [s for k, c in enumerate(chunks)
                    if k not in (fold, validation) for s in c],
          "validation": list(chunks[validation]),
          "test": list(chunks[fold])}


def write_fold_runs(root: Path, cohort: Path, ids: Sequence[str],
                    num_folds: int, folds: Sequence[int] | None = None
                    ) -> list[Path]:
  """One run per fold (default all), named fold<k>, predicting its test."""
  return [write_run(root / f"fold{k}", k, num_folds,
                    fold_splits(ids, k, num_folds), cohort)
          for k in (range(num_folds) if folds is None else folds)]


def move_prediction(subject: str, source: Path, target: Path) -> None:
  """Moves a subject's predicted mask from one run to another."""
  name = f"{subject}_pred.nii.gz"
  shutil.move(source / "predictions" / name, target / "predictions" / name)

