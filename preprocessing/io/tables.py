"""Markdown and CSV tables: the one writer every report and benchmark uses."""

from collections.abc import Callable, Mapping, Sequence
import csv
import io
import math
from pathlib import Path
from typing import Any

from preprocessing.io.atomic import atomic_write_text

MISSING = "n/a"  # a value the inputs do not hold


def format_cell(value: Any, digits: int = 3) -> str:
  """A table cell: floats to `digits` decimals, None and NaN as "n/a"."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return MISSING
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every key of the rows, in order of first appearance."""
  return list(dict.fromkeys(key for row in rows for key in row))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   fmt: Callable[[Any], str] = format_cell) -> str:
  """A markdown table; each cell goes through `fmt` (strings pass as they are).

  Args:
    header: the column names.
    rows: one sequence of cells per row, as long as `header`.
    fmt: formats a cell that is not already a string.

  Returns:
    The table, one line per row, ending with a newline.
  """
  def cell(value: Any) -> str:
    return value if isinstance(value, str) else fmt(value)

  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(" --- " for _ in header) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def markdown_from_dicts(rows: Sequence[Mapping[str, Any]],
                        fmt: Callable[[Any], str] = format_cell,
                        columns: Sequence[str] | None = None) -> str:
  """A markdown table of dict rows (columns: `columns`, else every key)."""
  columns = list(columns) if columns is not None else columns_of(rows)
  return markdown_table(columns, [[row.get(c) for c in columns]
                                  for row in rows], fmt)


def csv_text(rows: Sequence[Mapping[str, Any]],
             columns: Sequence[str] | None = None,
             fmt: Callable[[Any], Any] | None = None,
             delimiter: str = ",") -> str:
  """The rows as CSV text (columns: `columns` or every key in order).

  Args:
    rows: dict rows; a key missing from a row gives an empty cell.
    columns: the column order; default every key in order of appearance.
    fmt: optional formatter applied to every present value.
    delimiter: "," for CSV, "\\t" for TSV.
  """
  columns = list(columns) if columns is not None else columns_of(rows)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, restval="",
                          extrasaction="ignore", delimiter=delimiter,
                          lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: fmt(v) if fmt else v for k, v in row.items()})
  return buffer.getvalue()


def write_table(out_dir: Path, stem: str, rows: Sequence[Mapping[str, Any]],
                markdown: str) -> None:
  """Writes OUT_DIR/stem.md and stem.csv atomically; prints the markdown."""
  atomic_write_text(Path(out_dir) / f"{stem}.md", markdown)
  atomic_write_text(Path(out_dir) / f"{stem}.csv", csv_text(rows))
  print(markdown)
