"""README's "Your own data": the whole study in three commands, as written.

The commands are read from README.md (the block after "The whole study in
three commands"), their placeholders replaced by a study made here -- a
template-space cohort (STUDY) and a BIDS folder of raw scans (NEW_SCANS) --
and run one after the other. Slow: the demo recipe trains for its 1500
steps.
"""

import os
from pathlib import Path
import shlex
import subprocess
import sys

import pytest

from preprocessing.synthetic import cohort as synthetic_cohort

REPO = Path(__file__).resolve().parents[1]
HEADING = "The whole study in three commands"


def readme_commands() -> list[str]:
  """The README's study commands, in order."""
  lines = (REPO / "README.md").read_text().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(HEADING))
  commands = []
  for line in lines[start + 1:]:
    if line.startswith("    python -m "):
      commands.append(line.strip())
    elif commands and not line.strip():
      break
  return commands


def test_readme_shows_train_predict_baseline():
  assert [c.split()[2] for c in readme_commands()] == [
      "pvl_jax.main", "pvl_jax.predict", "pvl_jax.handfunction.run"]


@pytest.mark.slow
def test_readme_study_runs_as_written(tmp_path):
  study = synthetic_cohort.generate_cohort(
      tmp_path / "study", 24, seed=0, progress=False, space="template",
      num_workers=2)
  new_scans = synthetic_cohort.generate_cohort(
      tmp_path / "new_scans", 2, seed=5, progress=False, space="raw")
  run = tmp_path / "run"
  places = {"STUDY": study, "NEW_SCANS": new_scans, "RUN": run}
  env = {**os.environ, "PVL_JAX_CACHE": str(tmp_path / "cache")}
  for command in readme_commands():
    args = shlex.split(command)
    for name, path in places.items():
      args = [a.replace(f"={name}", f"={path}") for a in args]
    args[0] = sys.executable
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=3600, check=False)
    assert result.returncode == 0, (command, result.stderr[-3000:])
  derivatives = new_scans / "derivatives" / "pvl_jax"
  assert (run / "results.json").exists()
  assert (run / "qc_report.html").exists()
  assert (derivatives / "lesions.tsv").read_text().count("\n") == 3
  assert (derivatives / "qc_report.html").exists()
  assert (run / "baseline.json").exists()
