"""Slurm backend: the sbatch script, submission, and a real one-node cluster."""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launch import slurm
from launch import local
from launch import sweep_points
from preprocessing.io.errors import InputError

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo",
           "scontrol")


def test_single_node_script():
  script = slurm.sbatch_script(
      Path("/sweeps/run 1"), 12,
      slurm.Resources(partition="gpu", gpus_per_task=1, cpus_per_task=8,
                      mem="64G", time="24:00:00"),
      python="/venv/bin/python", cwd=Path("/repo"))
  lines = script.splitlines()
  assert lines[0] == "#!/bin/bash"
  for expected in ("#SBATCH --array=0-11",
                   "#SBATCH --output=/sweeps/run 1/logs/%A_%a.out",
                   "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                   "#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1",
                   "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G",
                   "#SBATCH --time=24:00:00", "cd /repo",
                   "exec /venv/bin/python -m launch.sweep "
                   "'--workdir=/sweeps/run 1' --task=\"$SLURM_ARRAY_TASK_ID\""):
    assert expected in lines, expected
  assert "--distributed" not in script


def test_multi_node_script_uses_distributed_and_omits_unset_resources():
  script = slurm.sbatch_script(
      Path("/s"), 3, slurm.Resources(nodes=2, gpus_per_task=0),
      python="py", cwd=Path("/repo"))
  assert "#SBATCH --nodes=2" in script
  assert "--distributed --task=" in script
  for absent in ("--partition", "--gpus-per-task", "--mem", "--time"):
    assert absent not in script


def test_bad_resources():
  with pytest.raises(InputError, match=r"--slurm_nodes: must be >= 1 \(got 0"):
    slurm.Resources(nodes=0).validate()
  with pytest.raises(InputError, match="--slurm_gpus_per_task: must be >= 0"):
    slurm.Resources(gpus_per_task=-1).validate()


def _fake_tool(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/bin/sh\n" + body + "\n")
  path.chmod(0o755)


def test_submit_parses_the_job_id(tmp_path, monkeypatch):
  _fake_tool(tmp_path, "sbatch", f'echo "$@" > {tmp_path}/args; '
             'echo "4242;cluster"')
  monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
  script = slurm.write_script(tmp_path / "root", 2, slurm.Resources())
  assert (tmp_path / "root" / "logs").is_dir()
  assert slurm.submit(script) == "4242"
  assert (tmp_path / "args").read_text().split() == ["--parsable",
                                                     str(script)]
  _fake_tool(tmp_path, "sbatch", 'echo "sbatch: error: invalid partition" >&2;'
             " exit 1")
  with pytest.raises(InputError, match="exit status 1: sbatch: error: inv"):
    slurm.submit(script)


def test_distributed_task_runs_under_srun(tmp_path, monkeypatch):
  _fake_tool(tmp_path, "srun", f'echo "$@" > {tmp_path}/srun_args')
  monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
  point = sweep_points.Point("p", {"r": 1.0}, ("python", "-m", "pvl_jax.main"))
  sweep_points.write_sweep_json(tmp_path, [point], "c.py", None, {}, tmp_path)
  assert local.run_task(tmp_path, 0, distributed=True) == 0
  assert (tmp_path / "srun_args").read_text().split() == [
      "--kill-on-bad-exit=1", "python", "-m", "pvl_jax.main", "--distributed"]


def test_cli_dry_run_writes_the_script(tmp_path, request):
  result = subprocess.run(
      [sys.executable, "-m", "launch.sweep", "--config=configs/joint.py",
       f"--workdir={tmp_path}", "--backend=slurm", "--dry_run",
       "--slurm_nodes=2", "--slurm_mem=32G"],
      capture_output=True, text=True, timeout=120,
      cwd=request.config.rootpath)
  assert result.returncode == 0, result.stderr
  script = (tmp_path / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-5" in script and "#SBATCH --mem=32G" in script
  assert f"cd {request.config.rootpath}" in script
  assert "not submitted" in result.stdout


# --- a real single-node Slurm cluster ---------------------------------------

# A point that writes results.json into its workdir, as pvl_jax.main would.
FAKE_TRAINING = textwrap.dedent("""
    import os, sys
    from preprocessing.io.atomic import atomic_write_text
    print("training in array task", os.environ["SLURM_ARRAY_TASK_ID"])
    atomic_write_text(os.path.join(sys.argv[1], "results.json"), "{}")
""")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tail(path, lines=15):
  try:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
  except FileNotFoundError:
    return f"({path} not written)"


def _stop(pid_file):
  try:
    pid = int(Path(pid_file).read_text())
  except (FileNotFoundError, ValueError):
    return
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    return
  for _ in range(50):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)


@pytest.fixture
def slurm_cluster(tmp_path, monkeypatch):
  """Starts munged, slurmctld and slurmd on localhost; yields SLURM_CONF."""
  missing = [d for d in DAEMONS if shutil.which(d) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed (Debian: apt-get install "
                "slurm-wlm munge)")
  d = tmp_path / "slurm"
  for sub in ("munge", "state", "spool"):
    (d / sub).mkdir(parents=True)
  # A private munged with its own key and socket: nothing system-wide is used.
  (d / "munge").chmod(0o755)
  key = d / "munge" / "munge.key"
  key.write_bytes(os.urandom(1024))
  key.chmod(0o400)
  sock = d / "munge" / "munge.sock"
  user = getpass.getuser()
  conf = d / "slurm.conf"
  conf.write_text(textwrap.dedent(f"""\
      ClusterName=pvltest
      SlurmctldHost=localhost
      SlurmctldPort={_free_port()}
      SlurmdPort={_free_port()}
      SlurmUser={user}
      SlurmdUser={user}
      AuthType=auth/munge
      AuthInfo=socket={sock}
      CredType=cred/munge
      StateSaveLocation={d / 'state'}
      SlurmdSpoolDir={d / 'spool'}
      SlurmctldPidFile={d / 'slurmctld.pid'}
      SlurmdPidFile={d / 'slurmd.pid'}
      SlurmctldLogFile={d / 'slurmctld.log'}
      SlurmdLogFile={d / 'slurmd.log'}
      ProctrackType=proctrack/linuxproc
      TaskPlugin=task/none
      SelectType=select/cons_tres
      SelectTypeParameters=CR_Core
      MpiDefault=none
      JobAcctGatherType=jobacct_gather/none
      AccountingStorageType=accounting_storage/none
      ReturnToService=2
      NodeName=localhost CPUs=2 RealMemory=1000 State=UNKNOWN
      PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
  """))
  monkeypatch.setenv("SLURM_CONF", str(conf))
  starts = [
      ("munged", ["munged", "--force", f"--socket={sock}",
                  f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
                  f"--log-file={d / 'munged.log'}",
                  f"--seed-file={d / 'munge' / 'seed'}"], d / "munged.log"),
      ("slurmctld", ["slurmctld", "-f", str(conf), "-i"],
       d / "slurmctld.log"),
      ("slurmd", ["slurmd", "-f", str(conf), "-N", "localhost"],
       d / "slurmd.log")]
  try:
    for name, argv, log in starts:
      result = subprocess.run(argv, capture_output=True, text=True,
                              timeout=30)
      if result.returncode != 0:
        pytest.skip(f"{name} did not start (exit {result.returncode}): "
                    f"{result.stderr.strip()} {_tail(log)}")
    deadline = time.monotonic() + 30
    state = ""
    while time.monotonic() < deadline:
      state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
      if state == "idle":
        break
      time.sleep(0.5)
    else:
      pytest.skip(f"the Slurm node is not idle after 30 s (state "
                  f"{state!r}); slurmd log:\n{_tail(d / 'slurmd.log')}")
    yield conf
  finally:
    subprocess.run(["scontrol", "shutdown"], capture_output=True, timeout=30,
                   check=False)
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
      _stop(d / pid_file)


@pytest.mark.slow
def test_job_array_on_a_real_cluster(slurm_cluster, tmp_path, request):
  del slurm_cluster
  root = tmp_path / "sweep"
  points = [sweep_points.Point(name, {"r": r}, (sys.executable, "-c", FAKE_TRAINING,
                                          str(root / name)))
            for name, r in (("r=0", 0.0), ("r=1", 1.0), ("r=3", 3.0))]
  repo = request.config.rootpath
  sweep_points.write_sweep_json(root, points, "fake", None, {}, repo)
  (root / "r=1").mkdir(parents=True)
  (root / "r=1" / "results.json").write_text('{"finished": "before"}')
  script = slurm.write_script(root, len(points), slurm.Resources(
      gpus_per_task=0, cpus_per_task=1), cwd=repo)
  job = slurm.submit(script)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                            text=True, timeout=10).stdout.strip()
    if not queued:
      break
    time.sleep(1)
  else:
    pytest.fail(f"job {job} still queued after 120 s:\n{queued}")

  for i, point in enumerate(points):
    assert (root / point.name / "results.json").exists(), point.name
    out = (root / "logs" / f"{job}_{i}.out").read_text()
    if point.name == "r=1":
      assert "skipping finished r=1" in out
      assert (root / "r=1" / "results.json").read_text() == (
          '{"finished": "before"}')
      assert not (root / "r=1" / "log.txt").exists()
    else:
      assert f"{point.name} done" in out, out
      log = (root / point.name / "log.txt").read_text()
      assert f"training in array task {i}" in log
