"""Shared test setup: absl flags parsed (grain worker processes need them)."""

import sys

from absl import flags


def pytest_configure(config):
  del config
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])
