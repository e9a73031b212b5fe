"""Anatomical regions of template space (MNI152, RAS mm) for lesion loads.

PVL lies in the periventricular white matter, and motor outcome follows how
much of it sits on the corticospinal tract. The regions, per hemisphere
(left: x < 0, right: x > 0; the midline plane belongs to neither), are
boxes drawn from standard MNI anatomy of the lateral ventricles and the
descending motor pathway, not fitted to any cohort:

  * periventricular white matter (|x| <= 40, -10 <= z <= 45) split along y at
    the ventricles' landmarks: "frontal" (the frontal horns, in front of the
    foramina of Monro at about y = 0), "body" (the ventricular bodies, back
    to y = -30), "trigone" (the atria, level with the splenium, y -45 to
    -30) and "occipital" (the occipital horns, behind y = -45);
  * "cst": the corticospinal tract where it passes the ventricles, the
    corona radiata lateral to the ventricular bodies (15 <= |x| <= 35,
    -35 <= y <= -5, 10 <= z <= 40) and below it the posterior limb of the
    internal capsule (12 <= |x| <= 28, -25 <= y <= -5, -5 <= z < 10);

plus "cst" of both hemispheres together, since a tract lesion load is
conventionally the bilateral sum. Regions overlap (the tract runs through
the periventricular body region).
"""

import numpy as np

# (y_min, y_max) of each periventricular part, y_min inclusive.
PERIVENTRICULAR_Y_MM = {"frontal": (0.0, 45.0), "body": (-30.0, 0.0),
                        "trigone": (-45.0, -30.0),
                        "occipital": (-85.0, -45.0)}
PERIVENTRICULAR_ABS_X_MM = (0.0, 40.0)
PERIVENTRICULAR_Z_MM = (-10.0, 45.0)
# (|x|, y, z) ranges, all inclusive but the internal capsule's top, which
# is the corona radiata's bottom.
CORONA_RADIATA_MM = ((15.0, 35.0), (-35.0, -5.0), (10.0, 40.0))
INTERNAL_CAPSULE_MM = ((12.0, 28.0), (-25.0, -5.0), (-5.0, 10.0))
SIDES = ("left", "right")
REGIONS = tuple(f"{side}_{part}" for side in SIDES
                for part in (*PERIVENTRICULAR_Y_MM, "cst")) + ("cst",)


def _within(values: np.ndarray, low: float, high: float,
            high_inclusive: bool = True) -> np.ndarray:
  return (values >= low) & ((values <= high) if high_inclusive
                            else (values < high))


def region_masks(shape: tuple[int, ...],
                 affine: np.ndarray) -> dict[str, np.ndarray]:
  """The `REGIONS` of a grid, from its voxel centres' world coordinates.

  Args:
    shape: the 3D grid shape.
    affine: its voxel-to-world (RAS mm, MNI for template space) affine.

  Returns:
    Region name -> flat bool array over the grid's voxels (C order).
  """
  voxels = np.indices(shape).reshape(3, -1)
  x, y, z = affine[:3, :3] @ voxels + affine[:3, 3:]
  abs_x = np.abs(x)
  periventricular = (_within(abs_x, *PERIVENTRICULAR_ABS_X_MM) & (abs_x > 0)
                     & _within(z, *PERIVENTRICULAR_Z_MM))
  (cx, cy, cz), (ix, iy, iz) = CORONA_RADIATA_MM, INTERNAL_CAPSULE_MM
  corona = _within(abs_x, *cx) & _within(y, *cy) & _within(z, *cz)
  capsule = (_within(abs_x, *ix) & _within(y, *iy)
             & _within(z, *iz, high_inclusive=False))
  regions = {}
  for side, in_side in zip(SIDES, (x < 0, x > 0)):
    for part, y_range in PERIVENTRICULAR_Y_MM.items():
      regions[f"{side}_{part}"] = (in_side & periventricular
                                   & _within(y, *y_range, high_inclusive=False))
    regions[f"{side}_cst"] = in_side & (corona | capsule)
  regions["cst"] = regions["left_cst"] | regions["right_cst"]
  return regions
