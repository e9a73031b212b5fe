"""Anatomical regions of template space (MNI152, RAS mm) for lesion loads.

PVL lies in the periventricular white matter, and motor outcome follows how
much of it sits on the corticospinal tract. The built-in regions come from a
published white-matter atlas, the JHU ICBM-DTI-81 white-matter labels (Mori
et al. 2005, "MRI Atlas of Human White Matter", Elsevier; Wakana et al. 2007,
NeuroImage 36:630-644; Hua et al. 2008, NeuroImage 39:336-347), through the
reference point that FSL's description of the atlas
(`$FSLDIR/data/atlases/JHU-labels.xml`) gives each label as a voxel (i, j, k)
of FSL's 1 mm MNI152 grid, i.e. MNI (90 - i, j - 126, k - 72) mm:

  label (JHU index right/left)          right voxel    left voxel
  posterior limb of internal capsule    (66,108,85)    (113,108,85)  19/20
  superior corona radiata               (63,109,96)    (116,109,96)  25/26
  anterior corona radiata               (69,163,73)    (110,163,73)  23/24
  posterior corona radiata              (64,99,99)     (115,99,99)   27/28
  tapetum                               (60,78,86)     (117,76,87)   47/48
  posterior thalamic radiation          (57,64,73)     (122,64,73)   29/30

(MNI mm: internal capsule (24,-18,13)/(-23,-18,13), superior corona radiata
(27,-17,24)/(-26,-17,24), anterior corona radiata (21,37,1)/(-20,37,1),
posterior corona radiata (26,-27,27)/(-25,-27,27), tapetum (30,-48,14)/
(-27,-50,15), posterior thalamic radiation (33,-62,1)/(-32,-62,1).)

Per hemisphere the regions are:

  * "cst": the corticospinal tract where PVL reaches it, the segment from
    the posterior limb of the internal capsule up to the superior corona
    radiata, thickened by `RADIUS_MM`;
  * four periventricular zones, a `RADIUS_MM` ball at the label that lines
    each part of the lateral ventricle (Mori et al.): "acr" (anterior
    corona radiata, beside the frontal horn), "pcr" (posterior corona
    radiata, beside the body), "tapetum" (the atrium's wall) and "ptr"
    (posterior thalamic radiation, beside the occipital horn).

`RADIUS_MM` is ours, not the atlas's: balls of 6 mm (0.9 ml) are smaller than
the labels they stand for, so the loads count lesions near each label's
reference point, not over its whole extent. A study with the atlas itself (or
any label map in the masks' grid) passes it instead (`atlas.load_atlas`).

The tract load is the union of the `RegionSet.tract` regions (here both
hemispheres' "cst"), since a tract lesion load is conventionally bilateral.
Regions may overlap.
"""

import dataclasses
from typing import Sequence

import numpy as np

from preprocessing.io.errors import InputError

# FSL's 1 mm MNI152 grid (MNI152_T1_1mm): voxel (i, j, k) -> MNI mm.
FSL_MNI_1MM_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126],
                               [0, 0, 1, -72], [0, 0, 0, 1]])
# JHU-labels.xml reference voxels, (right, left), see the module docstring.
JHU_REFERENCE_VOXELS = {
    "internal_capsule": ((66, 108, 85), (113, 108, 85)),
    "superior_corona_radiata": ((63, 109, 96), (116, 109, 96)),
    "acr": ((69, 163, 73), (110, 163, 73)),
    "pcr": ((64, 99, 99), (115, 99, 99)),
    "tapetum": ((60, 78, 86), (117, 76, 87)),
    "ptr": ((57, 64, 73), (122, 64, 73)),
}
PERIVENTRICULAR = ("acr", "pcr", "tapetum", "ptr")
RADIUS_MM = 6.0
SIDES = ("left", "right")
BUILTIN_TRACT = ("left_cst", "right_cst")
BUILTIN_SOURCE = "built-in regions (JHU ICBM-DTI-81 reference points)"


@dataclasses.dataclass(frozen=True)
class RegionSet:
  """Named regions of one grid and which of them form the tract.

  Attributes:
    masks: region name -> flat bool array over the grid's voxels (C order),
      in lesion-load column order.
    tract: the names whose union is the tract load.
    source: where the regions come from, named in errors and the output.
  """
  masks: dict[str, np.ndarray]
  tract: tuple[str, ...]
  source: str

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.masks)

  def tract_mask(self) -> np.ndarray:
    return np.logical_or.reduce([self.masks[name] for name in self.tract])

  def select(self, names: Sequence[str] = (),
             tract: Sequence[str] = ()) -> "RegionSet":
    """The named regions only (default all) and a new tract (default kept).

    Raises:
      InputError: a name that the set lacks, naming the source.
    """
    names = tuple(names) or self.names
    tract = tuple(tract) or self.tract
    missing = [n for n in dict.fromkeys(names + tract) if n not in self.masks]
    if missing:
      available = ", ".join(self.names)
      raise InputError(f"{self.source}: no region named "
                       f"{', '.join(map(repr, missing))} (available: "
                       f"{available})")
    return RegionSet({n: self.masks[n] for n in dict.fromkeys(names)},
                     tract, self.source)


def mni_mm(voxel: Sequence[int]) -> np.ndarray:
  """A voxel of FSL's 1 mm MNI152 grid in MNI millimetres."""
  return (FSL_MNI_1MM_AFFINE @ np.append(np.asarray(voxel, float), 1.0))[:3]


def _distance_to_segment(points: np.ndarray, start: np.ndarray,
                         end: np.ndarray) -> np.ndarray:
  """Euclidean distance (mm) of (N, 3) points to the segment start-end."""
  direction = end - start
  t = np.clip((points - start) @ direction / (direction @ direction), 0, 1)
  return np.linalg.norm(points - (start + t[:, None] * direction), axis=1)


def builtin_regions(shape: tuple[int, ...], affine: np.ndarray) -> RegionSet:
  """The built-in regions of a grid, from its voxel centres' coordinates.

  Args:
    shape: the 3D grid shape.
    affine: its voxel-to-world (RAS mm, MNI for template space) affine.

  Returns:
    Per side, "<side>_cst" and "<side>_<zone>" for each `PERIVENTRICULAR`
    zone; the tract is `BUILTIN_TRACT`.
  """
  voxels = np.indices(shape).reshape(3, -1)
  points = (affine[:3, :3] @ voxels + affine[:3, 3:]).T
  masks = {}
  for side, index in (("left", 1), ("right", 0)):
    at = {label: mni_mm(voxels_by_side[index])
          for label, voxels_by_side in JHU_REFERENCE_VOXELS.items()}
    masks[f"{side}_cst"] = _distance_to_segment(
        points, at["internal_capsule"],
        at["superior_corona_radiata"]) <= RADIUS_MM
    for zone in PERIVENTRICULAR:
      masks[f"{side}_{zone}"] = (np.linalg.norm(points - at[zone], axis=1)
                                 <= RADIUS_MM)
  return RegionSet(masks, BUILTIN_TRACT, BUILTIN_SOURCE)
