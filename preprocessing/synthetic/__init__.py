"""Synthetic PVL cohort on the MNI152 template: the embedded default dataset.

No PVL scans can be shipped, so this package builds a cohort that is as
close to the real problem as a generator can be, from the MNI152 2009
template that nilearn ships offline (T1, GM/WM probability maps, brain
mask).

The model, per subject (every number is a `params.CohortParams` field):

1. Anatomy (`anatomy`): the template's tissue maps warped by a random smooth
   displacement field (`deform_mm`). The lateral ventricles are the
   connected component of in-brain voxels with GM + WM < 0.5 that contains
   MNI (0, -15, 14) mm (about 18 ml; its neighbour through the foramina is
   midline CSF and cisterns).
2. Ventriculomegaly and white-matter loss, as PVL brings (`anatomy`): the
   ventricles grow into the adjacent tissue by a spatially varying margin of
   up to `ventricle_growth_mm`, so their walls become irregular.
3. Lesions (`lesions`): seeds in periventricular white matter (`band_mm`
   from the enlarged ventricle wall, WM fraction > 0.5), drawn with extra
   weight near the frontal horns and, by a per-subject amount, posteriorly
   (trigones and the bodies next to the corticospinal tract). Counts vary
   widely (`mean_lesions`), sizes range from a voxel or two to confluent
   lesions of several ml (`lesion_radius_mm`), shapes are unions of randomly
   oriented, noise-perturbed ellipsoids, so small disconnected lesions are
   common.
4. FLAIR-like contrast (`contrast`): CSF dark, WM mid, GM brighter, lesions
   bright with a per-lesion intensity that overlaps GM (`lesion_intensity`);
   normal bright periventricular caps and rims (`cap_intensity`), partial
   volume (the intensity image is smoothed by `partial_volume_sigma_vox`), a
   smooth multiplicative bias field (`bias_strength`; raw scans carry a
   stronger one, see `acquisition`) and Rician noise (`noise_level`).
   Because of the caps, bright cortex and the bias, a single intensity
   threshold cannot segment the lesions well. A T1w-like image shares the
   anatomy and lesions.
5. Hand function (`lesions`): bad (1) with probability
   sigmoid(label_slope * (log(motor_ml + 0.01) - log(label_threshold_ml))),
   where motor_ml is the lesion volume inside the motor ROI: two ellipsoids
   of posterior periventricular white matter beside the corticospinal tract,
   centred at MNI (+-24, -22, 24) mm with radii (10, 16, 12) mm. The noise
   of that draw fixes the Bayes limit of any classifier that knows motor_ml;
   generator.json records it for the cohort.

`subject` draws one subject through steps 1-4 on the template grid. Output
(`cohort`) is a BIDS dataset (see docs/preprocessing.md) in one of two spaces: "raw" scans
as a scanner would write them, each subject with its own pose, voxel grid,
skull, bias field and noise, plus the ground truth that preprocessing is
scored against (`acquisition`), or "template" scans on the template grid,
ready for training. Every file is byte-deterministic in the seed, a
subject's anatomy, lesions and label are the same in both spaces, and the
dataset appears atomically (built in a temporary folder).

Usage (`__main__`):
  python -m preprocessing.synthetic --out=DIR --num_subjects=40 --seed=0
      [--resolution_mm=2] [--space=raw|template] [--modalities=FLAIR,T1w]
      [--noscale_spacings]
"""
