"""A visual QC report: one self-contained HTML page, a row per scan.

As fMRIPrep and MRIQC do, each scan gets a picture to look at: the axial
slices with the most predicted lesion (red; a reference mask, where there is
one, outlined in green), beside its lesion volume and count, P(bad hand
function) and any warning (an empty prediction, a brain mask far from the
template's). The images are PNGs embedded as data URIs and the styles are
inline, so the page opens offline, with no script, font or file beside it.

`pvl_jax.predict` writes one per run (`qc_report.html` in its output
folder); training writes one for its test split (`<workdir>/qc_report.html`,
`write_test_split`).
"""

from collections.abc import Mapping, Sequence
import base64
import dataclasses
import datetime
import html
import io
import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import nibabel as nib
import numpy as np
from scipy import ndimage

from preprocessing.io.atomic import atomic_write_text
from pvl_jax.data import records

REPORT_FILE = "qc_report.html"
NUM_SLICES = 3
# Below this Dice with the template's brain mask the scan's brain mask (the
# template's, carried through the registration) is cut off by the scan's
# field of view or misplaced: a failed registration. Good registrations of
# the synthetic raw scans reach about 0.99.
MIN_BRAIN_TEMPLATE_DICE = 0.9
# 26-connectivity, as the lesion-wise metrics count lesions.
_CONNECTIVITY = np.ones((3, 3, 3), bool)
_PANEL_INCHES = 2.0
_DPI = 80


@dataclasses.dataclass(frozen=True)
class Row:
  """One scan's row.

  Attributes:
    name: what the scan is, e.g. "sub-001 ses-01" or a file name.
    overlay_png: the slices' picture (`overlay_png`).
    lesion_volume_ml: predicted lesion volume.
    lesion_count: predicted lesions (26-connected).
    p_bad: P(bad hand function); None for a run with r = 0.
    warnings: what to look at (`warnings_for`).
  """
  name: str
  overlay_png: bytes
  lesion_volume_ml: float
  lesion_count: int
  p_bad: float | None
  warnings: tuple[str, ...] = ()


def lesion_stats(mask: np.ndarray, affine: np.ndarray) -> tuple[float, int]:
  """(lesion volume in ml, number of 26-connected lesions) of a mask."""
  voxel_ml = abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000
  _, count = ndimage.label(np.asarray(mask) > 0, structure=_CONNECTIVITY)
  return float((np.asarray(mask) > 0).sum() * voxel_ml), int(count)


def warnings_for(lesion_count: int, brain_template_dice: float | None = None
                 ) -> list[str]:
  """The warnings of a scan's prediction."""
  found = []
  if lesion_count == 0:
    found.append("empty prediction (no lesion)")
  if (brain_template_dice is not None
      and brain_template_dice < MIN_BRAIN_TEMPLATE_DICE):
    found.append(f"brain mask far from the template (Dice "
                 f"{brain_template_dice:.2f} < {MIN_BRAIN_TEMPLATE_DICE})")
  return found


def overlay_png(image: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                reference: np.ndarray | None = None,
                num_slices: int = NUM_SLICES) -> bytes:
  """The axial slices with the most lesion, lesion in red, as a PNG.

  Args:
    image: the scan (X, Y, Z).
    mask: the predicted lesion mask on the same grid.
    affine: the grid's affine; the slices are shown as radiologists read
      them (RAS axes, whatever the storage order).
    reference: a reference lesion mask, outlined in green; None: none.
    num_slices: how many slices. Without lesions: slices through the middle
      of the image's non-zero extent.

  Returns:
    PNG bytes.
  """
  volumes = [image, mask] + ([] if reference is None else [reference])
  ornt = nib.orientations.io_orientation(affine)
  volumes = [nib.orientations.apply_orientation(np.asarray(v, np.float32),
                                                ornt) for v in volumes]
  spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[
      ornt[:, 0].astype(int)]
  image, mask = volumes[0], volumes[1] > 0
  outline = volumes[2] > 0 if reference is not None else None
  slices = _slices_to_show(image, mask | (outline if outline is not None
                                          else False), num_slices)
  inside = image[image != 0]
  low, high = (np.percentile(inside, (1, 99)) if inside.size
               else (0.0, 1.0))
  figure = Figure(figsize=(_PANEL_INCHES * len(slices), _PANEL_INCHES),
                  dpi=_DPI)
  FigureCanvasAgg(figure)
  for column, z in enumerate(slices):
    axes = figure.add_subplot(1, len(slices), column + 1)
    # Rows are y (anterior up), columns x: imshow wants (rows, columns).
    axes.imshow(image[:, :, z].T, cmap="gray", vmin=low, vmax=high,
                origin="lower", aspect=spacing[1] / spacing[0],
                interpolation="nearest")
    lesion = np.ma.masked_where(~mask[:, :, z].T, mask[:, :, z].T)
    axes.imshow(lesion, cmap="autumn", alpha=0.6, origin="lower",
                aspect=spacing[1] / spacing[0], interpolation="nearest")
    if outline is not None and outline[:, :, z].any():
      axes.contour(outline[:, :, z].T, levels=[0.5], colors="lime",
                   linewidths=0.8)
    axes.set_title(f"z = {z}", fontsize=8)
    axes.set_axis_off()
  figure.subplots_adjust(left=0, right=1, bottom=0, top=0.9, wspace=0.02)
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  return buffer.getvalue()


def _slices_to_show(image: np.ndarray, lesion: np.ndarray,
                    num_slices: int) -> list[int]:
  """The axial slices with the most lesion voxels (in order), else middle
  slices of the image's non-zero extent."""
  per_slice = lesion.sum(axis=(0, 1))
  if per_slice.any():
    top = np.argsort(-per_slice, kind="stable")[:num_slices]
    return sorted(int(z) for z in top if per_slice[z] > 0)
  filled = np.flatnonzero(np.abs(image).sum(axis=(0, 1)) > 0)
  first, last = (filled[0], filled[-1]) if filled.size else (
      0, image.shape[2] - 1)
  return sorted({int(round(first + (last - first) * f))
                 for f in np.linspace(0.35, 0.65, num_slices)})


def write(path: str | os.PathLike, title: str, rows: Sequence[Row],
          about: Sequence[str] = ()) -> Path:
  """Writes the report (atomically).

  Args:
    path: the HTML file.
    title: the page's heading.
    rows: one per scan, in the order shown.
    about: lines under the heading (the model run, the data).

  Returns:
    The path.
  """
  path = Path(path)
  flagged = sum(bool(row.warnings) for row in rows)
  lines = [*about, f"{len(rows)} scan(s), {flagged} with a warning; written "
           f"{datetime.datetime.now().isoformat(timespec='seconds')}"]
  body = "\n".join(_row_html(row) for row in rows)
  page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: middle; }}
th {{ background: #eee; }}
td.num {{ text-align: right; }}
tr.warn td {{ background: #fff3e0; }}
td.warnings {{ color: #b00020; }}
p.about {{ margin: 0.2em 0; color: #555; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
{"".join(f'<p class="about">{html.escape(line)}</p>' for line in lines)}
<p class="about">Red: predicted lesion; green outline: reference mask (where
there is one). Slices: the axial slices with the most lesion.</p>
<table>
<thead><tr><th>scan</th><th>slices with the most lesion</th>
<th>lesion volume (ml)</th><th>lesions</th><th>P(bad hand function)</th>
<th>warnings</th></tr></thead>
<tbody>
{body}
</tbody>
</table>
</body>
</html>
"""
  atomic_write_text(path, page)
  return path


def _row_html(row: Row) -> str:
  data = base64.b64encode(row.overlay_png).decode("ascii")
  name = html.escape(row.name)
  prob = "n/a" if row.p_bad is None else f"{row.p_bad:.3f}"
  return (f'<tr{" class=warn" if row.warnings else ""}>'
          f"<td>{name}</td>"
          f'<td><img src="data:image/png;base64,{data}" alt="{name}"></td>'
          f'<td class="num">{row.lesion_volume_ml:.2f}</td>'
          f'<td class="num">{row.lesion_count}</td>'
          f'<td class="num">{prob}</td>'
          f'<td class="warnings">{html.escape("; ".join(row.warnings))}</td>'
          "</tr>")


def write_test_split(source: Any, split: Mapping[str, Any],
                     results: Mapping[str, Any], workdir: str | os.PathLike
                     ) -> Path:
  """The report of a training run's test split (`<workdir>/qc_report.html`).

  Args:
    source: the test split's records (image, lesion_mask, affine).
    split: `evaluate_run.predict_split`'s output, with the final
      (postprocessed) predictions.
    results: the split's results (per-subject rows, with
      `hand_function_prob` for r > 0).
    workdir: the run.
  """
  prob = {row["subject_id"]: row.get("hand_function_prob")
          for row in results["per_subject"]}
  rows = []
  for i in range(len(source)):
    record = source[i]
    subject = records.subject_id(record)
    mask = np.asarray(split["predictions"][subject])
    affine = np.asarray(record["affine"])
    volume, count = lesion_stats(mask, affine)
    rows.append(Row(
        name=subject,
        overlay_png=overlay_png(np.asarray(record["image"])[..., 0], mask,
                                affine, reference=split["references"][subject]),
        lesion_volume_ml=volume, lesion_count=count, p_bad=prob.get(subject),
        warnings=tuple(warnings_for(count))))
  return write(Path(workdir) / REPORT_FILE,
               f"Test split of {Path(workdir).resolve().name}", rows,
               [f"Training run {Path(workdir).resolve()}; predictions after "
                "the postprocessing chosen on validation"])
