"""launch.sweep: points and names, command lines, local orchestration."""

import ast
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import ml_collections
import pytest

from configs import joint
from launch import local
from launch import sweep_points
from preprocessing.io.errors import InputError

# A fake point command: appends "<name> <CUDA_VISIBLE_DEVICES> <start> <end>"
# to a shared file, sleeping in between, then exits with the given status.
FAKE = textwrap.dedent("""
    import os, sys, time
    record, name, seconds, status = sys.argv[1:]
    start = time.time()
    time.sleep(float(seconds))
    print("fake output of", name)
    with open(record, "a") as f:
      f.write(f"{name} {os.environ.get('CUDA_VISIBLE_DEVICES')} {start} "
              f"{time.time()}\\n")
    sys.exit(int(status))
""")


def fake_point(record, name, seconds=0.0, status=0):
  return sweep_points.Point(name, {"r": 0.0}, (sys.executable, "-c", FAKE,
                                        str(record), name, str(seconds),
                                        str(status)))


def _records(record):
  rows = [line.split() for line in record.read_text().splitlines()]
  return [(name, gpu, float(start), float(end))
          for name, gpu, start, end in rows]


def test_joint_sweep_points_and_names():
  points = sweep_points.list_overrides(joint.sweep, "folds=2")
  assert len(points) == 12
  assert sorted({p["r"] for p in points}) == sorted(joint.SWEEP_R)
  assert {p["data.fold"] for p in points} == {0, 1}
  names = [sweep_points.point_name(p) for p in points]
  assert len(set(names)) == 12
  assert "r=0.3_fold=1_seed=0" in names
  assert "r=0.0_fold=0_seed=0" in names
  assert len(sweep_points.list_overrides(joint.sweep, None)) == 6


def test_joint_sweep_r_subset():
  points = sweep_points.list_overrides(joint.sweep, "folds=2,r=0/1/10")
  assert [(p["r"], p["data.fold"]) for p in points] == [
      (0.0, 0), (1.0, 0), (10.0, 0), (0.0, 1), (1.0, 1), (10.0, 1)]
  with pytest.raises(ValueError, match="r=0/x"):
    sweep_points.list_overrides(joint.sweep, "r=0/x")


def test_point_names_keep_clashing_keys_and_tuples_readable():
  assert sweep_points.point_name({"seed": 1, "data.synthetic.seed": 2}) == (
      "seed=1_data.synthetic.seed=2")
  assert sweep_points.point_name({"data.patch_size": (16, 16, 16), "x": "a/b c"}
                          ) == "patch_size=16x16x16_x=a-b-c"


def test_main_argv():
  argv = sweep_points.main_argv(
      "/repo/configs/joint.py:demo", "/root/r=0.3_fold=1_seed=0",
      {"r": 0.3, "data.fold": 1, "model.deep_supervision": False,
       "data.patch_size": (16, 16, 16)},
      {"num_steps": "50"}, python="py")
  assert argv == [
      "py", "-m", "pvl_jax.main", "--config=/repo/configs/joint.py:demo",
      "--workdir=/root/r=0.3_fold=1_seed=0", "--config.r=0.3",
      "--config.data.fold=1", "--config.model.deep_supervision=false",
      "--config.data.patch_size=(16, 16, 16)", "--config.num_steps=50"]


def test_make_points_rejects_overlaps_and_duplicate_names(tmp_path):
  with pytest.raises(InputError, match=r"--config.r: set by the sweep"):
    sweep_points.make_points([{"r": 0.1}], "c.py", tmp_path, {"r": "0.5"})
  with pytest.raises(InputError, match="both get the name 'x=a-b'"):
    sweep_points.make_points([{"x": "a b"}, {"x": "a/b"}], "c.py", tmp_path, {})


def test_check_overrides_names_the_bad_key():
  config = joint.get_config("demo")
  sweep_points.check_overrides(config, {"r": 3, "data.fold": 1}, "p")
  with pytest.raises(InputError, match="p: config has no field 'data.nope'"):
    sweep_points.check_overrides(config, {"data.nope": 1}, "p")
  with pytest.raises(InputError, match="p: config has no field 'r.x'"):
    sweep_points.check_overrides(config, {"r.x": 1}, "p")
  with pytest.raises(InputError, match="p: data.fold='a'"):
    sweep_points.check_overrides(config, {"data.fold": "a"}, "p")
  assert config.r == 1.0  # checked on a copy


def test_skips_finished_points(tmp_path, caplog):
  record = tmp_path / "record.txt"
  points = [fake_point(record, "a"), fake_point(record, "b")]
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "results.json").write_text("{}")
  with caplog.at_level(logging.INFO):
    failed = local.run_sweep(points, tmp_path, gpus=[], poll_s=0.05)
  assert failed == []
  assert [r[0] for r in _records(record)] == ["b"]
  assert "skipping finished a" in caplog.text
  assert "fake output of b" in (tmp_path / "b" / "log.txt").read_text()
  status = json.loads((tmp_path / "b" / sweep_points.STATUS_FILE).read_text())
  assert status["returncode"] == 0


def test_failing_point_is_reported_and_others_continue(tmp_path, caplog):
  record = tmp_path / "record.txt"
  points = [fake_point(record, "ok1"), fake_point(record, "bad", status=3),
            fake_point(record, "ok2")]
  with caplog.at_level(logging.INFO):
    failed = local.run_sweep(points, tmp_path, gpus=[], poll_s=0.05)
  assert failed == ["bad"]
  assert [r[0] for r in _records(record)] == ["ok1", "bad", "ok2"]
  assert "point bad FAILED with exit status 3" in caplog.text
  assert "fake output of bad" in caplog.text  # the log's tail
  assert "[3/3] ok2 done" in caplog.text and "ETA" in caplog.text
  status = json.loads((tmp_path / "bad" / sweep_points.STATUS_FILE).read_text())
  assert status["returncode"] == 3


def test_one_point_per_gpu_at_a_time(tmp_path):
  record = tmp_path / "record.txt"
  points = [fake_point(record, f"p{i}", seconds=1.0) for i in range(4)]
  assert local.run_sweep(points, tmp_path, gpus=["0", "1"], poll_s=0.05) == []
  runs = _records(record)
  assert len(runs) == 4
  overlapping = [
      (gpu_a, gpu_b) for i, (_, gpu_a, start_a, end_a) in enumerate(runs)
      for _, gpu_b, start_b, end_b in runs[i + 1:]
      if start_a < end_b and start_b < end_a]
  assert overlapping  # ran concurrently...
  assert all(a != b for a, b in overlapping)  # ...never two on one GPU
  assert {gpu for _, gpu, _, _ in runs} == {"0", "1"}


def test_sigterm_is_forwarded_and_stops_the_sweep(tmp_path):
  trap = ("import signal, sys, time; signal.signal(signal.SIGTERM, "
          "lambda *_: sys.exit(143)); "
          "time.sleep(30)")
  points = [sweep_points.Point("a", {}, (sys.executable, "-c", trap)),
            sweep_points.Point("b", {}, (sys.executable, "-c", "pass"))]
  threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
  start = time.monotonic()
  assert local.run_sweep(points, tmp_path, gpus=[], poll_s=0.05) == ["a", "b"]
  assert time.monotonic() - start < 10
  status = json.loads((tmp_path / "a" / sweep_points.STATUS_FILE).read_text())
  assert status["returncode"] in (143, -signal.SIGTERM)
  assert not (tmp_path / "b").exists()


def test_run_task_runs_one_point_or_skips_it(tmp_path):
  record = tmp_path / "record.txt"
  points = [fake_point(record, "a"), fake_point(record, "b", status=4)]
  sweep_points.write_sweep_json(tmp_path, points, "c.py", None, {}, tmp_path)
  assert local.run_task(tmp_path, 1, distributed=False) == 4
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "results.json").write_text("{}")
  assert local.run_task(tmp_path, 0, distributed=False) == 0
  assert [r[0] for r in _records(record)] == ["b"]
  with pytest.raises(InputError, match="--task: 2 is not a point index"):
    local.run_task(tmp_path, 2, distributed=False)


def _sweep_cli(*args, cwd):
  return subprocess.run([sys.executable, "-m", "launch.sweep", *args],
                        capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_dry_run_writes_sweep_json(tmp_path, request):
  root = tmp_path / "sweep"
  result = _sweep_cli("--config=configs/joint.py:demo", f"--workdir={root}",
                      "--sweep_arg=folds=2", "--dry_run",
                      "--config.num_steps=7",
                      "--config.data.patch_size=(16,16,16)",
                      cwd=request.config.rootpath)
  assert result.returncode == 0, result.stderr
  commands = result.stdout.splitlines()
  assert len(commands) == 12
  assert commands[0].endswith(
      f"--workdir={root}/r=0.0_fold=0_seed=0 --config.r=0.0 "
      "--config.data.fold=0 --config.seed=0 --config.num_steps=7 "
      "'--config.data.patch_size=(16, 16, 16)'")
  saved = json.loads((root / "sweep.json").read_text())
  assert saved["config"] == (
      f"{request.config.rootpath / 'configs' / 'joint.py'}:demo")
  assert saved["sweep_arg"] == "folds=2"
  assert saved["overrides"] == {"num_steps": "7",
                                "data.patch_size": "(16, 16, 16)"}
  assert [p["name"] for p in saved["points"]][:2] == [
      "r=0.0_fold=0_seed=0", "r=0.1_fold=0_seed=0"]
  assert not (root / "r=0.0_fold=0_seed=0").exists()  # nothing ran


@pytest.mark.parametrize("args,message", [
    (("--config=configs/joint.py", "--config.r=2"),
     "error: --config.r: set by the sweep for every point"),
    (("--config=configs/joint.py", "--sweep_arg=folds=x"),
     "error: --sweep_arg: config argument 'folds=x': expected int"),
    (("--config=configs/joint.py", "--config.data.nope=1"),
     "error: --config: no such field 'nope'"),
    (("--config=configs/missing.py",), "error: --config: cannot load"),
])
def test_cli_errors(tmp_path, request, args, message):
  result = _sweep_cli(*args, f"--workdir={tmp_path}", "--dry_run",
                      cwd=request.config.rootpath)
  assert result.returncode == 2
  assert result.stderr.startswith(message), result.stderr
  assert "Traceback" not in result.stderr


def _write_config(path, body):
  path.write_text(textwrap.dedent("""
      from configs import joint
      get_config = joint.get_config
  """) + textwrap.dedent(body))
  return path


def test_cli_failed_point_exits_nonzero(tmp_path, request):
  """A real pvl_jax.main run that stops on a bad config value (fast)."""
  config = _write_config(tmp_path / "cfg.py", """
      def sweep(add, arg=None):
        add(**{"r": 0.5, "batch_size": 0})
  """)
  root = tmp_path / "sweep"
  result = _sweep_cli(f"--config={config}:demo", f"--workdir={root}",
                      "--config.data.patch_size=(16,16,16)",
                      cwd=request.config.rootpath)
  assert result.returncode == 1
  assert "error: 1 of 1 points failed: r=0.5_batch_size=0" in result.stderr
  point = root / "r=0.5_batch_size=0"
  # pvl_jax.main parsed every override and rejected the point's own value.
  assert "error: config.batch_size: must be >= 1 (got 0)" in (
      point / "log.txt").read_text()
  assert json.loads((point / sweep_points.STATUS_FILE).read_text())[
      "returncode"] == 2


@pytest.mark.slow
def test_real_local_sweep_and_report(tmp_path, request, tiny_cohort):
  """3 r values x 2 folds of tiny training, then launch.report."""
  config = _write_config(tmp_path / "cfg.py", """
      def sweep(add, arg=None):
        for fold in (0, 1):
          for r in (0.0, 0.3, 1.0):
            add(**{"r": r, "data.fold": fold})
  """)
  root = tmp_path / "sweep"
  args = [f"--config={config}:demo", f"--workdir={root}",
          f"--config.data.cohort_dir={tiny_cohort}",
          f"--config.data.cache_dir={tmp_path / 'cache'}",
          "--config.data.patch_size=(16,16,16)",
          "--config.model.features=(4,8,16)", "--config.num_steps=2",
          "--config.data.num_workers=0", "--config.eval_patches=2",
          "--config.inference.batch_size=2"]
  result = _sweep_cli(*args, cwd=request.config.rootpath)
  assert result.returncode == 0, result.stderr[-3000:]
  names = [p["name"] for p in
           json.loads((root / "sweep.json").read_text())["points"]]
  assert len(names) == 6
  for name in names:
    results = json.loads((root / name / "results.json").read_text())
    assert ("cls_auc" in results["test"]) == (not name.startswith("r=0.0"))

  again = _sweep_cli(*args, cwd=request.config.rootpath)
  assert again.returncode == 0
  assert again.stderr.count("skipping finished") == 6

  result = subprocess.run(
      [sys.executable, "-m", "launch.report", f"--workdir={root}"],
      capture_output=True, text=True, timeout=300,
      cwd=request.config.rootpath)
  assert result.returncode == 0, result.stderr
  md = (root / "report.md").read_text()
  point_rows = [l for l in md.splitlines() if l.startswith("| `r=")]
  assert len(point_rows) == 6
  assert all("| finished |" in l for l in point_rows)
  for r in ("0", "0.3", "1"):
    assert f"| {r} | 2/2 |" in md
  assert (root / "report.png").stat().st_size > 0


def test_dict_overrides_are_written_as_python_literals():
  """A dict field's value (data.synthetic.overrides) survives the command.

  config_flags reads a dict field's value as a Python literal; str() of a
  ConfigDict gives YAML, which it cannot parse.
  """
  value = ml_collections.ConfigDict(
      {"label_roi_centres_mm": ((30.0, -50.0, 8.0), (-30.0, -50.0, 8.0))})
  text = sweep_points.format_value(value)
  assert text == ("{'label_roi_centres_mm': ((30.0, -50.0, 8.0), "
                  "(-30.0, -50.0, 8.0))}")
  assert ast.literal_eval(text) == value.to_dict()
