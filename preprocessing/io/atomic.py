"""Atomic output: nothing half-written is ever visible under its final name."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary directory that is renamed to `final_path` on success.

  The temporary directory is a sibling of `final_path` (same filesystem, so the
  rename is atomic). On any exception it is removed and `final_path` is left
  untouched.

  Args:
    final_path: where the finished directory should appear. Must not exist.

  Yields:
    The temporary directory to fill.
  """
  final_path = Path(final_path)
  if final_path.exists():
    raise FileExistsError(f"{final_path}: already exists")
  final_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.tmp-",
                              dir=final_path.parent))
  try:
    yield tmp
    os.replace(tmp, final_path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file and an atomic rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  atomic_write_bytes(path, text.encode("utf-8"))
