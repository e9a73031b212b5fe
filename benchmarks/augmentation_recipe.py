r"""What nnU-Net's augmentation buys with scarce data: old vs new, 3 seeds.

Usage (from the repository root; about 8 CPU-minutes per run):
  nohup nice python -m benchmarks.augmentation_recipe --out=DIR \
      > DIR.log 2>&1 &

The demo recipe (`configs/joint.py:demo`: its 3-stage U-Net on 32^3
patches, 1200 steps) trained on the first `--train_subjects` subjects of its
training split, with `data.augment.recipe` "basic" (pvl_jax's host-side
flips, intensity scale/shift and noise) and "nnunet" (nnU-Net v2's default
transforms, in the train step), `--seeds` training seeds each. Every model
then segments (a) the usual test split and (b) the test split of a shifted
cohort: the same generator and seed with fainter lesions, more noise and
thicker slices (`SHIFT`, through `data.synthetic.overrides`). Dice is the
per-subject mean without postprocessing, as in
`pvl_jax.evaluation.cross_evaluate`; the table gives mean ± sample std over
the seeds, each seed's value and the mean training steps/s; a second table
what the models do: lesion recall and precision on both cohorts, the last
training window's segmentation loss and the unaugmented validation patches'
Dice. `--num_steps` trains longer (another --out).

Resumable: each run trains as `python -m pvl_jax.main` does (a finished run,
one with results.json, is skipped; a killed one resumes from its checkpoint)
and each run's Dice is kept in DIR/eval/<run>.json. Writes
DIR/augmentation_recipe.md and .csv.
"""

from collections.abc import Sequence
import json
from pathlib import Path
import subprocess
import sys

from absl import app
from absl import flags
import ml_collections
import numpy as np

from configs import joint
from preprocessing.io import console
from preprocessing.io import tables
from preprocessing.io.atomic import atomic_write_text
from pvl_jax.data import dataset
from pvl_jax.evaluation import evaluate_run
from pvl_jax.evaluation import summary
from pvl_jax.inference import trained_run

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Training seeds per recipe.")
_TRAIN_SUBJECTS = flags.DEFINE_integer("train_subjects", 12,
                                       "data.max_train_subjects.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "Training steps; 0: the "
                                  "demo's (1200).")
_CACHE = flags.DEFINE_string("cache_dir", "", "data.cache_dir (default: the "
                             "usual cache).")

RECIPES = ("basic", "nnunet")
# The second table's columns (`run_metrics`' keys).
DETAILS = ("usual lesion recall", "usual lesion precision",
           "shifted lesion recall", "shifted lesion precision",
           "train seg loss", "val patch Dice")
# The shifted cohort's generator fields (preprocessing/synthetic/params.py;
# defaults 0.85-1.15, 0.04-0.08 and 0.5 voxels): lesions fainter, closer to
# grey matter and the periventricular caps; twice the Rician noise; the
# partial-volume blur three times wider along axis 2, as thick axial slices.
SHIFT = {"lesion_intensity": (0.72, 0.95), "noise_level": (0.08, 0.14),
         "partial_volume_sigma_vox": (0.5, 0.5, 1.5)}


def run_overrides(recipe: str, seed: int) -> dict[str, object]:
  """The demo config's keys a run changes."""
  overrides = {"seed": seed, "data.augment.recipe": recipe,
               "data.max_train_subjects": _TRAIN_SUBJECTS.value}
  if _NUM_STEPS.value:
    overrides["num_steps"] = _NUM_STEPS.value
  if _CACHE.value:
    overrides["data.cache_dir"] = _CACHE.value
  return overrides


def test_cohort_config(shifted: bool) -> ml_collections.ConfigDict:
  """The demo config whose test split is evaluated (usual or shifted)."""
  config = joint.get_config("demo")
  config.data.cache_dir = _CACHE.value
  if shifted:
    config.data.synthetic.overrides = SHIFT
  return config


def train_run(workdir: Path, recipe: str, seed: int) -> None:
  """Trains and evaluates one run as `pvl_jax.main` (skips a finished one)."""
  if (workdir / "results.json").exists():
    return
  command = [sys.executable, "-m", "pvl_jax.main",
             "--config=configs/joint.py:demo", f"--workdir={workdir}"]
  command += [f"--config.{key}={value}"
              for key, value in run_overrides(recipe, seed).items()]
  print(f"training {workdir.name}: {' '.join(command)}", flush=True)
  subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])


def run_metrics(workdir: Path, sources: dict[str, object]
                ) -> dict[str, float]:
  """One run's test metrics on each cohort and its training figures.

  Cached in <out>/eval/<run>.json. Keys: `<cohort>` (Dice) and
  `<cohort> lesion recall` / `precision` (means over subjects, without
  postprocessing); `train seg loss` and `val patch Dice` of the last
  logged window; `steps_per_s` (mean after the first window).
  """
  cached = workdir.parent.parent / "eval" / f"{workdir.name}.json"
  if cached.exists():
    return json.loads(cached.read_text())
  run = trained_run.load(workdir)
  result = {}
  for name, source in sources.items():
    metrics = evaluate_run.segmentation_results(evaluate_run.predict_split(
        run.window_fn, source, run.config, f"{workdir.name} on {name}"))
    result[name] = metrics["dice_mean"]
    result[f"{name} lesion recall"] = metrics["lesion_recall_mean"]
    result[f"{name} lesion precision"] = metrics["lesion_precision_mean"]
  history = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [h["train/steps_per_s"] for h in history if "train/steps_per_s" in h]
  result["steps_per_s"] = float(np.mean(rates[1:] or rates))  # after warm-up
  result["train seg loss"] = [h["train/seg_loss"] for h in history
                              if "train/seg_loss" in h][-1]
  result["val patch Dice"] = [h["val/patch_dice"] for h in history
                              if "val/patch_dice" in h][-1]
  cached.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(cached, json.dumps(result, indent=2))
  return result


def _mean_std(runs: list[dict[str, float]], key: str) -> str:
  stats = summary.summarize(r[key] for r in runs)
  return summary.format_mean_std(stats.mean, stats.std)


def table(results: dict[str, list[dict[str, float]]]) -> tuple[str, list]:
  """The markdown tables and the main one's rows; one row per recipe.

  The first table is the comparison (test Dice); the second what the
  models do (lesion recall and precision, the last training window's
  segmentation loss and the unaugmented validation patches' Dice).
  """
  rows, details = [], []
  for recipe, runs in results.items():
    row = {"recipe": recipe, "n": len(runs)}
    for name in ("usual", "shifted"):
      row[f"{name} test Dice"] = _mean_std(runs, name)
      row[f"{name} per seed"] = ", ".join(f"{r[name]:.3f}" for r in runs)
    row["steps/s"] = f"{np.mean([r['steps_per_s'] for r in runs]):.2f}"
    rows.append(row)
    details.append([recipe] + [_mean_std(runs, key) for key in DETAILS])
  markdown = tables.markdown_table(list(rows[0]),
                                   [list(r.values()) for r in rows])
  shifted = {recipe: summary.summarize(r["shifted"] for r in runs)
             for recipe, runs in results.items()}
  if len(shifted) == 2 and all(s.n > 1 for s in shifted.values()):
    old, new = shifted["basic"], shifted["nnunet"]
    spread = max(old.std, new.std)
    markdown += (f"\nshifted cohort, nnunet - basic: {new.mean - old.mean:+.3f}"
                 f" (the larger seed std: {spread:.3f}; "
                 f"{'beyond' if new.mean - old.mean > spread else 'within'} "
                 "the seed spread)\n")
  markdown += "\n" + tables.markdown_table(["recipe", *DETAILS], details)
  return markdown, rows


def main(argv: Sequence[str]) -> None:
  del argv
  console.configure()
  out = Path(_OUT.value).resolve()
  # Both cohorts first: a problem with either shows before hours of training.
  sources = {}
  for name in ("usual", "shifted"):
    config = test_cohort_config(name == "shifted")
    sources[name] = dataset.split_sources(dataset.prepare(config),
                                          config)["test"]
  runs = {recipe: [out / "runs" / f"{recipe}-seed{seed}"
                   for seed in range(_SEEDS.value)] for recipe in RECIPES}
  for seed in range(_SEEDS.value):  # seeds outermost: comparable early
    for recipe in RECIPES:
      train_run(runs[recipe][seed], recipe, seed)
  results = {recipe: [run_metrics(d, sources) for d in dirs]
             for recipe, dirs in runs.items()}
  markdown, rows = table(results)
  steps = _NUM_STEPS.value or joint.get_config("demo").num_steps
  header = (f"demo recipe, {steps} steps, first {_TRAIN_SUBJECTS.value} "
            f"training subjects, {_SEEDS.value} seeds; test metrics without "
            "postprocessing "
            f"(usual test split / shifted cohort {SHIFT})\n\n")
  tables.write_table(out, "augmentation_recipe", rows, header + markdown)


if __name__ == "__main__":
  app.run(main)
