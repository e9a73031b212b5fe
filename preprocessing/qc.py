"""Quality control of preprocessing: a figure per subject and a CSV of figures.

The figure shows, left to right: the raw input slice, the native brain mask
on it, the corrected template-space image, and the lesion mask on it. The CSV
(`steps.csv`) has one row per subject with the numbers that tell whether a
step went wrong: the registration's final metric value, seconds per step, the
brain volume, the white-matter coefficient of variation before and after N4,
and the lesion volume before and after resampling.
"""

import os

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from preprocessing.io import figures
from preprocessing.io import tables

STEPS = ("load", "register", "skull_strip", "bias_field", "resample",
         "normalize_write")
COLUMNS = (("participant_id", "status", "registration_metric")
           + tuple(f"seconds_{step}" for step in STEPS)
           + ("seconds_total", "brain_volume_ml", "wm_cv_before_n4",
              "wm_cv_after_n4", "lesion_volume_native_ml",
              "lesion_volume_template_ml"))


def white_matter_cv(image: np.ndarray, white_matter: np.ndarray) -> float:
  """Coefficient of variation (std / mean) of `image` inside `white_matter`.

  White matter is one tissue, so its intensity spread is noise plus bias; a
  good bias correction leaves mostly the noise.

  Args:
    image: a volume with positive intensities in white matter.
    white_matter: boolean mask of the same shape, not empty.

  Returns:
    The coefficient of variation.
  """
  values = image[white_matter].astype(np.float64)
  return float(values.std() / values.mean())


def write_figure(path: str | os.PathLike, native: np.ndarray,
                 native_affine: np.ndarray, native_brain: np.ndarray,
                 image: np.ndarray, lesion: np.ndarray,
                 title: str) -> None:
  """Writes the four-panel QC PNG of one subject.

  Args:
    path: destination .png (written atomically).
    native: the raw native scan.
    native_affine: its voxel-to-RAS affine (used to show an axial slice
      whatever the scan's voxel order).
    native_brain: the native brain mask.
    image: the preprocessed template-space image (RAS voxel order).
    lesion: the preprocessed lesion mask on `image`'s grid.
    title: the figure title (subject id and key figures).
  """
  native_ras, brain_ras = _as_ras(native_affine, native, native_brain)
  native_slice = _centre_slice(brain_ras)
  # The slice with the most lesion, so that the overlay shows something.
  areas = lesion.sum(axis=(0, 1))
  slice_ = int(np.argmax(areas)) if areas.any() else image.shape[2] // 2
  fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
  panels = (("input", native_ras[..., native_slice], None),
            ("brain mask", native_ras[..., native_slice],
             brain_ras[..., native_slice]),
            ("corrected, template space", image[..., slice_], None),
            ("lesion mask", image[..., slice_], lesion[..., slice_]))
  for ax, (name, background, overlay) in zip(axes, panels):
    ax.imshow(background.T, cmap="gray", origin="lower")
    if overlay is not None and overlay.any():
      ax.contour(overlay.T.astype(float), levels=[0.5], colors="r",
                 linewidths=0.8)
    ax.set_title(name)
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  figures.save_png(fig, path, dpi=80, tight=False)


def format_steps_csv(rows: list[dict[str, object]]) -> str:
  """The text of `steps.csv`: columns `COLUMNS`, numbers to 4 digits."""
  return tables.csv_text(
      rows, columns=COLUMNS,
      fmt=lambda value: f"{value:.4g}" if isinstance(value, float) else value)


def _as_ras(affine: np.ndarray, *volumes: np.ndarray) -> list[np.ndarray]:
  """The volumes with their axes permuted/flipped to the closest RAS order."""
  orientation = nib.orientations.io_orientation(affine)
  return [nib.orientations.apply_orientation(v, orientation) for v in volumes]


def _centre_slice(mask: np.ndarray) -> int:
  """The axial index through the middle of `mask` (volume middle if empty)."""
  z = np.nonzero(mask.any(axis=(0, 1)))[0]
  return int((z[0] + z[-1]) // 2) if z.size else mask.shape[2] // 2
