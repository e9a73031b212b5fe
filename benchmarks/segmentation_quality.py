r"""Segmentation quality over training seeds: the benchmark a training change is judged on.

Usage (from the repository root; one demo run is about 5-7 CPU-minutes):
  python -m benchmarks.segmentation_quality --out=DIR --seeds=0,1,2 \
      [--config=configs/joint.py:demo] [--config.KEY=VALUE ...] \
      [--checkout=OTHER_TREE] [--ood_subjects=8]

Each seed trains and evaluates as `python -m pvl_jax.main` does, in
DIR/seed<N>, with `--config`, its `--config.KEY=VALUE` overrides (checked
here first, as training checks them) and `--config.seed=N`. Then every run segments the out-of-distribution
cohort (below) through the path `pvl_jax.predict` takes. One table: mean ±
sample std over the seeds, and each seed's value, of the test split's Dice,
lesion recall, precision and F1 (means over subjects), recall per lesion-size
bin (pooled over subjects, with the lesion count it rests on), HD95 median,
hand-function AUC (r > 0), the postprocessing chosen (minimum lesion volume
and depth),
the training wall time, and the same segmentation figures on the
out-of-distribution cohort beside its resolution limit. Written to
DIR/segmentation_quality.md and .csv.

The out-of-distribution cohort: raw 1 mm scans (skull, head pose, scanner
grids including 0.9 x 0.9 x 3 mm slices, a stronger bias field) from the
synthetic generator with its own seed and other lesions, contrast and noise
(`OOD_OVERRIDES`): smaller and more of them, fainter, in a wider band, with
more partial volume and noise. Its scans are preprocessed once and
segmented by every run; its Dice is read beside the resolution limit, the
reference masks carried to the 2 mm template grid and back
(`native_evaluation.resolution_limit`).

Resumable: a seed whose DIR/seed<N>/results.json exists is not trained again
(a killed one resumes from its checkpoint); each run's OOD figures are kept
in DIR/seed<N>.ood.json, the preprocessed OOD scans in DIR/ood_cases.pkl.

`--checkout=TREE` trains with the code of another checkout (a `git worktree`
of an older commit, to find where quality changed); its runs are scored on
the test split from their own results.json, and on the OOD cohort only if
this code can load them.
"""

from collections.abc import Sequence
import json
import os
from pathlib import Path
import pickle
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from preprocessing.io import console
from preprocessing.io import tables
from preprocessing.io.atomic import atomic_write_bytes
from preprocessing.io.atomic import atomic_write_text
from preprocessing.io.errors import InputError
from pvl_jax.data import dataset
from pvl_jax.evaluation import native_evaluation
from pvl_jax.evaluation import lesions
from pvl_jax.evaluation import summary
from pvl_jax.inference import trained_run
from pvl_jax.training import config_validation

_REPO = Path(__file__).resolve().parents[1]

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_SEEDS = flags.DEFINE_string("seeds", "0,1,2",
                             "Training seeds, comma-separated integers.")
# Relative to the repository root (or --checkout), as pvl_jax.main reads it.
_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/joint.py:demo",
    "The training config, as pvl_jax.main takes it.")
_CHECKOUT = flags.DEFINE_string(
    "checkout", "", "Train with this checkout's code instead (a git "
    "worktree of another commit).")
_OOD_SUBJECTS = flags.DEFINE_integer(
    "ood_subjects", 6, "Subjects of the out-of-distribution cohort; 0: none.")

# The out-of-distribution cohort: generator fields (see
# preprocessing/synthetic/params.py for the defaults) and its own seed. More
# lesions, of other sizes (radii 1.5/3.0/5.0 mm against 1.8/3.2/5.5, more of
# them small), fainter (0.75-1.05 against 0.85-1.15 of the FLAIR
# white-matter scale), in a wider periventricular band, with more partial
# volume, a stronger residual bias, up to 1.5 times the noise and twice the
# anatomical deformation.
OOD_SEED = 7919
OOD_RESOLUTION_MM = 1
OOD_OVERRIDES = {
    "lesion_radius_mm": (1.5, 3.0, 5.0),
    "size_class_probs": (0.4, 0.4, 0.2),
    "mean_lesions": (4.0, 16.0),
    "band_mm": (0.5, 11.0),
    "lesion_intensity": (0.75, 1.05),
    "partial_volume_sigma_vox": 0.8,
    "bias_strength": 0.25,
    "noise_level": (0.06, 0.12),
    "deform_mm": 5.0,
}

# Figures of the table: (label, results key); a key of a size bin is
# "size:<bin>".
SEGMENTATION_ROWS = (("Dice", "dice_mean"),
                     ("lesion recall", "lesion_recall_mean"),
                     ("lesion precision", "lesion_precision_mean"),
                     ("lesion F1", "lesion_f1_mean"),
                     ("HD95 median (mm)", "hd95_mm_median"))


def parse_seeds(text: str) -> list[int]:
  """The --seeds list; InputError naming the flag when empty or malformed."""
  if not text.strip():
    raise InputError("--seeds: empty; give at least one seed, e.g. --seeds=0")
  try:
    seeds = [int(item) for item in text.split(",")]
  except ValueError:
    raise InputError(f"--seeds={text!r}: expected comma-separated integers, "
                     "e.g. --seeds=0,1,2") from None
  if len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise InputError(f"--seeds={text!r}: seeds must be distinct and >= 0")
  return seeds


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The --config.KEY=VALUE flags of the command line, as given."""
  return [arg for arg in argv if arg.startswith("--config.")]


def train_seed(workdir: Path, seed: int, extra: Sequence[str],
               checkout: Path) -> None:
  """Trains and evaluates one seed (skips a finished run), timing it."""
  if (workdir / "results.json").exists():
    return
  command = [sys.executable, "-m", "pvl_jax.main",
             f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}",
             f"--workdir={workdir}", f"--config.seed={seed}", *extra]
  log_path = workdir.parent / f"{workdir.name}.log"
  print(f"training {workdir.name} (log: {log_path})", flush=True)
  env = {**os.environ, "PYTHONPATH": str(checkout)}
  start = time.perf_counter()
  with open(log_path, "a") as log:
    result = subprocess.run(command, cwd=checkout, env=env, stdout=log,
                            stderr=subprocess.STDOUT, check=False)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    raise RuntimeError(f"{workdir.name} failed (exit {result.returncode}); "
                       f"see {log_path}")
  timing = workdir.parent / f"{workdir.name}.wall.json"
  # A resumed run's time is only its last part: the table says so.
  resumed = timing.exists() or log_path.stat().st_size > 0 and (
      "resum" in log_path.read_text(errors="replace").lower())
  atomic_write_text(timing, json.dumps({"wall_s": seconds,
                                        "resumed": bool(resumed)}))


def ood_config(run_config: ml_collections.ConfigDict
               ) -> ml_collections.ConfigDict:
  """The config that names the out-of-distribution cohort."""
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.data.synthetic = ml_collections.ConfigDict(dict(
      num_subjects=_OOD_SUBJECTS.value, seed=OOD_SEED,
      resolution_mm=OOD_RESOLUTION_MM, overrides=OOD_OVERRIDES))
  return config


def ood_scans(cohort: Path) -> list[tuple[str, Path, Path]]:
  """(subject, FLAIR scan, lesion mask) of the generated raw cohort."""
  scans = []
  for scan in sorted(cohort.glob("sub-*/anat/sub-*_FLAIR.nii.gz")):
    subject = scan.name.split("_")[0]
    mask = (cohort / "derivatives" / "lesions" / subject / "anat" /
            f"{subject}_label-lesion_mask.nii.gz")
    scans.append((subject, scan, mask))
  return scans


def ood_cases(run: trained_run.TrainedRun, cache: Path
              ) -> list[native_evaluation.Case]:
  """The OOD scans, preprocessed for `run`'s config (kept in `cache`).

  Minutes per 1 mm scan on a busy 2-core CPU, so done once per benchmark
  directory: its runs share one config.
  """
  if cache.exists():
    return pickle.loads(cache.read_bytes())
  cohort = dataset.synthetic_cohort(ood_config(run.config), space="raw")
  cases = native_evaluation.load_cases(run, ood_scans(cohort))
  atomic_write_bytes(cache, pickle.dumps(cases))
  return cases


def ood_results(workdirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
  """Each run's OOD metrics (cached beside it) and the resolution limit."""
  cached = {w.name: w.parent / f"{w.name}.ood.json" for w in workdirs}
  limit_path = workdirs[0].parent / "ood_resolution_limit.json"
  todo = [w for w in workdirs if not cached[w.name].exists()]
  runs = {}
  for workdir in todo:
    try:
      runs[workdir.name] = trained_run.load(workdir)
    except InputError as e:  # e.g. an older checkout's parameter layout
      print(f"{workdir.name}: not scored on the OOD cohort ({e})")
      atomic_write_text(cached[workdir.name], json.dumps({}))
  if runs or not limit_path.exists():
    some_run = next(iter(runs.values()), None) or trained_run.load(
        workdirs[0])
    cases = ood_cases(some_run, workdirs[0].parent / "ood_cases.pkl")
    atomic_write_text(limit_path, json.dumps(
        native_evaluation.resolution_limit(cases)))
    for name, run in runs.items():
      atomic_write_text(cached[name], json.dumps(
          native_evaluation.score(run, cases)))
  results = {w.name: json.loads(cached[w.name].read_text()) for w in workdirs}
  results["resolution limit"] = json.loads(limit_path.read_text())
  return results


def _cell(values: Sequence[float | None], digits: int = 3) -> str:
  stats = summary.summarize(values)
  return summary.format_mean_std(stats.mean, stats.std, digits)


def _seed_values(values: Sequence[float | None], digits: int = 3) -> str:
  return ", ".join("n/a" if v is None or np.isnan(v) else f"{v:.{digits}f}"
                   for v in values)


def metric_rows(name: str, blocks: Sequence[dict[str, Any]],
                limit: dict[str, Any] | None = None) -> list[list[str]]:
  """Rows for one cohort: (figure, mean ± std, per seed[, limit])."""
  rows = []

  def add(label, values, limit_value=None, digits=3):
    row = [f"{name}: {label}", _cell(values, digits),
           _seed_values(values, digits)]
    if limit is not None:
      row.append("" if limit_value is None else f"{limit_value:.{digits}f}")
    rows.append(row)

  for label, key in SEGMENTATION_ROWS:
    add(label, [b.get(key) for b in blocks],
        None if limit is None else limit.get(key),
        digits=2 if "mm" in label else 3)
  bins = [lesions.size_bins(b) for b in blocks if b]
  for index, (label, _, _) in enumerate(bins[0] if bins else []):
    counts = [b[index] for b in bins]
    recalls = [found / n if n else None for _, n, found in counts]
    counted = "/".join(str(n) for _, n, _ in counts)
    limit_value = None
    if limit is not None:
      _, n, found = lesions.size_bins(limit)[index]
      limit_value = found / n if n else None
    add(f"recall {label} ({counted} lesions)", recalls, limit_value)
  return rows


def table(seeds: Sequence[int], workdirs: Sequence[Path],
          ood: dict[str, dict[str, Any]] | None) -> tuple[list[str], list]:
  """The benchmark's table: header and rows."""
  results = [json.loads((w / "results.json").read_text()) for w in workdirs]
  tests = [r["test"] for r in results]
  header = ["figure", f"mean ± std ({len(seeds)} seeds)",
            f"seeds {', '.join(map(str, seeds))}"]
  rows = metric_rows("test", tests)
  if any("cls_auc" in t for t in tests):
    rows.append(["test: hand-function AUC",
                 _cell([t.get("cls_auc") for t in tests]),
                 _seed_values([t.get("cls_auc") for t in tests])])
  sizes = [r.get("postprocessing", {}).get(
      "min_component_mm3", r.get("postprocessing", {}).get(
          "min_component_voxels")) for r in results]
  rows.append(["postprocessing: min lesion (mm^3; older runs: voxels)", "",
               ", ".join(str(s) for s in sizes)])
  depths = [r.get("postprocessing", {}).get("min_depth_mm", 0.0)
            for r in results]
  rows.append(["postprocessing: min depth in the brain (mm)", "",
               ", ".join(str(d) for d in depths)])
  walls = []
  for w in workdirs:
    timing = w.parent / f"{w.name}.wall.json"
    walls.append(json.loads(timing.read_text()) if timing.exists() else {})
  rows.append(["training + evaluation wall time (s)",
               _cell([t.get("wall_s") for t in walls], 0),
               ", ".join(f"{t['wall_s']:.0f}{' (resumed)' if t['resumed'] else ''}"
                         if t else "n/a" for t in walls)])
  if ood:
    header.append("resolution limit")
    rows = [row + [""] for row in rows]
    blocks = [ood[w.name] for w in workdirs]
    rows += metric_rows(f"OOD ({_OOD_SUBJECTS.value} raw 1 mm scans)",
                        blocks, ood["resolution limit"])
  return header, rows


def main(argv: Sequence[str]) -> None:
  del argv
  console.configure()
  try:
    seeds = parse_seeds(_SEEDS.value)
    if _OOD_SUBJECTS.value < 0:
      raise InputError(f"--ood_subjects={_OOD_SUBJECTS.value}: must be >= 0")
    checkout = Path(_CHECKOUT.value or _REPO).resolve()
    if not (checkout / "pvl_jax" / "main.py").exists():
      raise InputError(f"--checkout={_CHECKOUT.value}: not a pvl_jax "
                       "checkout (no pvl_jax/main.py)")
    if not _CHECKOUT.value:  # another checkout checks its own config
      config_validation.validate_config(_CONFIG.value)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  extra = config_overrides(sys.argv[1:])
  out = Path(_OUT.value).resolve()
  out.mkdir(parents=True, exist_ok=True)
  workdirs = [out / f"seed{seed}" for seed in seeds]
  for seed, workdir in zip(seeds, workdirs):
    train_seed(workdir, seed, extra, checkout)
  ood = ood_results(workdirs) if _OOD_SUBJECTS.value else None
  header, rows = table(seeds, workdirs, ood)
  title = (f"{config_flags.get_config_filename(flags.FLAGS['config'])}"
           f" {' '.join(extra)}"
           f"{' (checkout ' + str(checkout) + ')' if _CHECKOUT.value else ''}"
           f"; test split of each run's fold, {len(seeds)} seeds\n\n")
  tables.write_table(out, "segmentation_quality",
                     [dict(zip(header, row)) for row in rows],
                     title + tables.markdown_table(header, rows))


if __name__ == "__main__":
  app.run(main)
