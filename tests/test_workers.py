"""Worker counts follow the CPUs this process may use, never the machine's."""

import concurrent.futures
import logging
import os

import pytest

from configs import joint
from preprocessing import pipeline
from preprocessing.io import workers
from preprocessing.synthetic import cohort as cohort_lib
from pvl_jax.data import dataset
from pvl_jax.data import input_pipeline

USABLE = 3


class _PoolStarted(Exception):
  """Stops a function once it has sized its process pool."""


@pytest.fixture
def three_of_many_cpus(monkeypatch):
  """A shared node: 128 CPUs, 3 of them allotted to this process."""
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(USABLE)))
  monkeypatch.setattr(os, "cpu_count", lambda: 128)


@pytest.fixture
def pool_sizes(monkeypatch):
  """max_workers of every process pool started; starting one stops the code."""
  sizes = []

  def pool(max_workers=None, **kwargs):
    del kwargs
    sizes.append(max_workers)
    raise _PoolStarted

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", pool)
  return sizes


def test_counts_are_capped_by_the_affinity(three_of_many_cpus):
  del three_of_many_cpus
  assert workers.available_cpus() == USABLE
  assert workers.worker_count() == USABLE
  assert workers.worker_count(8) == USABLE
  assert workers.worker_count(2) == 2
  assert workers.worker_count(0) == 0


def test_cohort_generation_and_preprocessing_pools(
    three_of_many_cpus, pool_sizes, tiny_cohort, tmp_path):
  del three_of_many_cpus
  with pytest.raises(_PoolStarted):
    cohort_lib.generate_cohort(tmp_path / "synthetic", 10, seed=0,
                               num_workers=64, progress=False)
  with pytest.raises(_PoolStarted):
    pipeline.preprocess_cohort(tiny_cohort, tmp_path / "preprocessed")
  assert len(pool_sizes) == 2
  assert all(size <= USABLE for size in pool_sizes)


def test_training_cohort_and_grain(
    three_of_many_cpus, monkeypatch, caplog, tiny_builder, tmp_path):
  del three_of_many_cpus
  requested = {}

  def generate(*args, num_workers, **kwargs):
    del args, kwargs
    requested["generate"] = num_workers

  monkeypatch.setattr(cohort_lib, "generate_cohort", generate)
  config = joint.get_config()
  config.data.cache_dir = str(tmp_path)
  dataset.synthetic_cohort(config)
  assert requested == {"generate": USABLE}

  config.data.patch_size = (16, 16, 16)
  assert config.data.num_workers > USABLE
  with caplog.at_level(logging.INFO, logger=input_pipeline.__name__):
    input_pipeline.train_dataset(tiny_builder.as_data_source("fold0"),
                                 config.data, 2, seed=0)
  assert f"input pipeline: {USABLE} worker processes" in caplog.text
