"""The "matrix form" of lesion masks as scikit-learn transformers.

Masks enter as a sparse (subjects, voxels) matrix of flattened binary masks
that share one grid; `BlockAverage` turns them into the fraction of lesion
voxels per block of factor^3 voxels, and `MinLesionFrequency` keeps the
blocks lesioned in enough training subjects. Both are pipeline steps, so the
inner cross-validation can choose the block factor and the frequency
threshold together with the regularisation strength.
"""

import functools

import numpy as np
from scipy import sparse
from sklearn import base


@functools.lru_cache(maxsize=8)
def pooling_matrix(shape: tuple[int, ...], factor: int) -> sparse.csr_matrix:
  """(voxels, blocks) matrix whose product with flat masks averages blocks.

  Blocks are non-overlapping factor^ndim cubes; the grid is zero-padded to a
  multiple of the factor, outside the grid being no lesion, so an edge block
  averages over its full size. Cached: a grid search builds the same matrix
  for every candidate.

  Args:
    shape: the grid shape.
    factor: block edge in voxels along every axis.

  Returns:
    A CSR matrix with one entry, 1 / factor^ndim, per voxel.
  """
  if factor < 1:
    raise ValueError(f"block factor must be at least 1, got {factor}")
  block_shape = tuple(-(-n // factor) for n in shape)
  block_of_voxel = np.ravel_multi_index(
      np.indices(shape).reshape(len(shape), -1) // factor, block_shape)
  voxels = block_of_voxel.size
  return sparse.csr_matrix(
      (np.full(voxels, factor ** -len(shape)),
       (np.arange(voxels), block_of_voxel)),
      shape=(voxels, int(np.prod(block_shape))))


class BlockAverage(base.TransformerMixin, base.BaseEstimator):
  """Flat masks (subjects, voxels) -> lesion fraction per block (sparse).

  Attributes:
    shape: the masks' grid shape.
    factor: block edge in voxels.
  """

  def __init__(self, shape: tuple[int, ...] = (), factor: int = 4):
    self.shape = shape
    self.factor = factor

  def fit(self, masks, y=None):
    del masks, y  # the pooling depends on the grid only
    self.pooling_ = pooling_matrix(tuple(self.shape), self.factor)
    return self

  def transform(self, masks) -> sparse.csr_matrix:
    return sparse.csr_matrix(masks) @ self.pooling_


class MinLesionFrequency(base.TransformerMixin, base.BaseEstimator):
  """Keeps the blocks lesioned in at least `min_fraction` of fit subjects.

  A block that no training subject has a lesion in carries no information,
  and one lesioned in a single subject or two mostly lets the model fit those
  subjects: once standardised, the block is an outlier feature of exactly
  them. At least one subject is always required. Output is dense.

  Attributes:
    min_fraction: the share of fit subjects, in [0, 1].
  """

  def __init__(self, min_fraction: float = 0.0):
    self.min_fraction = min_fraction

  def fit(self, blocks, y=None):
    del y  # unsupervised
    blocks = sparse.csr_matrix(blocks)
    lesioned = np.asarray((blocks > 0).sum(axis=0)).ravel()
    needed = max(1.0, self.min_fraction * blocks.shape[0])
    self.kept_ = np.flatnonzero(lesioned >= needed)
    return self

  def transform(self, blocks) -> np.ndarray:
    kept = sparse.csc_matrix(blocks)[:, self.kept_].toarray()
    if not self.kept_.size:
      # No block is frequent enough: one constant column, so the model
      # predicts the training prevalence and the inner search can score
      # this candidate like any other instead of failing.
      return np.zeros((kept.shape[0], 1))
    return kept
