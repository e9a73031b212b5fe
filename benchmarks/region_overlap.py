"""How much of the synthetic generator's answer the baseline's regions hold.

Usage:
  python -m benchmarks.region_overlap [--resolution_mm=2]

The only place in the project that reads the generator's hidden motor ROI
(`preprocessing.synthetic.lesions.motor_roi`, the two ellipsoids whose
lesion volume draws the hand-function label): evaluation code never does.
The baseline's built-in regions (`pvl_jax.handfunction.regions`) come from a
published atlas; this measures their overlap with that ROI on the template
grid the synthetic cohort lives on, so a reader sees how much prior knowledge
of the label model the lesion-load baseline is handed.

Prints one markdown table: per region, its volume and the Dice coefficient
with the motor ROI of its own hemisphere (x < 0 left, x > 0 right; for the
tract, both hemispheres), and the share of that ROI it covers.
"""

from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np

from preprocessing.io import tables
from preprocessing.synthetic import anatomy
from preprocessing.synthetic import lesions
from pvl_jax.handfunction import regions

FLAGS = flags.FLAGS
flags.DEFINE_integer("resolution_mm", 2, "Template grid (1 or 2 mm), that of "
                     "the synthetic cohort.")


def overlap_rows(resolution_mm: int) -> list[list[str]]:
  """One row per built-in region, then the tract, with overlaps."""
  template = anatomy.load_template(resolution_mm)
  roi = lesions.motor_roi(template).reshape(-1)
  x = template.mm[..., 0].reshape(-1)
  sides = {"left": x < 0, "right": x > 0}
  region_set = regions.builtin_regions(template.brain.shape, template.affine)
  voxel_ml = resolution_mm ** 3 / 1000
  masks = dict(region_set.masks)
  masks["tract (" + " + ".join(region_set.tract) + ")"] = (
      region_set.tract_mask())
  rows = []
  for name, mask in masks.items():
    side = next((s for s in sides if name.startswith(s + "_")), None)
    target = roi & sides[side] if side else roi
    shared = np.count_nonzero(mask & target)
    dice = 2 * shared / (np.count_nonzero(mask) + np.count_nonzero(target))
    rows.append([name, f"{np.count_nonzero(mask) * voxel_ml:.2f}",
                 side or "both", f"{dice:.3f}",
                 f"{shared / np.count_nonzero(target):.3f}"])
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(tables.markdown_table(
      ["region", "volume (ml)", "motor ROI of", "Dice", "ROI covered"],
      overlap_rows(FLAGS.resolution_mm)))


if __name__ == "__main__":
  app.run(main)
