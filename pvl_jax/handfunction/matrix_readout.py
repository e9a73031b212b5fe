"""The baseline's matrix model fitted once and kept as arrays.

The located head's final read-out (`evaluation.located_readout`) is the
poster's logistic regression on masks in matrix form, the same pipeline and
inner search as the baseline (`nested_cv.matrix_search`, `fit_inner`):
block fractions of the template grid, the blocks lesioned in enough fit
subjects, standardised, L2 logistic regression. A run keeps the fitted model
as plain arrays (`save`, `load`: no pickled scikit-learn objects, which do not
survive a library upgrade), so that `pvl_jax.predict` scores a new scan the
way evaluation scored the test split.
"""

import dataclasses
import io
import os
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from preprocessing.io import atomic
from preprocessing.io.errors import InputError
from pvl_jax.handfunction import block_features
from pvl_jax.handfunction import nested_cv

# Where a run keeps the located head's refitted read-out
# (`evaluation.located_readout`; `inference.trained_run` reads it).
RUN_FILE = "located_readout.npz"


@dataclasses.dataclass(frozen=True)
class MatrixReadout:
  """A fitted matrix model: template masks -> P(bad hand function).

  Attributes:
    shape: the template grid the masks are flattened in.
    factor: block edge in voxels.
    kept: indices of the blocks it reads (`MinLesionFrequency.kept_`; empty:
      none was frequent enough, one constant feature).
    mean, scale: the standardisation of the kept blocks.
    coef: the logistic weights per kept block.
    intercept: the logistic bias.
    hyperparameters: what the inner CV chose, as the baseline's rows name it
      (downsample, min_lesion_fraction, C).
    subjects: the labelled subjects it was fitted on.
  """
  shape: tuple[int, ...]
  factor: int
  kept: np.ndarray
  mean: np.ndarray
  scale: np.ndarray
  coef: np.ndarray
  intercept: float
  hyperparameters: dict[str, Any]
  subjects: int

  def probability(self, masks: Any) -> np.ndarray:
    """P(bad) of flat masks (subjects, voxels of `shape`), dense or sparse."""
    blocks = sparse.csr_matrix(masks) @ block_features.pooling_matrix(
        self.shape, self.factor)
    if self.kept.size:
      features = sparse.csc_matrix(blocks)[:, self.kept].toarray()
    else:
      features = np.zeros((blocks.shape[0], 1))
    logits = ((features - self.mean) / self.scale) @ self.coef + self.intercept
    return 1.0 / (1.0 + np.exp(-logits))

  def save(self, path: str | os.PathLike) -> None:
    """Writes the arrays to `path` (.npz), atomically."""
    names = sorted(self.hyperparameters)
    buffer = io.BytesIO()
    np.savez(buffer, shape=np.asarray(self.shape), factor=self.factor,
             kept=self.kept, mean=self.mean, scale=self.scale, coef=self.coef,
             intercept=self.intercept, subjects=self.subjects,
             hyper_names=np.asarray(names),
             hyper_values=np.asarray(
                 [float(self.hyperparameters[n]) for n in names]))
    atomic.atomic_write_bytes(path, buffer.getvalue())

  @classmethod
  def load(cls, path: str | os.PathLike) -> "MatrixReadout":
    """Reads what `save` wrote.

    Raises:
      InputError: naming the file, if it cannot be read as one.
    """
    try:
      with np.load(path) as z:
        return cls(
            shape=tuple(int(n) for n in z["shape"]), factor=int(z["factor"]),
            kept=z["kept"], mean=z["mean"], scale=z["scale"],
            coef=z["coef"], intercept=float(z["intercept"]),
            hyperparameters=dict(zip(z["hyper_names"].tolist(),
                                     z["hyper_values"].tolist())),
            subjects=int(z["subjects"]))
    except (OSError, KeyError, ValueError) as e:
      raise InputError(f"{path}: not a saved hand-function read-out ({e})"
                       ) from e


def fit(masks: Any, labels: np.ndarray, shape: tuple[int, ...], seed: int
        ) -> MatrixReadout:
  """The baseline's inner search on `masks`, refitted on all of them.

  Args:
    masks: (subjects, voxels of `shape`) flat binary masks.
    labels: 0 or 1 per subject (labelled subjects only).
    shape: the template grid.
    seed: shuffles the inner folds.

  Raises:
    InputError: a class has fewer subjects than the inner folds.
  """
  short = nested_cv.short_class(labels)
  if short is not None:
    raise InputError(
        f"the hand-function read-out's {nested_cv.INNER_FOLDS}-fold inner "
        f"CV needs {nested_cv.INNER_FOLDS} subjects per class; "
        f"hand_function={short[0]} has {short[1]}")
  search = nested_cv.matrix_search(shape)
  grid_search = nested_cv.fit_inner(search, sparse.csr_matrix(masks), labels,
                                    seed)
  model = grid_search.best_estimator_
  logreg, scaler = model["logreg"], model["scale"]
  return MatrixReadout(
      shape=tuple(shape), factor=int(model["block"].factor),
      kept=np.asarray(model["frequency"].kept_),
      mean=np.asarray(scaler.mean_), scale=np.asarray(scaler.scale_),
      coef=np.asarray(logreg.coef_[0]), intercept=float(logreg.intercept_[0]),
      hyperparameters={nested_cv.PARAM_NAMES[k]: float(v)
                       for k, v in grid_search.best_params_.items()},
      subjects=len(labels))


def template_masks(masks: Sequence[np.ndarray],
                   origins: Sequence[Sequence[int]],
                   shape: tuple[int, ...]) -> sparse.csr_matrix:
  """Cropped masks placed in the template grid, one flat row each.

  Args:
    masks: boolean crops.
    origins: the template voxel of each crop's voxel 0
      (`template_grid.record_origin`).
    shape: the template grid; what of a crop lies outside it is dropped.
  """
  rows, columns = [], []
  for row, (mask, origin) in enumerate(zip(masks, origins)):
    voxels = np.argwhere(mask) + np.asarray(origin)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)
    flat = np.ravel_multi_index(tuple(voxels[inside].T), shape)
    rows.append(np.full(flat.size, row))
    columns.append(flat)
  rows, columns = np.concatenate(rows), np.concatenate(columns)
  return sparse.csr_matrix(
      (np.ones(rows.size, np.float32), (rows, columns)),
      shape=(len(masks), int(np.prod(shape))))
