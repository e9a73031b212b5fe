"""Reading JSON files the user points at, with errors that name the file."""

import json
import math
import os
from pathlib import Path
from typing import Any

from preprocessing.io.errors import InputError


def read_json(path: str | os.PathLike, missing_hint: str = "") -> Any:
  """The parsed content of a JSON file.

  Args:
    path: the file.
    missing_hint: appended to the "not found" message, e.g. "(is this the
      workdir of a training run?)".

  Raises:
    InputError: `<path>: not found ...` or `<path>: not valid JSON (...)`.
  """
  path = Path(path)
  if not path.is_file():
    raise InputError(f"{path}: not found" + (f" {missing_hint}"
                                             if missing_hint else ""))
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except OSError as err:
    raise InputError(f"{path}: unreadable ({err.strerror or err})") from None
  except ValueError as err:
    raise InputError(f"{path}: not valid JSON ({err})") from None


def json_number(value: float) -> float | None:
  """A float as JSON can hold it: NaN and infinities (undefined) become null."""
  return float(value) if math.isfinite(value) else None
