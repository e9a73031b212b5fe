"""The subject-level hand-function head: bags of patches in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.data import bags
from pvl_jax.data import input_pipeline
from pvl_jax.models import unet
from pvl_jax.training import config_validation
from pvl_jax.training import losses
from pvl_jax.training import steps


def _config(cls_head="subject", batch_size=4, bag_size=0, fg=0.33):
  config = joint.get_config("demo")
  config.model.cls_head = cls_head
  config.model.cls_bag_size = bag_size
  config.batch_size = batch_size
  config.data.foreground_fraction = fg
  config.data.num_workers = 0
  return config


@pytest.mark.parametrize("cls_head,batch_size,bag_size,fg,expected", [
    ("patch", 4, 0, 0.33, (1, 1)),
    ("subject", 4, 0, 0.33, (4, 3)),   # nnU-Net: the last third forced
    ("subject", 6, 3, 0.33, (3, 2)),
    ("subject", 2, 0, 0.33, (2, 1)),
    ("subject", 2, 0, 1.0, (2, 1)),    # at least one patch to read
    ("subject", 4, 2, 0.0, (2, 2)),
])
def test_bag_size_and_uniform_patches(cls_head, batch_size, bag_size, fg,
                                      expected):
  config = _config(cls_head, batch_size, bag_size, fg)
  assert (bags.bag_size(config), bags.pooled_patches(config)) == expected


def test_bags_hold_one_subject_and_force_lesions_after_the_uniform_ones(
    tiny_builder):
  source = tiny_builder.as_data_source("fold0+fold1+fold2")
  data = _config().data
  data.patch_size = (8, 8, 8)  # small: a random patch rarely holds a lesion
  stream = iter(input_pipeline.train_dataset(source, data, 8, 0, bag_size=4,
                                             pooled_per_bag=1))
  forced_with_lesion, subjects_seen = [], set()
  for _ in range(10):
    batch = next(stream)
    subject = batch["subject_index"].reshape(2, 4)
    # Every bag is one subject's, and its label is the subject's.
    assert (subject == subject[:, :1]).all()
    assert (batch["hand_function"].reshape(2, 4)
            == batch["hand_function"].reshape(2, 4)[:, :1]).all()
    subjects_seen.update(subject[:, 0].tolist())
    lesion = batch["label"].reshape(2, 4, -1).any(-1)
    forced_with_lesion.append(lesion[:, 1:])
  # The tiny cohort's subjects all have lesions: every forced patch has one.
  assert np.concatenate(forced_with_lesion).all()
  # A shuffled epoch after another: every subject gets bags.
  assert len(subjects_seen) == len(source)


def test_training_model_pools_the_first_patches_of_each_bag():
  """The bag logit is the head of the mean summaries of its uniform patches,
  recomputed from per-patch summaries."""
  model = unet.UNet(features=(4, 8), strides=((1, 1, 1), (2, 2, 2)),
                    kernel_sizes=((3, 3, 3),) * 2, cls_hidden=4)
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 8, 1))
  variables = model.init(unet.init_key(0), x)
  bag_model = model.clone(cls_bag_size=3, cls_bag_pooled=2)
  _, logits = bag_model.apply(variables, x)
  _, summaries = model.apply(variables, x, summaries_only=True)
  summaries = np.asarray(summaries).reshape(2, 3, -1)
  pooled = summaries[:, :2].mean(axis=1)
  expected = unet.HandFunctionHead(4).apply(
      {"params": variables["params"]["cls_head"]}, jnp.asarray(pooled))
  assert logits.shape == (2,)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
  # The forced patch (the third) does not move the bag's logit.
  x_other = x.at[2].set(x[2] * 3.0 + 1.0)
  _, logits_other = bag_model.apply(variables, x_other)
  np.testing.assert_allclose(logits_other[0], logits[0], rtol=1e-6)


def test_validation_scores_bags_as_training_does(tiny_builder):
  # The eval step's cls loss is the BCE of one logit per bag (its subject's
  # label), and validation patches come in bags of one subject.
  model = unet.UNet(features=(4, 8), strides=((1, 1, 1), (2, 2, 2)),
                    kernel_sizes=((3, 3, 3),) * 2, cls_hidden=4)
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 8, 1))
  variables = model.init(unet.init_key(0), x)
  bag_model = model.clone(cls_bag_size=3, cls_bag_pooled=2)
  batch = {"image": x, "label": jnp.zeros((6, 8, 8, 8), jnp.int32),
           "hand_function": jnp.array([1, 1, 1, 0, 0, 0])}
  out = steps.make_eval_step(bag_model, 1.0, losses.SegLoss())(
      variables["params"], batch)
  _, logits = bag_model.apply(variables, x)
  expected = losses.classification_loss(logits, jnp.array([1, 0]))
  np.testing.assert_allclose(out["cls_loss"], expected, rtol=1e-6)
  data = _config().data
  data.patch_size = (8, 8, 8)
  fixed = input_pipeline.fixed_patches(
      tiny_builder.as_data_source("fold3"), data, 8, 4, seed=1, bag_size=4,
      pooled_per_bag=3)
  for patches in fixed:
    assert (patches["subject_index"] == patches["subject_index"][0]).all()


@pytest.mark.parametrize("batch_size,bag_size,message", [
    (1, 0, "bags of at least 2 patches"),
    (4, 3, "not a multiple of the bag size 3"),
])
def test_bad_bags_name_the_key(batch_size, bag_size, message):
  config = _config(batch_size=batch_size, bag_size=bag_size)
  with pytest.raises(InputError, match=rf"config\.model\.cls_bag_size: .*"
                     rf"{message}"):
    config_validation.validate_config(config)


def test_unknown_head_names_the_key():
  config = _config(cls_head="brain")
  with pytest.raises(InputError, match=r"config\.model\.cls_head: must be"):
    config_validation.validate_config(config)


def test_subject_head_trains_and_classifies_whole_scans(tiny_cohort,
                                                        tmp_path):
  # pylint: disable=g-import-not-at-top
  from pvl_jax.training import train
  from tests.test_train import tiny_config
  config = tiny_config(tiny_cohort, tmp_path / "cache")
  config.model.cls_head = "subject"
  config.num_steps = 2
  results = train.train_and_evaluate(config, tmp_path / "run")
  probs = [row["hand_function_prob"] for row in results["test"]["per_subject"]]
  assert len(probs) == results["test"]["n_subjects"]
  assert all(0.0 < p < 1.0 for p in probs)
  assert "cls_auc" in results["test"]
