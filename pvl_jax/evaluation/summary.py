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


def format_mean_std(mean: float | None, std: float | None,
                    digits: int = 3) -> str:
  """"mean ± std"; the mean alone when std is undefined; "n/a" without mean.

  Args:
    mean: the mean, or None / NaN when there was no value.
    std: the sample std, or None / NaN when undefined (fewer than 2 values).
    digits: decimals.
  """
  if mean is None or math.isnan(mean):
    return "n/a"
  text = f"{mean:.{digits}f}"
  if std is not None and not math.isnan(std):
    text += f" ± {std:.{digits}f}"
  return text
