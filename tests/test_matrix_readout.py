"""The baseline's matrix model kept as arrays (the located head's read-out)."""

import ml_collections
import numpy as np
import pytest
from scipy import sparse

from preprocessing.io.errors import InputError
from pvl_jax.evaluation import located_readout
from pvl_jax.handfunction import matrix_readout
from pvl_jax.handfunction import nested_cv

SHAPE = (12, 10, 8)


def _cohort(n, seed):
  """Random lesion masks; bad hand function when a corner region is hit."""
  rng = np.random.default_rng(seed)
  masks = rng.random((n, *SHAPE)) < 0.03
  hit = rng.random(n) < 0.5
  masks[hit, :4, :4, :4] |= rng.random((int(hit.sum()), 4, 4, 4)) < 0.5
  return masks.reshape(n, -1).astype(np.float32), hit.astype(int)


def test_readout_scores_as_the_fitted_pipeline():
  masks, labels = _cohort(40, 0)
  new, _ = _cohort(7, 1)
  readout = matrix_readout.fit(masks, labels, SHAPE, seed=3)
  # The reference: scikit-learn's own pipeline, the same search and seed.
  search = nested_cv.fit_inner(nested_cv.matrix_search(SHAPE),
                               sparse.csr_matrix(masks), labels, 3)
  np.testing.assert_allclose(
      readout.probability(new),
      search.predict_proba(sparse.csr_matrix(new))[:, 1], rtol=1e-6)
  assert readout.subjects == 40
  assert readout.hyperparameters == {
      nested_cv.PARAM_NAMES[k]: float(v)
      for k, v in search.best_params_.items()}
  # The corner region decides, so it is read.
  assert readout.kept.size > 0


def test_saved_readout_scores_the_same(tmp_path):
  masks, labels = _cohort(40, 0)
  readout = matrix_readout.fit(masks, labels, SHAPE, seed=0)
  path = tmp_path / "readout.npz"
  readout.save(path)
  loaded = matrix_readout.MatrixReadout.load(path)
  np.testing.assert_array_equal(loaded.probability(masks),
                                readout.probability(masks))
  assert loaded.hyperparameters == readout.hyperparameters
  assert loaded.shape == SHAPE and loaded.subjects == 40
  assert [p.name for p in tmp_path.iterdir()] == ["readout.npz"]


def test_unreadable_readout_names_the_file(tmp_path):
  path = tmp_path / "located_readout.npz"
  path.write_bytes(b"not an npz")
  with pytest.raises(InputError, match="located_readout.npz: not a saved"):
    matrix_readout.MatrixReadout.load(path)


def test_fit_needs_the_inner_folds_per_class():
  masks, _ = _cohort(12, 0)
  labels = np.array([1] * 4 + [0] * 8)
  with pytest.raises(InputError, match="hand_function=1 has 4"):
    matrix_readout.fit(masks, labels, SHAPE, seed=0)


def test_template_masks_place_crops_and_drop_what_lies_outside():
  rng = np.random.default_rng(0)
  crops = [rng.random((5, 4, 3)) < 0.5, rng.random((6, 6, 6)) < 0.5]
  origins = [(2, 3, 1), (9, -2, 5)]  # the second reaches past the grid
  placed = matrix_readout.template_masks(crops, origins, SHAPE).toarray()
  for row, crop, origin in zip(placed, crops, origins):
    full = np.zeros(SHAPE, bool)
    padded = np.zeros((SHAPE[0] + 20, SHAPE[1] + 20, SHAPE[2] + 20), bool)
    start = np.asarray(origin) + 10
    padded[tuple(slice(a, a + n) for a, n in zip(start, crop.shape))] = crop
    full[:] = padded[10:-10, 10:-10, 10:-10]
    np.testing.assert_array_equal(row.reshape(SHAPE), full)


def _split(masks, labels, prefix):
  subjects = [f"{prefix}-{i:02d}" for i in range(len(labels))]
  return {"subjects": subjects,
          "predictions": dict(zip(subjects, masks)),
          "origins": {s: (0, 0, 0) for s in subjects},
          "labels": np.asarray(labels), "cls_prob": np.full(len(labels), 0.5)}


def test_refit_leaves_unlabelled_subjects_out_and_scores_every_split(
    tmp_path):
  masks, labels = _cohort(50, 0)
  masks = masks.reshape(-1, *SHAPE) > 0
  labels = labels.copy()
  labels[[3, 30]] = -1  # one unlabelled subject in train, one in test
  splits = {"train": _split(masks[:24], labels[:24], "train"),
            "val": _split(masks[24:30], labels[24:30], "val"),
            "test": _split(masks[30:], labels[30:], "test")}
  config = ml_collections.ConfigDict({
      "seed": 0, "r": 1.0,
      "model": {"cls_head": "located", "cls_readout_refit": True,
                "cls_template_shape": SHAPE,
                "cls_template_affine": np.diag([2.0, 2.0, 2.0, 1.0]).tolist()}})
  assert located_readout.applies(config)
  record = located_readout.refit(splits, config, tmp_path)
  assert record["refitted"] and record["subjects"] == 29
  readout = matrix_readout.MatrixReadout.load(tmp_path /
                                               matrix_readout.RUN_FILE)
  for split, rows in (("train", masks[:24]), ("test", masks[30:])):
    np.testing.assert_allclose(splits[split]["cls_prob"],
                               readout.probability(rows.reshape(len(rows),
                                                                -1)))
    np.testing.assert_array_equal(
        splits[split]["cls_prob_training_readout"], 0.5)
  assert record["block_mm"] == 2.0 * readout.factor
