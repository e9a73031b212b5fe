"""Joint 3D U-Net: lesion segmentation + hand-function head, L = r*L_cls + L_seg.

Usage:
  python -m pvl_jax.main --config=configs/joint.py --workdir=DIR
  python -m pvl_jax.main --config=configs/joint.py:demo --workdir=DIR
  python -m pvl_jax.main --config=configs/joint.py --config.r=0.3 ...

Without an argument this is the full-size recipe for an accelerator: the 1 mm
synthetic cohort, nnU-Net's 6-stage topology (32-64-128-256-320-320) on 128^3
patches in bfloat16. `demo` is sized for a 2-core CPU (about 10 minutes with
data generation): the 2 mm cohort, a 3-stage base-8 U-Net on 32^3 patches.

`sweep(add)` defines the sweep over r (crossed with folds and seeds) that
`launch.sweep` runs.
"""

import ml_collections

from configs import common

# The r values of the research question; r = 0 is segmentation only.
SWEEP_R = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the training config; `arg` is `demo`, `r=...`, `fold=...`."""
  arg = common.parse_arg(arg, demo=False, r=1.0, fold=0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.r = arg.r  # weight of the hand-function loss; 0 = segmentation only
  # The backend to train on: "" takes whatever JAX finds; "gpu" or "tpu"
  # stops the run at once if that backend is not there (a GPU plugin that
  # failed to load would otherwise fall back to the CPU).
  config.platform = ""
  # Accelerator memory per device (GB) that the preflight check compares the
  # compiled train step's estimate with; 0: what the runtime reports.
  config.device_memory_gb = 0.0

  config.data = ml_collections.ConfigDict()
  # A BIDS cohort; empty means the embedded synthetic cohort, generated once
  # and cached under cache_dir.
  config.data.cohort_dir = ""
  config.data.cache_dir = ""  # empty: $PVL_JAX_CACHE or ~/.cache/pvl_jax
  # overrides: CohortParams fields (preprocessing/synthetic/params.py) to
  # generate a shifted cohort, e.g. {"noise_level": (0.08, 0.14)}.
  config.data.synthetic = ml_collections.ConfigDict(dict(
      num_subjects=100, seed=0, resolution_mm=1, overrides={}))
  config.data.modalities = ("FLAIR",)
  config.data.mask_threshold = -1.0  # < 0: lesion masks must be binary
  # Lesion-mask value of voxels that are neither lesion nor background (e.g.
  # 2, WMH's "other pathology"): out of both losses, the patch sampler's
  # lesion voxels and every metric. -1: none.
  config.data.ignore_label = -1
  # The binary label (0/1; n/a or empty: unlabelled) and, optionally, a
  # table it is read from instead of participants.tsv (relative: to
  # cohort_dir), e.g. "phenotype/hand.tsv".
  config.data.label_column = "hand_function"
  config.data.phenotype_file = ""
  # Which scan of a participant: session "first", "last" or a label; run
  # "first", "last" or a number; bids_filter e.g. "acq-3D,rec-norm".
  config.data.session = "first"
  config.data.run = "last"
  config.data.bids_filter = ""
  # Brain masks of a cohort that brings none: "auto" (the cohort's where
  # present, else "nonzero" for scans with a zero background, else
  # "skull_strip"), "files", "nonzero", "skull_strip" (registration to the
  # template). See preprocessing/skull_strip_rules.py.
  config.data.brain_mask = "auto"
  # enabled: the cohort holds raw scans; register them to the template,
  # skull strip, N4 and resample to target_spacing (mm) first, once, cached
  # under cache_dir (preprocessing.pipeline). template/template_mask: your
  # own template and its brain mask ("": the MNI152 2009c template).
  config.data.preprocess = ml_collections.ConfigDict(dict(
      enabled=False, target_spacing=1.0, template="", template_mask=""))
  config.data.num_folds = 5
  # "site": folds grouped by participants.tsv's site column; "": not grouped.
  config.data.group_column = ""
  config.data.fold = arg.fold
  config.data.patch_size = ()  # planned (128^3 for the 1 mm cohort)
  # 2D models: the axis cut into slices; a 2D plan sets it (nnU-Net: the
  # coarsest axis; 2, the axial axis, for isotropic data).
  config.data.slice_axis = 2
  config.data.foreground_fraction = 0.33
  # The lesion voxel a forced patch is placed on: "voxel", uniform over all
  # lesion voxels (nnU-Net's; large lesions dominate), or "lesion", a lesion
  # drawn uniformly first (small lesions as often as large ones).
  config.data.foreground_sampling = "voxel"
  # grain worker processes: at most this many, and at most one per CPU this
  # process may use (its affinity, e.g. a Slurm allocation); 0: none.
  config.data.num_workers = 8
  # 0: train on the whole training split; N: on its first N subjects only
  # (a scarce-data experiment; validation and test splits stay whole).
  config.data.max_train_subjects = 0
  # Training augmentation. recipe "basic": flips, intensity scale/shift and
  # noise, drawn on the host per patch (`basic`); "nnunet": nnU-Net v2's
  # default transforms, drawn in the jitted train step on the device
  # (`nnunet`, pvl_jax/training/augmentation.py); "none": off. A
  # probability of 0 switches a transform off.
  config.data.augment = ml_collections.ConfigDict(dict(
      recipe="basic",
      basic=ml_collections.ConfigDict(dict(
          flip=True, intensity_scale=0.1, intensity_shift=0.1, noise_std=0.1,
          noise_prob=0.15)),
      nnunet=ml_collections.ConfigDict(dict(
          rotation_prob=0.2,
          # +- degrees about each axis; None: nnU-Net's rule from the patch
          # (30 in 3D; 180 in-plane for anisotropic 3D and for 2D patches, 15
          # for 2D patches 1.5 times longer than wide).
          rotation_max_deg=ml_collections.config_dict.placeholder(float),
          scaling_prob=0.2, scaling_range=(0.7, 1.4),  # > 1: objects shrink
          noise_prob=0.1, noise_std_range=(0.0, 0.1),
          blur_prob=0.2, blur_channel_prob=0.5, blur_sigma_range=(0.5, 1.0),
          brightness_prob=0.15, brightness_range=(0.75, 1.25),
          contrast_prob=0.15, contrast_range=(0.75, 1.25),
          low_res_prob=0.25, low_res_channel_prob=0.5,
          low_res_scale_range=(0.5, 1.0),
          gamma_inverted_prob=0.1, gamma_prob=0.3, gamma_range=(0.7, 1.5),
          # Spatial axes flipped with p 0.5 each; a 2D model uses 0 and 1.
          mirror_axes=(0, 1, 2)))))

  config.model = ml_collections.ConfigDict()
  # Planned: nnU-Net's 6-stage 32-64-128-256-320-320 for the 1 mm cohort.
  config.model.features = ()
  config.model.strides = ()
  config.model.kernel_sizes = ()
  config.model.num_classes = 2
  config.model.deep_supervision = True
  config.model.cls_hidden = 64
  # The hand-function head reads a "subject" (bags of cls_bag_size patches of
  # one subject in training, every window of the scan at inference) or each
  # "patch" on its own (window logits averaged at inference).
  config.model.cls_head = "patch"
  config.model.cls_bag_size = 0  # patches per bag; 0: the whole batch
  # "located": logistic regression on the lesion probability's template
  # blocks of cls_block^3 voxels (4: 8 mm at 2 mm), read from a per-subject
  # memory of the whole brain (pvl_jax/models/located_head.py); its weights
  # get cls_readout_l2 * |w|^2 added to L_cls, -1: chosen on the training
  # split's reference masks like the baseline's C
  # (pvl_jax/training/readout_penalty.py; config.json keeps the value).
  config.model.cls_block = 4
  config.model.cls_readout_l2 = -1.0
  # After training, the located head's read-out is refitted as the poster's
  # baseline (block size, lesion-frequency threshold and C chosen by its
  # inner CV) on the network's own segmentations of every subject outside
  # the test split (pvl_jax/evaluation/located_readout.py); False keeps the
  # read-out fitted to the training memory.
  config.model.cls_readout_refit = True
  # The template grid the blocks tile (shape, and the 4x4 voxel-to-world
  # affine that places every record and new scan in it); not set by hand:
  # prepare_run fills them in from the cohort (config.json keeps them for
  # inference).
  config.model.cls_template_shape = ()
  config.model.cls_template_affine = ()
  config.model.compute_dtype = "bfloat16"

  # Self-configuration (pvl_jax/planning/, nnU-Net v2's rules). With
  # plan = True the training split is fingerprinted and the planned fields
  # left unset -- () for data.patch_size, model.features, model.strides,
  # model.kernel_sizes; 0 for batch_size -- are filled; values set here or on
  # the command line win. The plan goes to <workdir>/plan.json.
  config.plan = True
  config.planner = ml_collections.ConfigDict(dict(
      dims=3,  # 2: U-Net on slices (used when data.patch_size is unset)
      vram_budget_gb=8.0,  # nnU-Net's default memory target
      # nnU-Net's option: True plans 2D on axial slices (axis 2) whatever the
      # spacing; False (its default) slices the coarsest axis.
      suppress_transpose=False))

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=200, weight_decay=1e-4,
      grad_clip_norm=12.0))
  config.batch_size = 0  # global, divisible by the device count; 0: planned
  config.num_steps = 20_000
  # Dice pooled over the batch (nnU-Net's batch_dice). None: planned by
  # nnU-Net's rule (on in 2D; in 3D only with a low-resolution stage, so off
  # for brain-sized data).
  config.batch_dice = ml_collections.config_dict.placeholder(bool)
  # Deep supervision (model.deep_supervision): weights per decoder output,
  # finest first (): nnU-Net v2's 1/2^i with the coarsest at 0); targets:
  # how each output's labels are brought down to its grid, "nearest"
  # (labels[::f]), "nearest_exact" (the block's centre voxel, nnU-Net's) or
  # "max" (lesion where any voxel of the block is; see
  # pvl_jax/training/losses.py).
  config.deep_supervision = ml_collections.ConfigDict(dict(
      weights=(), targets="nearest"))
  # Extra cross-entropy weight of a lesion voxel with no other lesion voxel
  # within 2 voxels (1 + w / n for n lesion voxels there): small lesions,
  # what PVL is made of, get more of the loss (pvl_jax/training/losses.py).
  # 0: nnU-Net's plain cross-entropy.
  config.small_lesion_weight = 0.0
  # NaN/Inf loss or gradients: "stop" (name the step and subjects, keep the
  # last good checkpoint) or "skip" (leave parameters unchanged, count it).
  config.nonfinite = "stop"

  config.log_every = 50
  config.eval_every = 1_000  # validation loss/Dice on fixed patches
  config.eval_patches = 16
  config.checkpoint_every = 1_000
  config.max_checkpoints_to_keep = 3

  config.inference = ml_collections.ConfigDict(dict(
      overlap=0.5, batch_size=2, num_plot_subjects=3,
      # Remove lesion components smaller than a volume, and components that
      # never reach a depth below the brain's outer surface, chosen together
      # on validation among the candidates (by lesion F1, then Dice;
      # pvl_jax/evaluation/postprocess_choice.py). The volumes stop below
      # 0.05 ml and the shell at 6 mm: PVL lesions are small and lie deep,
      # next to the ventricles.
      postprocess=True,
      postprocess_candidates_mm3=(0.0, 8.0, 16.0, 24.0, 32.0, 48.0),
      postprocess_depth_candidates_mm=(0.0, 2.0, 4.0, 6.0),
      # Mirroring test-time augmentation: spatial axes to flip, () = off;
      # (0, 1, 2) averages all 8 flips of a 3D model (a 2D model mirrors its
      # in-plane axes 0 and 1), at 8x the inference cost.
      mirror_axes=()))

  if arg.demo:
    config.data.synthetic = ml_collections.ConfigDict(dict(
        num_subjects=40, seed=0, resolution_mm=2, overrides={}))
    config.plan = False  # sized by hand for a 2-core CPU
    # Pooled over the batch: most 32^3 patches hold no lesion, and a
    # per-patch Dice of an empty patch is a noisy loss of ~1 (the demo's
    # figures in docs/results.md were measured with it).
    config.batch_dice = True
    config.batch_size = 2
    config.data.preprocess.target_spacing = 2.0
    config.data.patch_size = (32, 32, 32)
    config.data.num_workers = 1
    config.model.features = (8, 16, 32)
    config.model.strides = ((1, 1, 1), (2, 2, 2), (2, 2, 2))
    config.model.kernel_sizes = ((3, 3, 3),) * 3
    config.model.compute_dtype = "float32"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 50
    # Chosen over 3 seeds (docs/results.md, "Segmentation quality over
    # seeds"); the stacked convolution made 1500 steps cost what 1200 did.
    config.num_steps = 1500
    config.log_every = 100
    config.eval_every = 200
    config.eval_patches = 8
    config.checkpoint_every = 200
    config.inference.batch_size = 4
  return config


def sweep(add, arg: str | None = None) -> None:
  """The sweep over r, crossed with folds and seeds (big_vision style).

  Args:
    add: callback taking config overrides as keyword arguments with dotted
      keys passed through `**{"data.fold": k}`.
    arg: `folds=N,seeds=M` to widen the sweep (default 1 fold, 1 seed);
      `r=0/1/10` runs only those r values (slash-separated) instead of
      `SWEEP_R`.
  """
  arg = common.parse_arg(arg, folds=1, seeds=1, r="")
  try:
    r_values = ([float(r) for r in arg.r.split("/")] if arg.r
                else list(SWEEP_R))
  except ValueError:
    raise ValueError(f"config argument 'r={arg.r}': expected numbers "
                     "separated by '/', e.g. r=0/1/10") from None
  for seed in range(arg.seeds):
    for fold in range(arg.folds):
      for r in r_values:
        add(**{"r": r, "data.fold": fold, "seed": seed})
