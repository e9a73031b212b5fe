"""The closing summary's lesion recall per size bin, from aggregated metrics."""

import numpy as np

from pvl_jax.evaluation import lesions
from pvl_jax.evaluation import run_summary
from pvl_jax.evaluation import segmentation


def _split(pred: np.ndarray, ref: np.ndarray) -> dict:
  return segmentation.aggregate([segmentation.evaluate_subject(
      pred, ref, (2.0, 2.0, 2.0))])


def test_size_bins_in_order_with_counts_and_summary_rows():
  ref = np.zeros((20, 20, 20), bool)
  ref[1, 1, 1] = True                 # 0.008 ml: the smallest bin, missed
  ref[5, 5, 5:8] = True               # 0.024 ml: smallest bin, found
  ref[10:14, 10:14, 10:14] = True     # 64 voxels, 0.512 ml: 0.5-2 ml, found
  pred = ref.copy()
  pred[1, 1, 1] = False
  test = _split(pred, ref)
  bins = lesions.size_bins(test)
  assert [label for label, _, _ in bins] == [
      "0-0.05ml", "0.05-0.5ml", "0.5-2ml", "2-infml"]
  assert [(n, found) for _, n, found in bins] == [(2, 1), (0, 0), (1, 1),
                                                  (0, 0)]
  header, rows = run_summary.size_recall_rows({"val": test, "test": test})
  assert header[1] == "0 - 0.05ml"
  assert rows[1] == ["test", "0.50 (1/2)", "no lesion", "1.00 (1/1)",
                     "no lesion"]
