"""Planning against nnU-Net v2.8.1's own plans and against plans by hand.

tests/data/nnunet_plans/ holds, per synthetic dataset, the fingerprint
(spacings, shapes after cropping) and the 3d_fullres and 2d plans that
nnU-Net v2.8.1's `nnUNetv2_extract_fingerprint` and
`nnUNetv2_plan_experiment` wrote (each file's "source" says how). nnU-Net
read the NIfTI files through SimpleITK, so its per-axis lists are in the
reverse of the records' (nibabel) order, and its plans are in its transposed
order (transpose_forward: the coarsest axis first): nnU-Net's axis a is the
records' axis 2 - a.

Notation in the hand derivations: V_s = voxels of stage s's feature map, f_s
its features; the activation count of one sample is
A = sum_s 2 f_s V_s + sum_{s<S-1} 3 f_s V_s + 2 V_0 (2 classes). In 3D batch
2 fits an 8 GB bf16 budget iff A <= 560e6 and the memory batch is
round(2 * 560e6 / A); in 2D the reference is 85e6 at batch 12. The dataset
limit is round(0.05 * subjects * median voxels / patch voxels); the batch is
max(2, min(both)).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from configs import joint
from preprocessing import lesion_labels
from preprocessing.io.errors import InputError
from pvl_jax.planning import config_plan
from pvl_jax.planning import fingerprint as fingerprint_lib
from pvl_jax.planning import planner
from pvl_jax.planning import topology

GOLDEN = sorted((Path(__file__).parent / "data" / "nnunet_plans").glob(
    "*.json"))
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


def golden_fingerprint(golden) -> fingerprint_lib.Fingerprint:
  """nnU-Net's fingerprint in the records' axis order (reversed)."""
  fp = golden["fingerprint"]
  return make_fingerprint([s[::-1] for s in fp["spacings"]],
                          [s[::-1] for s in fp["shapes_after_crop"]])


def assert_plan_is_nnunets(p: planner.Plan, expected, forward):
  """Every planned field of `p` equals nnU-Net's configuration `expected`."""
  # The records' axis of each of nnU-Net's per-axis entries.
  axes = [2 - a for a in forward[3 - p.dims:]]
  assert sorted(axes) == list(p.axes)

  def records(row):  # nnU-Net's row in the records' order of p.axes
    by_axis = dict(zip(axes, row))
    return tuple(by_axis[a] for a in p.axes)

  assert [p.target_spacing[a] for a in p.axes] == pytest.approx(
      records(expected["spacing"]), rel=1e-12)
  assert [p.median_shape[a] for a in p.axes] == pytest.approx(
      records(expected["median_image_size_in_voxels"]), rel=1e-12)
  assert p.patch_size == records(expected["patch_size"])
  assert len(p.features) == expected["n_stages"]
  assert p.strides == tuple(records(s) for s in expected["strides"])
  assert p.kernel_sizes == tuple(records(k) for k in expected["kernel_sizes"])
  assert p.features == tuple(expected["features_per_stage"])
  assert p.batch_size == expected["batch_size"]
  assert p.batch_dice == expected["batch_dice"]
  if p.dims == 2:
    assert p.slice_axis == 2 - forward[0]


# (golden file, its plans by nnU-Net's default or with suppress_transpose).
CASES = [(path, key) for path in GOLDEN for key in (
    "configurations", "configurations_suppress_transpose")
         if key in json.loads(path.read_text())]


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("path,key", CASES,
                         ids=[f"{p.stem}-{k}" for p, k in CASES])
def test_plan_equals_nnunets_plan(path, key, dims):
  golden = json.loads(path.read_text())
  expected = golden[key]["3d_fullres" if dims == 3 else "2d"]
  suppress = key == "configurations_suppress_transpose"
  p = planner.plan(golden_fingerprint(golden), dims=dims,
                   suppress_transpose=suppress)
  assert_plan_is_nnunets(
      p, expected, [0, 1, 2] if suppress else golden["transpose_forward"])


def test_2d_slices_the_coarsest_axis_and_axis_2_when_isotropic():
  # nnU-Net moves its first maximal-spacing axis first; with equal spacings
  # that is its axis 0 -- the records' axis 2, the axial axis, as before.
  # (batch_dice in 3D needs a 3d_lowres stage: one golden dataset has one.)
  goldens = {p.stem.split("_", 1)[1]: json.loads(p.read_text())
             for p in GOLDEN}
  assert any("3d_lowres" in g["configurations_planned"]
             for g in goldens.values())
  for name, axis in (("Iso1mm", 2), ("Iso2mm", 2), ("AnisoThickLast", 2),
                     ("AnisoThickFirst", 0), ("AnisoThickMiddle", 1)):
    fp = golden_fingerprint(goldens[name])
    p = planner.plan(fp, dims=2)
    assert p.slice_axis == axis, name
    assert p.axes == tuple(a for a in range(3) if a != axis)
    assert planner.plan(fp, dims=2, suppress_transpose=True).slice_axis == 2
    assert planner.plan(fp, dims=3).slice_axis is None


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


def test_fingerprint_leaves_ignored_voxels_out():
  lesion = np.zeros((8, 8, 8), np.uint8)
  lesion[1:3, 1:3, 1:3] = 1
  image = np.where(lesion > 0, 2.0, 0.0)[..., None].astype(np.float32)
  record = {"image": image, "lesion_mask": lesion,
            "spacing": np.ones(3, np.float32)}
  with_ignored = dict(record, lesion_mask=lesion.copy(),
                      image=image.copy())
  with_ignored["lesion_mask"][5:8, 5:8, 5:8] = lesion_labels.IGNORE
  with_ignored["image"][5:8, 5:8, 5:8] = 9.0
  assert (fingerprint_lib.fingerprint([with_ignored])
          == fingerprint_lib.fingerprint([record]))


def test_fingerprint_without_lesions():
  record = {"image": np.zeros((8, 8, 8, 1), np.float32),
            "lesion_mask": np.zeros((8, 8, 8), np.uint8),
            "spacing": np.ones(3, np.float32)}
  fp = fingerprint_lib.fingerprint([record])
  assert fp.lesions == NO_LESIONS
  assert fp.foreground_intensity == (None,)


def test_activation_count_is_nnunets():
  # 128^3 at 6 stages: V = 2097152, 262144, 32768, 4096, 512, 64.
  # Encoder 2 * (32*2097152 + 64*262144 + 128*32768 + 256*4096 + 320*512
  #   + 320*64) = 178,626,560. Decoder 3 * (32*2097152 + 64*262144
  #   + 128*32768 + 256*4096 + 320*512) = 271,974,400; head 2 * 2097152.
  count = topology.activation_count((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6,
                                    num_classes=2)
  assert count == 450_699_264
  # The same numbers from nnU-Net 2.8.1's static_estimate_VRAM_usage
  # (PlainConvUNet.compute_conv_feature_map_size, 1 channel, 2 classes).
  aniso = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
  assert topology.activation_count((56, 224, 160), aniso, FEATURES_3D_6,
                                   2) == 537_604_480
  assert topology.activation_count((192, 160), ((1, 1),) + ((2, 2),) * 5,
                                   (32, 64, 128, 256, 512, 512),
                                   2) == 9_615_360
  # VRAM = 2 * A * 2 bytes * 8e9 / (2 * 560e6 * 2) = 8 GB * A / 560e6.
  gb = topology.vram_gb((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6, 2, 2)
  assert gb == pytest.approx(8.0 * 450_699_264 / 560e6)
  # float32 activations need twice as much: no longer fits.
  assert topology.vram_gb((128,) * 3, ISO_STRIDES_6, FEATURES_3D_6, 2, 2,
                          bytes_per_value=4) > 8.0


def test_isotropic_1mm_plan():
  # Initial patch 256^3 clipped to the median 160x192x160; 5 pools per axis,
  # divisor 32. A(160x192x160) = 1,056,326,400 > 560e6: shrink the axis of
  # largest patch/median ratio, ties to nnU-Net's last axis (the records'
  # first), by 32 each time:
  #   ratios 1, 1, 1      -> axis 0: (128,192,160) A = 845.1e6
  #   ratios 0.8, 1, 1    -> axis 1: (128,160,160) A = 704.2e6
  #   ratios 0.8, .83, 1  -> axis 2: (128,160,128) A = 563.4e6
  #   ratios 0.8, .83, .8 -> axis 1: (128,128,128) A = 450.7e6 fits.
  # Batch: memory round(1120e6 / 450.7e6) = 2; dataset round(0.05 * 10 *
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
  # The fullres patch covers 43% of the median image: no 3d_lowres stage.
  assert p.batch_dice is False
  assert p.vram_estimate_gb == pytest.approx(8.0 * 450_699_264 / 560e6)


def thick_z_fingerprint() -> fingerprint_lib.Fingerprint:
  """0.9 mm in-plane, 120 mm along z at slice spacings 2.0 to 4.0."""
  z = [(2.0, 60), (2.5, 48)] + [(3.0, 40)] * 8 + [(4.0, 30)]
  return make_fingerprint([(0.9, 0.9, s) for s, _ in z],
                          [(192, 192, n) for _, n in z])


def test_anisotropic_target_spacing():
  # z spacing 2.0 (60 slices), 2.5 (48), 3.0 (40) x8, 4.0 (30). Median z 3.0
  # > 3 * 0.9 and 40 * 3 < 192: the 10th percentile of z, 2.5 (rank 1 of 11),
  # is kept (>= 0.9).
  assert planner.target_spacing(thick_z_fingerprint()) == (0.9, 0.9, 2.5)
  # Two thin-slice scans: the 10th percentile (0.5) is finer than in-plane,
  # so z gets the in-plane spacing + 1e-5 (nnU-Net's).
  fp = make_fingerprint([(0.9, 0.9, 0.5)] * 2 + [(0.9, 0.9, 4.0)] * 8,
                        [(200, 200, 300)] * 2 + [(200, 200, 38)] * 8)
  assert planner.target_spacing(fp) == pytest.approx((0.9, 0.9, 0.90001),
                                                     rel=1e-12)


def test_anisotropic_plan_pools_in_plane_first():
  # The fingerprint of the test above: every subject is 48 slices at 2.5 mm,
  # median shape 192x192x48, which clips the initial patch.
  # Stage 1: z/x spacing 2.5/0.9 >= 2 -> pool x, y only, kernel (3,3,1).
  # Stages 2-4: 2.5/1.8 < 2 -> pool all, kernel 3 from now on.
  # Stage 5: z size 6 < 8 -> pool x, y. Pools (5, 5, 3), divisor (32, 32, 8).
  # A = 473,969,664 <= 560e6. Batch: round(1120e6 / A) = 2.
  fp = thick_z_fingerprint()
  p = planner.plan(fp)
  assert p.median_shape == (192, 192, 48)
  assert p.patch_size == (192, 192, 48)
  assert p.strides == ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2),
                       (2, 2, 1))
  assert p.kernel_sizes == ((3, 3, 1),) + ((3, 3, 3),) * 5
  assert p.batch_size == 2
  # 2D slices z and plans 192x192: 6 stages, A = 11,538,432; memory
  # round(85e6 * 12 / A) = 88, dataset round(0.05 * 11 * 48) = 26.
  p = planner.plan(fp, dims=2)
  assert (p.slice_axis, p.patch_size, p.batch_size) == (2, (192, 192), 26)


def test_2mm_plans_batch_and_padding():
  # 80x96x80 at 2 mm: 4 pools, 5 stages, divisor 16: patch = median.
  # A = 131,884,800: memory limit round(1120e6 / A) = round(8.49) = 8.
  # Dataset limit round(0.05 * subjects): 60 -> 3, 24 -> 1 (-> 2), 200 -> 10.
  for subjects, batch in {60: 3, 24: 2, 200: 8}.items():
    p = planner.plan(uniform((2, 2, 2), (80, 96, 80), subjects))
    assert p.patch_size == (80, 96, 80)
    assert p.features == (32, 64, 128, 256, 320)
    assert p.batch_size == batch, subjects
  # 77x94x82 (the 2 mm template brain): 4 pools per axis (77 -> 39 -> 20 ->
  # 10 -> 5), padded to 80x96x96, larger than every volume: nnU-Net keeps it
  # and pads the volumes when sampling. Batch: memory round(1120e6 /
  # 158,261,760) = 7, dataset round(0.05 * 60 * 593,516 / 737,280) = 2.
  p = planner.plan(uniform((2, 2, 2), (77, 94, 82), 60))
  assert (p.patch_size, p.batch_size) == ((80, 96, 96), 2)
  assert p.strides == ((1, 1, 1),) + ((2, 2, 2),) * 4


def test_shrinking_skips_no_valid_size():
  # nnU-Net's example: 256 has divisor 64 (6 pools), but 224 = 7 * 32 is
  # valid with 5 pools, so 256 shrinks to 224, not 192.
  top = topology.network_topology((1, 1, 1), (256, 256, 256))
  assert top.divisor == (64, 64, 64)
  smaller = topology.shrink_axis((1, 1, 1), top, 0)
  assert smaller.patch_size == (224, 256, 256)
  assert smaller.divisor == (32, 64, 64)


def test_2d_plan_uses_the_2d_reference_and_caps():
  # Slices along axis 2 (isotropic): 160x192, 5 pools, 6 stages with the 2D
  # cap 512. A = 9,615,360; memory limit round(85e6 * 12 / A) = 106; dataset
  # limit (3D voxels, as nnU-Net) round(0.05 * 10 * 4,915,200 / 30,720) = 80.
  p = planner.plan(uniform((1, 1, 1), (160, 192, 160), 10), dims=2)
  assert (p.dims, p.slice_axis, p.axes) == (2, 2, (0, 1))
  assert p.patch_size == (160, 192)
  assert p.strides == ((1, 1),) + ((2, 2),) * 5
  assert p.kernel_sizes == ((3, 3),) * 6
  assert p.features == (32, 64, 128, 256, 512, 512)
  assert p.batch_size == 80 and p.batch_dice is True
  # 100 subjects: the dataset allows 800, memory 106.
  assert planner.plan(uniform((1, 1, 1), (160, 192, 160), 100),
                      dims=2).batch_size == 106


def test_features_are_capped():
  # 256^3 at 1 mm: 6 pools, 7 stages; an 80 GB budget holds it at batch 2.
  # (The 2D cap, 512, is in the golden plans.)
  p = planner.plan(uniform((1, 1, 1), (256, 256, 256), 20),
                   vram_budget_gb=80.0)
  assert p.patch_size == (256, 256, 256)
  assert p.features == (32, 64, 128, 256, 320, 320, 320)
  assert p.vram_estimate_gb <= 80.0


def test_json_round_trip(tmp_path):
  for dims in (3, 2):
    p = planner.plan(uniform((0.9, 0.9, 3.0), (192, 192, 40), 11), dims=dims)
    planner.save_plan(p, tmp_path / "plan.json")
    assert planner.load_plan(tmp_path / "plan.json") == p
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
  assert filled.batch_dice is False  # no 3d_lowres stage
  assert tuple(filled.data.target_spacing) == (2.0, 2.0, 2.0)
  assert filled.data.slice_axis == config.data.slice_axis  # 3D: untouched
  assert tuple(config.data.patch_size) == ()  # the input is not modified
  # The planned batch (3) is rounded down to a multiple of the devices.
  config.batch_size = 0
  assert config_plan.apply_plan(config, p, num_devices=2).batch_size == 2
  assert config_plan.apply_plan(config, p, num_devices=4).batch_size == 4
  config.batch_dice = True  # the user's
  assert config_plan.apply_plan(config, p).batch_dice is True


def test_2d_plan_records_the_slice_axis():
  fp = uniform((0.9, 3.0, 0.9), (192, 40, 192), 11)  # thick axis 1
  config = planned_config()
  config.planner.dims = 2
  p = config_plan.plan_from_config(fp, config)
  filled = config_plan.apply_plan(config, p)
  assert filled.data.slice_axis == 1 and filled.batch_dice is True
  assert len(filled.data.patch_size) == 2
  with config.unlocked():
    config.planner.suppress_transpose = True
  assert config_plan.plan_from_config(fp, config).slice_axis == 2


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
  # 2D is chosen by the user's patch length, whatever planner.dims says; the
  # patch lists the in-plane axes in the records' order.
  # 96 -> 48 -> 24 -> 12 -> 6 (a lone axis pools from 12) and 32 -> 16 -> 8
  # -> 4: 4 and 3 pools.
  config.data.patch_size = (96, 32)
  p = config_plan.plan_from_config(
      uniform((3.0, 1.0, 1.0), (40, 128, 64), 10), config)
  assert (p.dims, p.slice_axis, p.patch_size) == (2, 0, (96, 32))
  assert p.pools_per_axis == (4, 3)


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
