"""The located head's template grid: records on one lattice and their origins.

Records here are headers built by hand: each subject saved on its own crop
of an oblique 1.5 mm template grid (as preprocessing saves them), then
cropped again by the TFDS builder (`crop_start`). Each record's origin must
come back as the template voxel it was cut at, which the test chose.
"""

import ml_collections
import numpy as np
import pytest

from preprocessing.io.errors import InputError
from pvl_jax.data import template_blocks
from pvl_jax.data import template_grid

_TEMPLATE_SHAPE = (40, 44, 36)
# Subject -> (its file's first voxel in the template, the file's shape, the
# builder's crop start in the file).
_FILES = {
    "sub-1": ((3, 5, 2), (30, 33, 28), (2, 1, 0)),
    "sub-2": ((7, 2, 6), (31, 36, 27), (0, 3, 2)),
    "sub-3": ((5, 8, 4), (28, 30, 29), (1, 0, 1)),
}


def _template_affine() -> np.ndarray:
  """Oblique axes (rotated about z, then x), 1.5 mm voxels, odd origin."""
  a, b = np.deg2rad(20), np.deg2rad(10)
  about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0],
                      [0, 0, 1]])
  about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)],
                      [0, np.sin(b), np.cos(b)]])
  affine = np.eye(4)
  affine[:3, :3] = about_x @ about_z * 1.5
  affine[:3, 3] = (-30.25, -41.5, -12.75)
  return affine


def _at(voxel, affine=None) -> np.ndarray:
  """The template affine with its voxel 0 moved onto template `voxel`."""
  template = _template_affine() if affine is None else affine
  moved = template.copy()
  moved[:3, 3] = (template @ np.append(np.asarray(voxel, float), 1))[:3]
  return moved


def _header(subject, file_start, file_shape, crop_start, affine=None):
  record_affine = _at(np.add(file_start, crop_start), affine)
  return {"subject_id": subject.encode(),
          "original_shape": np.asarray(file_shape, np.int32),
          "crop_start": np.asarray(crop_start, np.int32),
          # NIfTI keeps affines in float32.
          "affine": record_affine.astype(np.float32).astype(np.float64)}


@pytest.fixture
def headers(monkeypatch):
  """Split name -> headers that `records.headers` returns; editable."""
  by_split = {"a": [_header("sub-1", *_FILES["sub-1"])],
              "b": [_header("sub-2", *_FILES["sub-2"]),
                    _header("sub-3", *_FILES["sub-3"])]}
  monkeypatch.setattr(template_blocks.records, "headers", by_split.get)
  return by_split


_SOURCES = {"train": "a", "test": "b"}


def test_crops_of_the_template_grid_lie_at_their_offsets(headers):
  template = template_grid.TemplateGrid.of(_TEMPLATE_SHAPE,
                                           _template_affine())
  assert template_blocks.template_grid(_SOURCES, template) == template
  for header in headers["a"] + headers["b"]:
    start, _, crop = _FILES[header["subject_id"].decode()]
    assert template_grid.record_origin(header, template) == tuple(
        s + c for s, c in zip(start, crop))


def test_without_the_template_the_grid_is_the_records_box(headers):
  box = template_blocks.template_grid(_SOURCES)
  low = np.min([start for start, _, _ in _FILES.values()], axis=0)
  high = np.max([np.add(start, shape) for start, shape, _ in _FILES.values()],
                axis=0)
  assert box.shape == tuple(high - low) == (35, 36, 31)
  np.testing.assert_allclose(box.affine, _at(low), atol=1e-4)
  for header in headers["a"] + headers["b"]:
    start, _, crop = _FILES[header["subject_id"].decode()]
    assert template_grid.record_origin(header, box) == tuple(
        np.add(start, crop) - low)
  # A new scan brought to the template grid lands in the same place.
  assert box.origin(_at((10, 0, 12))) == (7, -2, 10)


def test_records_of_one_grid_give_that_grid(headers):
  start, shape, _ = _FILES["sub-1"]
  headers["b"] = [_header("sub-2", start, shape, (0, 3, 1)),
                  _header("sub-3", start, shape, (4, 0, 2))]
  grid = template_blocks.template_grid(_SOURCES)
  assert grid.shape == shape
  np.testing.assert_allclose(grid.affine, _at(start), atol=1e-4)
  assert template_grid.record_origin(headers["b"][1], grid) == (4, 0, 2)


@pytest.mark.parametrize("change", ["half_voxel", "spacing", "axes"])
def test_records_off_one_lattice_are_refused_by_name(headers, change):
  """A raw-space scan: not a crop of the others' grid."""
  affine = _template_affine()
  if change == "half_voxel":
    affine[:3, 3] += affine[:3, :3] @ (0.5, 0, 0)
  elif change == "spacing":
    affine[:3, :3] *= 2 / 1.5
  else:
    affine[:3, :3] = affine[:3, [1, 0, 2]]
  headers["b"][1] = _header("sub-3", *_FILES["sub-3"], affine=affine)
  with pytest.raises(InputError, match=(
      r"cls_head='located' needs every scan on one template grid.*3 grids.*"
      r"sub-3 are not on the lattice of sub-1's.*register the cohort to a "
      r"template first")):
    template_blocks.template_grid(_SOURCES)
  template = template_grid.TemplateGrid.of(_TEMPLATE_SHAPE,
                                           _template_affine())
  with pytest.raises(InputError, match="sub-3: not crops of the"):
    template_blocks.template_grid(_SOURCES, template)
  with pytest.raises(InputError, match="sub-3: its grid is not a crop"):
    template_grid.record_origin(headers["b"][1], template)


def test_a_record_reaching_past_the_template_is_refused(headers):
  _, shape, crop = _FILES["sub-2"]
  headers["b"][0] = _header("sub-2", (-1, 2, 6), shape, crop)
  template = template_grid.TemplateGrid.of(_TEMPLATE_SHAPE,
                                           _template_affine())
  with pytest.raises(InputError, match=r"sub-2: not crops of the \(40, 44, "
                     r"36\) template grid the cohort was preprocessed into"):
    template_blocks.template_grid(_SOURCES, template)


def test_without_a_grid_the_origin_is_the_crop_start(headers):
  """Heads that read no template, and located runs older than the affine."""
  assert template_grid.record_origin(headers["b"][0], None) == (0, 3, 2)
  assert template_grid.TemplateGrid.from_config(
      _model_config("patch", ())) is None
  assert template_grid.TemplateGrid.from_config(
      _model_config("located", ())) is None
  located = template_grid.TemplateGrid.from_config(
      _model_config("located", _template_affine().tolist()))
  assert located == template_grid.TemplateGrid.of(_TEMPLATE_SHAPE,
                                                  _template_affine())


def _model_config(head, affine):
  return ml_collections.ConfigDict({
      "cls_head": head, "cls_template_shape": list(_TEMPLATE_SHAPE),
      "cls_template_affine": affine})
