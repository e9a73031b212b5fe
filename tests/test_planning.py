"""Planning (nnU-Net v2 rules) against plans worked out by hand.

Notation in the derivations: V_s = voxels of stage s's feature map, f_s its
features; the activation count of one sample is
A = sum_s 2 f_s V_s + sum_{s<S-1} (3 f_s + 2) V_s (2 classes), and batch 2
fits an 8 GB bf16 budget iff A <= 560e6 (nnU-Net's reference, by construction
of the VRAM formula). The per-sample memory batch limit is
floor(2 * 560e6 / A); the dataset limit round(0.05 * subjects * median voxels
/ patch voxels); the batch is max(2, min(both)).
"""

import json

import numpy as np
import pytest

from configs import joint
from preprocessing.io.errors import InputError
from pvl_jax.planning import config_plan
from pvl_jax.planning import fingerprint as fingerprint_lib
from pvl_jax.planning import planner

NO_LESIONS = fingerprint_lib.LesionStats(0, None, None, None, None)
FEATURES_3D_6 = (32, 64, 128, 256, 320, 320)
ISO_STRIDES_6 = ((1, 1, 1),) + ((2, 2, 2),) * 5


def make_fingerprint(spacings, shapes) -> fingerprint_lib.Fingerprint:
  return fingerprint_lib.Fingerprint(
      spacings=tuple(tuple(float(v) for v in s) for s in spacings),
      shapes_after_crop=tuple(tuple(s) for s in shapes),
      num_subjects=len(spacings), num_modalities=1,
      foreground_intensity=(None,), lesions=NO_LESIONS)


def uniform(spacing, shape, n) -> fingerprint_lib.Fingerprint:
  return make_fingerprint([spacing] * n, [shape] * n)


def test_fingerprint_statistics_by_hand():
  # Subject 1, 6x6x6 at 1x1x2 mm (a voxel is 2 mm^3 = 0.002 ml): a lone voxel
  # (size 1), a diagonal pair (one 26-connected component of size 2, two 6-
  # connected ones) and a 2x2x2 cube (size 8), pairwise >= 2 voxels apart.
  lesion1 = np.zeros((6, 6, 6), np.uint8)
  lesion1[0, 0, 0] = 1
  lesion1[2, 2, 0] = lesion1[3, 3, 1] = 1
  lesion1[3:5, 3:5, 3:5] = 1
  # Subject 2, 5x6x7: a line of 4 voxels.
  lesion2 = np.zeros((5, 6, 7), np.uint8)
  lesion2[0:4, 0, 0] = 1
  records = []
  for lesion, value in ((lesion1, 1.0), (lesion2, 3.0)):
    channel = np.where(lesion > 0, value, 0.0)
    records.append({"image": np.stack([channel, -channel], -1),
                    "lesion_mask": lesion, "brain_mask": np.ones_like(lesion),
                    "spacing": np.array([1.0, 1.0, 2.0], np.float32)})
  fp = fingerprint_lib.fingerprint(records)
  assert fp.num_subjects == 2 and fp.num_modalities == 2
  assert fp.shapes_after_crop == ((6, 6, 6), (5, 6, 7))
  assert fp.spacings == ((1.0, 1.0, 2.0), (1.0, 1.0, 2.0))
  # Components: sizes 1, 2, 8, 4 -> sorted 1, 2, 4, 8: median (2+4)/2 = 3;
  # 5th percentile at rank 0.05 * 3 = 0.15: 1 + 0.15 * (2 - 1) = 1.15.
  lesions = fp.lesions
  assert lesions.num_components == 4
  assert lesions.median_voxels == pytest.approx(3.0)
  assert lesions.p05_voxels == pytest.approx(1.15)
  assert lesions.median_ml == pytest.approx(0.006)
  assert lesions.p05_ml == pytest.approx(0.0023)
  # Lesion intensities, channel 0: eleven 1s and four 3s. Mean 23/15,
  # E[x^2] = (11 + 36)/15 = 47/15, std = sqrt(47/15 - (23/15)^2);
  # percentile 0.5 at rank 0.07 -> 1, 99.5 at rank 13.93 -> 3.
  mean, std = 23 / 15, np.sqrt(47 / 15 - (23 / 15) ** 2)
  ch0, ch1 = fp.foreground_intensity
  assert ch0.mean == pytest.approx(mean) and ch0.std == pytest.approx(std)
  assert ch0.percentile_00_5 == pytest.approx(1.0)
  assert ch0.percentile_99_5 == pytest.approx(3.0)
  assert ch1.mean == pytest.approx(-mean)
  assert (ch1.percentile_00_5, ch1.percentile_99_5) == pytest.approx((-3, -1))


def test_fingerprint_without_lesions():
  record = {"image": np.zeros((8, 8, 8, 1), np.float32),
            "lesion_mask": np.zeros((8, 8, 8), np.uint8),
            "spacing": np.ones(3, np.float32)}
  fp = fingerprint_lib.fingerprint([record])
  assert fp.lesions == NO_LESIONS
  assert fp.foreground_intensity == (None,)


def test_nnunet_default_plan_fits_default_budget():
  # 128^3 at 6 stages: V = 2097152, 262144, 32768, 4096, 512, 64.
  # Encoder 2 * (32*2097152 + 64*262144 + 128*32768 + 256*4096 + 320*512
  #   + 320*64) = 2 * 89,313,280 = 178,626,560.
  # Decoder 98*2097152 + 194*262144 + 386*32768 + 770*4096 + 962*512
  #   = 272,671,744.  A = 451,298,304 <= 560e6.
  count = planner.activation_count((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6,
                                    num_classes=2)
  assert count == 451_298_304
  # VRAM = 2 * A * 2 bytes * 8e9 / (2 * 560e6 * 2) = 8 GB * A / 560e6.
  gb = planner.vram_gb((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6, 2, 2)
  assert gb == pytest.approx(8.0 * 451_298_304 / 560e6)
  assert gb <= 8.0
  # float32 activations need twice as much: no longer fits.
  assert planner.vram_gb((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6, 2, 2,
                          bytes_per_value=4) > 8.0


def test_isotropic_1mm_plan():
  # Target spacing 1 mm; initial patch 256^3 clipped to the median shape
  # 160x192x160. Pooling: every axis halves while >= 8: 160 -> 80 -> 40 ->
  # 20 -> 10 -> 5 and 192 -> ... -> 6: 5 pools per axis, 6 stages, divisor 32
  # (160, 192 divisible). A(160x192x160) = 1,057,730,400 > 560e6, so shrink
  # the axis of largest patch/median ratio (ties: last axis), by 32 each time
  # (the divisor stays 32), A scaling with the patch volume:
  #   (160,192,160) ratios 1,1,1        -> axis 2: (160,192,128) A = 846.2e6
  #   ratios 1,1,0.8                   -> axis 1: (160,160,128) A = 705.2e6
  #   ratios 1,0.83,0.8                -> axis 0: (128,160,128) A = 564.1e6
  #   ratios 0.8,0.83,0.8              -> axis 1: (128,128,128) A = 451.3e6 fits.
  # Batch: memory floor(1120e6 / 451.3e6) = 2; dataset round(0.05 * 10 *
  # 4,915,200 / 2,097,152) = 1 -> max(2, 1) = 2.
  p = planner.plan(uniform((1, 1, 1), (160, 192, 160), 10))
  assert p.target_spacing == (1.0, 1.0, 1.0)
  assert p.median_shape == (160, 192, 160)
  assert p.patch_size == (128, 128, 128)
  assert p.pools_per_axis == (5, 5, 5)
  assert p.strides == ISO_STRIDES_6
  assert p.kernel_sizes == ((3, 3, 3),) * 6
  assert p.features == FEATURES_3D_6
  assert p.batch_size == 2
  assert p.vram_estimate_gb == pytest.approx(8.0 * 451_298_304 / 560e6)


def test_anisotropic_plan_pools_in_plane_first():
  # 11 subjects at 0.9x0.9 mm in-plane, 120 mm along z at different slice
  # spacings: z spacing 2.0 (60 slices), 2.5 (48), 3.0 (40) x8, 4.0 (30).
  z = [(2.0, 60), (2.5, 48)] + [(3.0, 40)] * 8 + [(4.0, 30)]
  fp = make_fingerprint([(0.9, 0.9, s) for s, _ in z],
                        [(192, 192, n) for _, n in z])
  # Median z spacing 3.0 > 3 * 0.9 and median z size 40 * 3 < 192: z is the
  # anisotropic axis; its target is the 10th percentile of its spacings:
  # sorted 2.0, 2.5, 3.0 ..., rank 0.1 * 10 = 1 -> 2.5 (>= 0.9, kept).
  assert planner.target_spacing(fp) == (0.9, 0.9, 2.5)
  # Every subject is 120 mm / 2.5 mm = 48 slices at the target: median shape
  # 192x192x48, which clips the initial patch (about 360x360x130).
  # Stage 0: z/x spacing 2.5/0.9 = 2.8 >= 2 -> pool x, y only, kernel (3,3,1);
  #   spacing (1.8, 1.8, 2.5), size (96, 96, 48).
  # Stages 1-3: 2.5/1.8 < 2 -> pool all, kernel 3 from now on;
  #   sizes (48,48,24), (24,24,12), (12,12,6).
  # Stage 4: z size 6 < 8 -> pool x, y: (6, 6, 6). Then nothing is >= 8.
  # Pools (5, 5, 3), divisor (32, 32, 8): 192x192x48 needs no padding.
  # A: V = 1,769,472, 442,368, 55,296, 6,912, 864, 216;
  # encoder 188,255,232 + decoder 286,725,312 = 474,980,544 <= 560e6: fits.
  # Batch: memory floor(1120e6 / 475.0e6) = 2, dataset round(0.05 * 11) = 1.
  p = planner.plan(fp)
  assert p.median_shape == (192, 192, 48)
  assert p.patch_size == (192, 192, 48)
  assert p.strides == ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2),
                       (2, 2, 1))
  assert p.kernel_sizes == ((3, 3, 1),) + ((3, 3, 3),) * 5
  assert p.pools_per_axis == (5, 5, 3)
  assert p.features == FEATURES_3D_6
  assert planner.activation_count(p.patch_size, p.strides, p.features,
                                   2) == 474_980_544
  assert p.batch_size == 2


def test_small_2mm_dataset_patch_is_the_median_shape_and_batch_grows():
  # 80x96x80 at 2 mm: 80 -> 40 -> 20 -> 10 -> 5 and 96 -> ... -> 6: 4 pools,
  # 5 stages (32..320), divisor 16 divides the median shape: patch = median.
  # A: V = 614,400, 76,800, 9,600, 1,200, 150; encoder 52,320,000 + decoder
  # 79,740,000 = 132,060,000: memory limit floor(1120e6 / 132.06e6) = 8.
  # Dataset limit round(0.05 * subjects): 60 -> 3, 24 -> 1 (-> 2), 200 -> 10.
  expected_batch = {60: 3, 24: 2, 200: 8}
  for subjects, batch in expected_batch.items():
    p = planner.plan(uniform((2, 2, 2), (80, 96, 80), subjects))
    assert p.patch_size == (80, 96, 80)
    assert p.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4
    assert p.features == (32, 64, 128, 256, 320)
    assert planner.activation_count(p.patch_size, p.strides, p.features,
                                     2) == 132_060_000
    assert p.batch_size == batch, subjects


def test_patch_never_exceeds_the_smallest_volume():
  # 77x94x82 (the 2 mm template brain): 4 pools per axis (77 -> 39 -> 20 ->
  # 10 -> 5), divisor 16, padded to 80x96x96 -- larger than every volume, and
  # the sampler does not pad. Each axis drops one divisibility step:
  # 80 -> 64, 96 -> 80, 96 -> 80 (the divisor stays 16).
  # Batch with 60 subjects: round(0.05 * 60 * 593,516 / 409,600) = round(4.35).
  p = planner.plan(uniform((2, 2, 2), (77, 94, 82), 60))
  assert p.patch_size == (64, 80, 80)
  assert p.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4
  assert p.batch_size == 4


def test_shrinking_skips_no_valid_size():
  # nnU-Net's example: 256 has divisor 64 (6 pools), but 224 = 7 * 32 is
  # valid with 5 pools, so 256 shrinks to 224, not 192.
  topology = planner.network_topology((1, 1, 1), (256, 256, 256))
  assert topology.divisor == (64, 64, 64)
  smaller = planner._shrink_axis((1, 1, 1), topology, 0)  # pylint: disable=protected-access
  assert smaller.patch_size == (224, 256, 256)
  assert smaller.divisor == (32, 64, 64)


def test_2d_plan_uses_in_plane_axes_and_2d_caps():
  # In-plane (axes 0, 1) of the 1 mm cohort: median 160x192; the initial
  # patch (2048^2) clips to it; 5 pools per axis, 6 stages with the 2D cap
  # 512: 32, 64, 128, 256, 512, 512.
  # A: V = 30,720, 7,680, 1,920, 480, 120, 30; encoder 2 * 1,920,000 +
  # decoder 98*30720 + 194*7680 + 386*1920 + 770*480 + 1538*120 = 5,795,760
  # -> 9,635,760. Memory limit floor(1120e6 / 9,635,760) = 116; dataset
  # limit (3D voxels, as nnU-Net) round(0.05 * 10 * 4,915,200 / 30,720) = 80.
  p = planner.plan(uniform((1, 1, 1), (160, 192, 160), 10), dims=2)
  assert p.dims == 2
  assert p.patch_size == (160, 192)
  assert p.strides == ((1, 1),) + ((2, 2),) * 5
  assert p.kernel_sizes == ((3, 3),) * 6
  assert p.features == (32, 64, 128, 256, 512, 512)
  assert planner.activation_count(p.patch_size, p.strides, p.features,
                                   2) == 9_635_760
  assert p.batch_size == 80
  # 100 subjects: the dataset allows 800, memory 116.
  assert planner.plan(uniform((1, 1, 1), (160, 192, 160), 100),
                       dims=2).batch_size == 116


def test_features_are_capped():
  assert planner.features_per_stage(7, 3) == (32, 64, 128, 256, 320, 320,
                                               320)
  assert planner.features_per_stage(8, 2) == (32, 64, 128, 256, 512, 512,
                                               512, 512)
  # 256^3 at 1 mm: 256 -> ... -> 8 -> 4 is 6 pools, 7 stages; an 80 GB budget
  # holds it at batch 2 without shrinking.
  p = planner.plan(uniform((1, 1, 1), (256, 256, 256), 20),
                    vram_budget_gb=80.0)
  assert p.patch_size == (256, 256, 256)
  assert p.features == (32, 64, 128, 256, 320, 320, 320)
  assert p.vram_estimate_gb <= 80.0


def test_json_round_trip(tmp_path):
  p = planner.plan(uniform((0.9, 0.9, 3.0), (192, 192, 40), 11))
  planner.save_plan(p, tmp_path / "plan.json")
  assert planner.load_plan(tmp_path / "plan.json") == p
  assert json.loads((tmp_path / "plan.json").read_text())["batch_size"] == 2
  record = {"image": np.ones((8, 8, 8, 1), np.float32),
            "lesion_mask": np.eye(8, dtype=np.uint8)[:, :, None] *
                           np.ones((1, 1, 8), np.uint8),
            "spacing": np.array([1.0, 1.0, 1.5], np.float32)}
  fp = fingerprint_lib.fingerprint([record])
  fingerprint_lib.save_fingerprint(fp, tmp_path / "fp.json")
  assert fingerprint_lib.load_fingerprint(tmp_path / "fp.json") == fp


def planned_config():
  config = joint.get_config("demo")
  config.plan = True
  for key, unset in config_plan.UNSET.items():
    config_plan._set(config, key, unset)  # pylint: disable=protected-access
  return config


def test_apply_plan_fills_only_unset_fields():
  p = planner.plan(uniform((2, 2, 2), (80, 96, 80), 60))
  config = planned_config()
  assert sorted(config_plan.unset_keys(config)) == sorted(config_plan.UNSET)
  config.batch_size = 4  # the user's
  filled = config_plan.apply_plan(config, p)
  assert filled.batch_size == 4
  assert tuple(filled.data.patch_size) == (80, 96, 80)
  assert tuple(filled.model.features) == (32, 64, 128, 256, 320)
  assert tuple(filled.model.strides) == p.strides
  assert tuple(filled.model.kernel_sizes) == p.kernel_sizes
  assert tuple(filled.data.target_spacing) == (2.0, 2.0, 2.0)
  assert tuple(config.data.patch_size) == ()  # the input is not modified
  # The planned batch (3) is rounded down to a multiple of the devices.
  config.batch_size = 0
  assert config_plan.apply_plan(config, p, num_devices=2).batch_size == 2
  assert config_plan.apply_plan(config, p, num_devices=4).batch_size == 4


def test_user_patch_wins_and_topology_follows_it():
  # A user patch 48x48x48 (2 mm): 48 -> 24 -> 12 -> 6 is 3 pools, 4 stages.
  config = planned_config()
  config.data.patch_size = (48, 48, 48)
  fp = uniform((2, 2, 2), (80, 96, 80), 60)
  p = config_plan.plan_from_config(fp, config)
  filled = config_plan.apply_plan(config, p)
  assert tuple(filled.data.patch_size) == (48, 48, 48)
  assert tuple(filled.model.strides) == ((1, 1, 1),) + ((2, 2, 2),) * 3
  assert tuple(filled.model.features) == (32, 64, 128, 256)
  # 2D is chosen by the user's patch length, whatever planner.dims says.
  config.data.patch_size = (64, 64)
  assert config_plan.plan_from_config(fp, config).dims == 2


def test_impossible_budget_names_the_key():
  config = planned_config()
  config.planner.vram_budget_gb = 1e-6
  with pytest.raises(InputError, match="config.planner"):
    config_plan.plan_from_config(uniform((2, 2, 2), (40, 48, 40), 10), config)


def test_plan_and_apply_saves_fingerprint_and_plan(tmp_path):
  rng = np.random.default_rng(0)
  records = []
  for _ in range(4):
    lesion = np.zeros((40, 48, 40), np.uint8)
    lesion[20:23, 20:23, 20:23] = 1
    records.append({"image": rng.normal(size=(40, 48, 40, 1)).astype(
        np.float32), "lesion_mask": lesion,
                    "spacing": np.full(3, 2.0, np.float32)})
  config = planned_config()
  filled = config_plan.plan_and_apply(config, records, tmp_path / "data",
                                   tmp_path / "work")
  assert planner.load_plan(tmp_path / "work" / "plan.json").patch_size == (
      40, 48, 40)
  assert tuple(filled.data.patch_size) == (40, 48, 40)
  assert (tmp_path / "data" / "fingerprint-fold0.json").exists()
  assert (tmp_path / "data" / "plan-fold0-3d-8GB-float32.json").exists()
  # The cached fingerprint is reused: no records needed the second time.
  again = config_plan.plan_and_apply(config, [], tmp_path / "data",
                                  tmp_path / "work")
  assert again.to_dict() == filled.to_dict()
