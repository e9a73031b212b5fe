"""Whole-volume evaluation: predictions stay inside the brain."""

import jax
import numpy as np

from configs import joint
from pvl_jax.evaluation import evaluate_run


def _everything_is_lesion(images):
  """A 'network' that marks every voxel, background included."""
  batch = images.shape[0]
  return (jax.numpy.ones(images.shape[:-1]),
          jax.numpy.zeros((batch,)))


def test_predict_split_discards_lesions_outside_the_brain():
  shape = (12, 10, 9)
  brain = np.zeros(shape, np.uint8)
  brain[3:9, 2:8, 2:7] = 1
  lesion = np.zeros(shape, np.uint8)
  lesion[4:6, 4:6, 3:5] = 1
  record = {"image": np.zeros(shape + (1,), np.float32),
            "lesion_mask": lesion, "brain_mask": brain, "hand_function": 1,
            "subject_id": b"sub-001", "spacing": np.ones(3, np.float32)}
  config = joint.get_config("demo")
  config.data.patch_size = (8, 8, 8)
  split = evaluate_run.predict_split(jax.jit(_everything_is_lesion), [record],
                                 config, "test")
  np.testing.assert_array_equal(split["predictions"]["sub-001"], brain > 0)
  np.testing.assert_array_equal(split["references"]["sub-001"], lesion > 0)
