"""Disk trouble: a read-only or full workdir, and failed checkpoint saves.

A read-only or full workdir (or data cache) must stop the run with a clear
message before any data or training work (`pvl_jax.training.disk_checks`, called by
`train.prepare_run`). A disk that fills up or turns read-only later makes a
checkpoint save fail; that must never damage the previous checkpoint, which a
rerun then restores.

Real filesystems are used where possible: tiny tmpfs mounts (a 1 MiB
filesystem, one remounted read-only), which need root or CAP_SYS_ADMIN; the
tests that need them skip, saying why, elsewhere. A simulated full disk
(monkeypatched `shutil.disk_usage`) and a simulated failing save
(monkeypatched grain checkpoint handler) always run.
"""

import errno
import os
from pathlib import Path
import shutil
import subprocess
import sys

import grain
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.multihost import multihost as orbax_multihost
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.training import disk_checks
from pvl_jax.training import checkpointing
from pvl_jax.training import steps
from pvl_jax.training import train
from tests.test_train import tiny_config


@pytest.fixture
def tmpfs(tmp_path):
  """Returns mount(name, size) -> a fresh tmpfs under tmp_path (unmounted after).

  Skips the test where mounting is not permitted.
  """
  mounted = []

  def mount(name: str, size: str = "1m") -> Path:
    point = tmp_path / name
    point.mkdir()
    if shutil.which("mount") is None:
      pytest.skip("no mount command to create a tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
        capture_output=True, text=True, check=False)
    if result.returncode:
      pytest.skip("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "
                  f"{result.stderr.strip()}")
    mounted.append(point)
    return point

  yield mount
  for point in reversed(mounted):
    subprocess.run(["umount", str(point)], check=False)


def _remount_readonly(point: Path) -> None:
  subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


@pytest.fixture
def readonly_dir(tmpfs, tmp_path):
  """A directory nothing can be written to, as the test's user.

  A read-only tmpfs where mounting is allowed; else, for a non-root user,
  a directory without write permission (root ignores permission bits).
  """
  if os.geteuid() != 0:
    point = tmp_path / "readonly"
    point.mkdir()
    point.chmod(0o555)
    yield point
    point.chmod(0o755)
    return
  point = tmpfs("readonly")
  _remount_readonly(point)
  yield point


def _assert_nothing_prepared(cache: Path) -> None:
  """Preflight runs before the dataset: no TFDS records were written."""
  assert not (cache / "tfds").exists()


def test_readonly_workdir_fails_before_data_work(readonly_dir, tiny_cohort,
                                                 tmp_path):
  workdir = readonly_dir / "run"
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  with pytest.raises(InputError) as info:
    train.prepare_run(config, workdir)
  message = str(info.value)
  assert message.startswith(f"{workdir}: workdir is not writable ("), message
  _assert_nothing_prepared(tmp_path / "cache")


def test_readonly_existing_workdir(readonly_dir, tiny_cohort, tmp_path):
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  with pytest.raises(InputError, match="workdir is not writable"):
    train.prepare_run(config, readonly_dir)


def test_readonly_data_cache(readonly_dir, tiny_cohort, tmp_path):
  config = tiny_config(tiny_cohort, readonly_dir / "cache")
  with pytest.raises(InputError) as info:
    train.prepare_run(config, tmp_path / "run")
  assert str(info.value).startswith(
      f"{readonly_dir / 'cache'}: data cache (config.data.cache_dir or "
      "$PVL_JAX_CACHE) is not writable ("), str(info.value)


def test_full_disk_fails_before_data_work(tmpfs, tiny_cohort, tmp_path):
  workdir = tmpfs("small", size="1m") / "run"
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  with pytest.raises(InputError) as info:
    train.prepare_run(config, workdir)
  message = str(info.value)
  assert message.startswith(f"{workdir}: only "), message
  assert "MiB free on the workdir's filesystem, the run needs at least" in (
      message)
  _assert_nothing_prepared(tmp_path / "cache")
  # The probe file was removed again.
  assert not list(workdir.iterdir())


def test_full_disk_simulated(monkeypatch, tiny_cohort, tmp_path):
  real = shutil.disk_usage

  def nearly_full(path):
    return real(path)._replace(free=10 * 2**20)

  monkeypatch.setattr(disk_checks.shutil, "disk_usage", nearly_full)
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  with pytest.raises(InputError,
                     match=r"only 10\.0 MiB free .* needs at least 6[4-9]\."):
    train.prepare_run(config, tmp_path / "run")
  _assert_nothing_prepared(tmp_path / "cache")


def test_required_space_counts_checkpoints(tmp_path):
  config = tiny_config(tmp_path, tmp_path)
  per_checkpoint = disk_checks.checkpoint_bytes(config)
  # Params plus AdamW's two moments, float32: about 3 x 4 bytes per parameter
  # of this ~22k-parameter U-Net.
  assert 150_000 < per_checkpoint < 500_000
  fresh = disk_checks.required_free_bytes(config, tmp_path)
  assert fresh == disk_checks.MIN_FREE_BYTES + (
      config.max_checkpoints_to_keep + 1) * per_checkpoint
  for step in ("2", "4", "6"):
    (tmp_path / "checkpoints" / step).mkdir(parents=True)
  (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp").mkdir()
  resumed = disk_checks.required_free_bytes(config, tmp_path)
  assert resumed == disk_checks.MIN_FREE_BYTES + per_checkpoint


def test_planned_model_checks_only_the_fixed_allowance(tmp_path):
  config = tiny_config(tmp_path, tmp_path)
  config.model.features = ()  # left for the planner
  assert disk_checks.checkpoint_bytes(config) is None
  assert disk_checks.required_free_bytes(config, tmp_path) == (
      disk_checks.MIN_FREE_BYTES)


@pytest.mark.slow
def test_cli_readonly_workdir(readonly_dir, tiny_cohort, tmp_path, request):
  workdir = readonly_dir / "run"
  result = subprocess.run(
      [sys.executable, "-m", "pvl_jax.main", "--config=configs/joint.py:demo",
       f"--workdir={workdir}", f"--config.data.cohort_dir={tiny_cohort}",
       f"--config.data.cache_dir={tmp_path / 'cache'}",
       "--config.data.patch_size=(16,16,16)",
       "--config.model.features=(4,8,16)"],
      capture_output=True, text=True, timeout=300,
      cwd=request.config.rootpath)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert f"error: {workdir}: workdir is not writable (" in result.stderr


# --- failed checkpoint saves --------------------------------------------------


def _small_state(config, offset: float = 0.0) -> train_state.TrainState:
  """A train state with the real optimizer (cheap: no model to compile)."""
  params = {"w": jnp.arange(1000.0) + offset, "b": jnp.ones((3, 4)) * offset}
  return train_state.TrainState.create(apply_fn=None, params=params,
                                       tx=steps.make_optimizer(config))


def _data_iter(position: int):
  """A grain iterator advanced by `position` elements."""
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(position):
    next(iterator)
  return iterator


def _assert_step_restores(workdir: Path, config, step: int,
                          expected: train_state.TrainState,
                          position: int) -> None:
  """`step` is the latest checkpoint and restores exactly (state and data)."""
  manager = checkpointing.checkpoint_manager(workdir, config)
  try:
    assert manager.latest_step() == step
    data_iter = _data_iter(0)
    restored = checkpointing.restore(manager, step, _small_state(config, -1.0),
                              data_iter)
  finally:
    manager.close()
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  assert next(data_iter) == position


def _save_first_then_fail(workdir: Path, config, break_disk) -> None:
  """Saves step 2, calls break_disk(), then a step-4 save must fail."""
  manager = checkpointing.checkpoint_manager(workdir, config)
  checkpointing.save(manager, 2, _small_state(config), _data_iter(5))
  manager.wait_until_finished()
  break_disk()
  with pytest.raises(OSError):
    checkpointing.save(manager, 4, _small_state(config, 1.0), _data_iter(9))
    manager.wait_until_finished()
  try:
    manager.close()
  except OSError:
    pass  # the same failure, reported again by the pending save


def test_failed_save_keeps_previous_checkpoint(monkeypatch, tmp_path):
  config = tiny_config(tmp_path, tmp_path)
  workdir = tmp_path / "run"

  def disk_full_midway(self, directory, item=None, args=None):
    del self, item, args
    # By now orbax has started writing the train state of the new step.
    (directory / "process_0-of-1.json").write_text('{"half a fi')
    raise OSError(errno.ENOSPC, "No space left on device")

  def break_disk():
    monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save",
                        disk_full_midway)

  _save_first_then_fail(workdir, config, break_disk)
  monkeypatch.undo()
  # The half-written step only exists under orbax's temporary name.
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert names == ["2", "4.orbax-checkpoint-tmp"], names
  _assert_step_restores(workdir, config, 2, _small_state(config), 5)
  # A rerun saves step 4 again over the leftover temporary directory.
  manager = checkpointing.checkpoint_manager(workdir, config)
  checkpointing.save(manager, 4, _small_state(config, 1.0), _data_iter(9))
  manager.close()
  _assert_step_restores(workdir, config, 4, _small_state(config, 1.0), 9)


def test_disk_full_during_save_keeps_previous_checkpoint(tmpfs):
  mount = tmpfs("disk", size="4m")
  config = tiny_config(mount, mount)
  filler = mount / "filler"

  def fill_disk():
    # Unbuffered, so that closing the file has nothing left to flush.
    with open(filler, "wb", buffering=0) as f:
      with pytest.raises(OSError) as info:
        while True:
          f.write(bytes(2**14))
    assert info.value.errno == errno.ENOSPC

  _save_first_then_fail(mount / "run", config, fill_disk)
  filler.unlink()
  _assert_step_restores(mount / "run", config, 2, _small_state(config), 5)


def test_disk_turned_readonly_during_run_keeps_previous_checkpoint(
    tmpfs, monkeypatch):
  # Orbax's save threads wait for the (failed) creation of the temporary
  # directory until its coordination timeout, 300 s, before the error
  # surfaces; shortened here, the outcome is the same.
  monkeypatch.setattr(orbax_multihost, "_DEFAULT_BARRIER_TIMEOUT", 2)
  mount = tmpfs("disk", size="4m")
  config = tiny_config(mount, mount)
  _save_first_then_fail(mount / "run", config,
                        lambda: _remount_readonly(mount))
  _assert_step_restores(mount / "run", config, 2, _small_state(config), 5)


@pytest.mark.slow
def test_training_survives_failed_save_and_resumes(monkeypatch, tiny_cohort,
                                                   tmp_path):
  """A real run whose step-4 save fails resumes from step 2 and ends equal."""
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.num_steps = 4
  config, sources = train.prepare_run(config, tmp_path / "reference")
  reference = train.train(config, tmp_path / "reference", sources)

  original = grain.checkpoint.CheckpointHandler.save
  saves = []

  def fails_second_time(self, directory, item=None, args=None):
    saves.append(directory)
    if len(saves) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, directory, item=item, args=args)

  monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save",
                      fails_second_time)
  workdir = tmp_path / "run"
  with pytest.raises(OSError, match="No space left"):
    train.train(config, workdir, sources)
  monkeypatch.undo()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
      "2", "4.orbax-checkpoint-tmp"]
  resumed = train.train(config, workdir, sources)
  for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
