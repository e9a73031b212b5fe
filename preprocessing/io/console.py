"""What a person sees on the console: project messages, not library internals.

Every command calls `configure` once. Project modules log through
`logging.getLogger(__name__)`; their INFO lines appear bare (no timestamps
or source locations) on stderr, written through tqdm so they never break a
progress bar. Libraries (orbax, TFDS, grain, JAX) log at WARNING and above
only, unless the user passes absl's `--verbosity` (e.g. `--verbosity=0` for
their INFO lines). Results go to stdout, everything else to stderr.
"""

import contextlib
import logging
import sys
from typing import Iterator

from absl import logging as absl_logging
import tqdm

PROJECT_LOGGERS = ("pvl_jax", "preprocessing", "launch", "benchmarks",
                   "__main__")


class _TqdmHandler(logging.Handler):
  """Writes records through `tqdm.write`, above any active progress bar."""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      tqdm.tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


class _Formatter(logging.Formatter):
  """The message alone; warnings and errors say what they are."""

  def format(self, record: logging.LogRecord) -> str:
    message = super().format(record)
    if record.levelno >= logging.WARNING:
      return f"{record.levelname.lower()}: {message}"
    return message


def verbosity_requested() -> bool:
  """Whether the user passed absl's --verbosity (>= 0: library INFO lines)."""
  flags = absl_logging.flags.FLAGS
  return ("verbosity" in flags and flags["verbosity"].present
          and flags.verbosity >= 0)


def configure(verbose: bool | None = None) -> None:
  """Quiet libraries, readable project messages.

  Args:
    verbose: show libraries' INFO lines too; None: whether `--verbosity` was
      given on the command line.
  """
  if verbose is None:
    verbose = verbosity_requested()
  level = logging.INFO if verbose else logging.WARNING
  logging.getLogger().setLevel(level)
  absl_logging.set_verbosity(absl_logging.INFO if verbose
                             else absl_logging.WARNING)
  handler = _TqdmHandler()
  handler.setFormatter(_Formatter("%(message)s"))
  for name in PROJECT_LOGGERS:
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def is_interactive() -> bool:
  """Whether stderr is a terminal (progress bars) or a log file (lines)."""
  return sys.stderr.isatty()


@contextlib.contextmanager
def library_errors_only() -> Iterator[None]:
  """Within the block, library warnings are hidden too (errors still show).

  For library calls whose warnings are known to be harmless here, e.g.
  orbax's "Metadata file does not exist" when reading one item of a
  checkpoint written by a CheckpointManager. `--verbosity` shows them.
  """
  if verbosity_requested():
    yield
    return
  absl_logger = logging.getLogger("absl")
  previous = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_logger.setLevel(previous)
