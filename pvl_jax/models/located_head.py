"""The located hand-function head: logistic regression on template blocks.

`model.cls_head = "located"` (issue 25). The head reads the finest output's
lesion probability where it lies in template space: its mean per block of
`block`^3 template voxels (the lesion fraction per block, which for a
binary mask is exactly the baseline's matrix feature,
`handfunction.block_features.BlockAverage`), and maps the blocks through one
linear read-out, weights per block plus a bias, to a logit. So logistic
regression on reference masks in matrix form is the head with the
reference masks in place of the network's map.

It decides per subject from the whole brain. A patch sees a fraction of
the brain, so training keeps a memory of every training subject's block
fractions (rows of the train state, `LocatedMemory`); each patch writes
its own blocks into its subject's row (`update_rows`), and its logit is
the read-out of that row with the patch's blocks live (differentiable) and
the others as last seen (constants). The read-out itself is not trained by
the optimizer: every step fits it to the memory as logistic regression
(`fit_readout`, a few Newton steps from the last fit), so it stays what the
baseline would fit on the network's own maps of the training subjects, and
the network learns through it. At inference the whole-brain probability map
is read once (`whole_volume_fractions`).

A block only partly covered by a patch (its edge, or a rotated and scaled
patch) is updated in proportion: with `share` the part of the block the
patch's voxels cover, the row becomes (1 - share) * old + share * the
patch's mean probability there.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


def block_statistics(probability: jax.Array, blocks: jax.Array,
                     num_blocks: int) -> tuple[jax.Array, jax.Array]:
  """Per sample and block: summed probability and voxel count.

  Args:
    probability: (batch, *spatial) lesion probability.
    blocks: (batch, *spatial) flat block indices
      (`template_position.block_indices`); num_blocks marks voxels outside
      the template, which are dropped.
    num_blocks: blocks of the template grid.

  Returns:
    (sums, counts), each (batch, num_blocks) float32.
  """
  def one(values, index):
    flat = index.reshape(-1)
    sums = jax.ops.segment_sum(values.reshape(-1), flat, num_blocks + 1)
    counts = jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), flat,
                                 num_blocks + 1)
    return sums[:num_blocks], counts[:num_blocks]

  return jax.vmap(one)(probability.astype(jnp.float32), blocks)


def update_rows(rows: jax.Array, sums: jax.Array, counts: jax.Array,
                voxel_volume: jax.Array, block: int) -> jax.Array:
  """Memory rows with a patch's blocks written in.

  Args:
    rows: (batch, num_blocks) block fractions of the patches' subjects.
    sums, counts: the patches' `block_statistics`.
    voxel_volume: (batch,) template voxels per patch voxel (|det| of the
      position's linear part: 1 unless resampled with scaling).
    block: block edge in template voxels.

  Returns:
    (batch, num_blocks): differentiable in `sums`.
  """
  density = sums / jnp.maximum(counts, 1.0)
  share = jnp.clip(counts * voxel_volume[:, None] / block ** 3, 0.0, 1.0)
  return (1 - share) * rows + share * density


def whole_volume_fractions(probability: jax.Array, blocks: jax.Array,
                           num_blocks: int, block: int) -> jax.Array:
  """Block fractions of whole volumes: the mean over each block's voxels.

  Template voxels outside the volumes count as no lesion, as the
  baseline's zero-padded blocks do.
  """
  sums, _ = block_statistics(probability, blocks, num_blocks)
  return sums / block ** 3


class LocatedHead(nn.Module):
  """(N, num_blocks) block fractions -> (N,) logits: weights per block + bias.

  Both start at zero and are then fitted to the memory (`fit_readout`): a
  block that no training subject has a lesion in is masked out of the input
  (`LocatedMemory.mask`), so its weight stays exactly zero, and inference
  needs no mask.
  """
  num_blocks: int

  @nn.compact
  def __call__(self, fractions: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.zeros, (self.num_blocks,))
    bias = self.param("bias", nn.initializers.zeros, ())
    return fractions.astype(jnp.float32) @ kernel + bias


@flax.struct.dataclass
class LocatedMemory:
  """What the located head keeps between training steps.

  Attributes:
    rows: (train subjects, num_blocks) last-seen block fractions, indexed
      by the batch's `subject_index`.
    mask: (num_blocks,) 1 where some training subject has a lesion
      (`template_blocks.lesion_frequency_mask`), else 0.
    labels: (train subjects,) hand function, -1 where unlabelled (out of
      the read-out's fit).
  """
  rows: jax.Array
  mask: jax.Array
  labels: jax.Array

  @classmethod
  def create(cls, mask: jax.Array, labels: jax.Array) -> "LocatedMemory":
    labels = jnp.asarray(labels, jnp.float32)
    return cls(jnp.zeros((labels.shape[0], mask.shape[0]), jnp.float32),
               jnp.asarray(mask, jnp.float32), labels)


# Fractions of the Newton step tried in each of `fit_readout`'s steps (the
# best is taken; 0 keeps the start, so the objective never rises): Newton's
# method alone diverges on logistic regression from a start far from the
# optimum (logits saturate, the curvature vanishes, the step explodes).
_STEP_FRACTIONS = tuple(0.5**k for k in range(8)) + (0.0,)


def fit_readout(features: jax.Array, labels: jax.Array, l2: float,
                kernel: jax.Array, bias: jax.Array, iterations: int
                ) -> tuple[jax.Array, jax.Array]:
  """Damped Newton steps of L2-penalised logistic regression.

  Minimises mean_i BCE(labels_i, features_i . kernel + bias) over the
  labelled subjects (labels >= 0) + l2 |kernel|^2: scikit-learn's
  LogisticRegression at C = 1 / (2 l2 n) (`readout_penalty`). Subjects are
  few and blocks many, so each Newton system is solved in the subjects'
  span (Woodbury: one n x n solve), and features that are 0 for every
  subject keep their kernel entry. Each step takes the fraction of the
  Newton step (`_STEP_FRACTIONS`) of lowest objective, so the fit converges
  from any start.

  Args:
    features: (n, blocks) the subjects' block fractions (masked).
    labels: (n,) 0 or 1, -1 for unlabelled subjects.
    l2: the penalty's weight (> 0).
    kernel, bias: where the steps start (the last fit: the memory moves
      little between training steps).
    iterations: Newton steps.

  Returns:
    (kernel, bias) after the steps.
  """
  features = features.astype(jnp.float32)
  labelled = (labels >= 0).astype(jnp.float32)
  count = jnp.maximum(labelled.sum(), 1.0)
  y = jnp.maximum(labels, 0.0)
  penalty = 2.0 * l2
  fractions = jnp.asarray(_STEP_FRACTIONS, jnp.float32)

  def objective(w, b):
    logits = features @ w + b
    bce = jax.nn.softplus(logits) - y * logits
    return (bce * labelled).sum() / count + l2 * jnp.sum(w * w)

  def step(_, carry):
    w, b = carry
    p = jax.nn.sigmoid(features @ w + b)
    error = (p - y) * labelled / count
    grad_w = features.T @ error + penalty * w
    grad_b = error.sum()
    curvature = p * (1 - p) * labelled / count
    scaled = jnp.sqrt(curvature)[:, None] * features  # M = D^1/2 X
    gram = penalty * jnp.eye(features.shape[0]) + scaled @ scaled.T

    def inverse_a(v):
      # (penalty I + M^T M)^-1 v by Woodbury.
      return (v - scaled.T @ jnp.linalg.solve(gram, scaled @ v)) / penalty

    c = features.T @ curvature
    a_inv_c, a_inv_g = inverse_a(c), inverse_a(grad_w)
    schur = curvature.sum() - c @ a_inv_c
    delta_b = (grad_b - c @ a_inv_g) / jnp.maximum(schur, 1e-12)
    delta_w = a_inv_g - a_inv_c * delta_b
    values = jax.vmap(lambda t: objective(w - t * delta_w,
                                          b - t * delta_b))(fractions)
    # A non-finite candidate (an exploding step) is never taken.
    t = fractions[jnp.argmin(jnp.where(jnp.isfinite(values), values,
                                       jnp.inf))]
    return w - t * delta_w, b - t * delta_b

  return jax.lax.fori_loop(0, iterations, step,
                           (kernel.astype(jnp.float32),
                            jnp.asarray(bias, jnp.float32)))


def patch_logits(head: LocatedHead, head_params, memory: LocatedMemory,
                 subject_index: jax.Array, probability: jax.Array,
                 blocks: jax.Array, voxel_volume: jax.Array, block: int
                 ) -> tuple[jax.Array, LocatedMemory]:
  """Each patch's subject-level logit and the memory with the patches in.

  The patch's blocks carry the gradient; the rest of its subject's row is
  the memory's (a constant), and so is the read-out (`head_params`, fitted
  on the memory by `fit_readout`). Two patches of one subject in a batch
  each read the row as the step found it, and the later one's row is kept.

  Returns:
    ((batch,) logits, updated memory (no gradient)).
  """
  sums, counts = block_statistics(probability, blocks, head.num_blocks)
  rows = update_rows(memory.rows[subject_index], sums, counts, voxel_volume,
                     block)
  logits = head.apply({"params": jax.lax.stop_gradient(head_params)},
                      rows * memory.mask)
  new_rows = memory.rows.at[subject_index].set(jax.lax.stop_gradient(rows))
  return logits, memory.replace(rows=new_rows)


def voxel_volumes(position: jax.Array) -> jax.Array:
  """|det| of each position's linear part, (batch,); 3D patches only."""
  return jnp.abs(jnp.linalg.det(position[:, :, :-1]))

