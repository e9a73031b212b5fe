"""Checks of the masks and voxel sizes that the segmentation metrics take.

Masks are binary numpy arrays (bool, or numbers that are all 0 or 1) of
equal shape, 2D or 3D; a spacing is the voxel size in mm along each array
axis.
"""

import numpy as np
from numpy.typing import ArrayLike


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
  """Returns `mask` as bool, refusing values other than 0 and 1."""
  if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
    raise ValueError(
        f"{name} is not binary: it holds values other than 0 and 1")
  return mask.astype(bool, copy=False)


def as_binary_pair(pred: ArrayLike,
                   ref: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Checks `pred` and `ref` are binary volumes of one shape; returns bools."""
  pred, ref = np.asarray(pred), np.asarray(ref)
  if pred.shape != ref.shape:
    raise ValueError(f"shape mismatch: pred {pred.shape} vs ref {ref.shape}")
  if pred.ndim not in (2, 3):
    raise ValueError(f"expected 2D or 3D volumes, got {pred.ndim} dimensions")
  return _as_bool(pred, "pred"), _as_bool(ref, "ref")


def as_spacing(spacing: ArrayLike, ndim: int) -> np.ndarray:
  """Checks that `spacing` gives one positive, finite voxel size per axis."""
  spacing = np.asarray(spacing, dtype=float)
  if spacing.shape != (ndim,):
    raise ValueError(f"spacing must give one voxel size per axis ({ndim}), "
                     f"got {spacing.tolist()}")
  if not np.all(np.isfinite(spacing) & (spacing > 0)):
    raise ValueError(
        f"spacing must be positive and finite, got {spacing.tolist()}")
  return spacing
