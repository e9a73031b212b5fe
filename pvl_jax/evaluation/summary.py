"""Summary statistics over folds, seeds or subjects: one rule everywhere.

Spread is the sample standard deviation (ddof = 1). With fewer than two
values it is undefined: `std` is NaN and `format_mean_std` shows the mean
alone, so a single run never looks like a spread of zero.
"""

from collections.abc import Iterable
import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean, sample standard deviation (NaN below two values) and count."""
  mean: float
  std: float
  n: int


def summarize(values: Iterable[float]) -> Summary:
  """Mean and sample std of the finite (non-NaN, non-None) values.

  Args:
    values: the numbers; None and NaN are left out (a metric undefined for a
      subject or fold).

  Returns:
    Summary; mean is NaN when no value is left.
  """
  kept = np.asarray([v for v in values
                     if v is not None and not math.isnan(v)], np.float64)
  n = int(kept.size)
  mean = float(kept.mean()) if n else math.nan
  std = float(kept.std(ddof=1)) if n > 1 else math.nan
  return Summary(mean, std, n)


def format_mean_std(summary: Summary, digits: int = 3) -> str:
  """"mean ± std", or the mean alone when the std is undefined; "n/a" if empty."""
  if summary.n == 0:
    return "n/a"
  text = f"{summary.mean:.{digits}f}"
  if not math.isnan(summary.std):
    text += f" ± {summary.std:.{digits}f}"
  return text
