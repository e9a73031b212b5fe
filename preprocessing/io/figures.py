"""PNG figures written atomically (matplotlib's Agg backend, no display)."""

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from preprocessing.io.atomic import atomic_write_bytes  # pylint: disable=g-import-not-at-top


def save_png(fig: plt.Figure, path: str | os.PathLike, dpi: int = 100,
             tight: bool = True) -> None:
  """Renders `fig` to PNG, writes it atomically and closes the figure.

  Args:
    fig: the figure.
    path: the output file.
    dpi: resolution.
    tight: crop the margins (`bbox_inches="tight"`).
  """
  buffer = io.BytesIO()
  # No "Software" (version) text in the PNG: identical figures, identical
  # files.
  fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None},
              bbox_inches="tight" if tight else None)
  plt.close(fig)
  atomic_write_bytes(path, buffer.getvalue())
