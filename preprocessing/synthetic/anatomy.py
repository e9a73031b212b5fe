"""A subject's anatomy: the MNI152 maps, deformed, with enlarged ventricles.

Steps 1 and 2 of the model (see the package docstring): the template's
tissue maps warped by a random smooth displacement field, whose affine part
is left out (it belongs to the head's pose, see `acquisition`), then the
lateral ventricles grown into the adjacent tissue by a spatially varying
margin, as PVL brings.
"""

import dataclasses
import functools

import numpy as np
from scipy import ndimage

from preprocessing.synthetic import random_fields
from preprocessing.synthetic.params import CohortParams

# A point inside the lateral ventricles (MNI mm): the lateral ventricles are
# the connected component of in-brain voxels with GM + WM < 0.5 that
# contains it (about 18 ml; its neighbour through the foramina is midline CSF
# and cisterns).
VENTRICLE_SEED_MM = (0.0, -15.0, 14.0)


@dataclasses.dataclass(frozen=True)
class Template:
  """The template's maps at one resolution (float32, template grid)."""
  affine: np.ndarray
  gm: np.ndarray
  wm: np.ndarray
  brain: np.ndarray
  ventricles: np.ndarray
  mm: np.ndarray  # (X, Y, Z, 3) MNI coordinates of every voxel


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """One subject's deformed anatomy on the template grid.

  Attributes:
    gm: grey-matter fraction (0 in the ventricles).
    wm: white-matter fraction (0 in the ventricles).
    brain: boolean brain mask.
    ventricles: boolean mask of the enlarged lateral ventricles.
    wall_mm: distance (mm) of every voxel from the ventricles.
  """
  gm: np.ndarray
  wm: np.ndarray
  brain: np.ndarray
  ventricles: np.ndarray
  wall_mm: np.ndarray


@functools.lru_cache(maxsize=2)
def load_template(resolution_mm: int) -> Template:
  """Loads (once per process) the nilearn MNI152 2009 maps and ventricles."""
  from nilearn import datasets  # pylint: disable=g-import-not-at-top
  brain_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
  gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata()
  wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata()
  brain = brain_img.get_fdata() > 0
  affine = brain_img.affine
  grid = np.stack(np.meshgrid(*[np.arange(s) for s in brain.shape],
                              indexing="ij"), -1)
  mm = (grid @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)
  # The ventricles: the large (> 5 ml) CSF-like component whose centroid is
  # nearest the seed point (the midline CSF component touches it too).
  components, count = ndimage.label(brain & (gm + wm < 0.5))
  labels = np.arange(1, count + 1)
  sizes_ml = ndimage.sum(brain, components, labels) * resolution_mm ** 3 / 1e3
  centroids = np.stack([ndimage.mean(mm[..., axis], components, labels)
                        for axis in range(3)], -1)
  distance = np.linalg.norm(centroids - VENTRICLE_SEED_MM, axis=-1)
  label = labels[np.argmin(np.where(sizes_ml > 5, distance, np.inf))]
  return Template(affine=affine, gm=gm.astype(np.float32),
                  wm=wm.astype(np.float32), brain=brain,
                  ventricles=components == label, mm=mm)


def deformed_anatomy(rng: np.random.Generator, params: CohortParams,
                     template: Template) -> Anatomy:
  """Draws a subject's anatomy (steps 1 and 2 of the model).

  Args:
    rng: the subject's stream (draws the deformation, then the growth).
    params: the cohort's parameters.
    template: `load_template(params.resolution_mm)`.

  Returns:
    The deformed anatomy with enlarged ventricles.
  """
  shape = template.brain.shape
  vox_mm = float(params.resolution_mm)
  # 1. Smooth deformation of the template anatomy, less its affine part:
  # that belongs to the head's pose (raw space, `acquisition`), and without
  # it the template-space subject is aligned to the template as an affine
  # registration would align it, so raw scans have one true affine answer.
  displacement = np.stack([random_fields.smooth_noise(rng, shape, 5)
                           for _ in range(3)]) * (params.deform_mm / vox_mm)
  coords = np.indices(shape, dtype=np.float32) + _non_affine_part(
      displacement, template.brain)
  gm = _warp(template.gm, coords)
  wm = _warp(template.wm, coords)
  brain = _warp(template.brain, coords) > 0.5
  ventricles = _warp(template.ventricles, coords) > 0.5

  # 2. Ventriculomegaly with irregular walls; the grown part becomes CSF.
  outside_mm = ndimage.distance_transform_edt(~ventricles, sampling=vox_mm)
  growth = params.ventricle_growth_mm * rng.uniform(0.2, 1.0) * (
      0.6 + 0.4 * random_fields.smooth_noise(rng, shape, 8))
  ventricles = (ventricles | (outside_mm < growth)) & brain
  gm = np.where(ventricles, 0.0, gm)
  wm = np.where(ventricles, 0.0, wm)
  wall_mm = ndimage.distance_transform_edt(~ventricles, sampling=vox_mm)
  return Anatomy(gm=gm, wm=wm, brain=brain, ventricles=ventricles,
                 wall_mm=wall_mm)


def _warp(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
  return ndimage.map_coordinates(volume.astype(np.float32), coords, order=1,
                                 mode="nearest")


def _non_affine_part(displacement: np.ndarray, mask: np.ndarray
                     ) -> np.ndarray:
  """A (3, X, Y, Z) displacement less its least-squares affine fit in `mask`.

  On the generator's 3 mm deformations the affine part moves brain points
  by about 1 mm on average.
  """
  points = np.c_[np.argwhere(mask), np.ones(int(mask.sum()))]
  fit, *_ = np.linalg.lstsq(points, displacement[:, mask].T, rcond=None)
  grid = np.indices(mask.shape, dtype=np.float32)
  affine = (np.tensordot(fit[:3].T, grid, axes=1)
            + fit[3][:, None, None, None])
  return (displacement - affine).astype(np.float32)
