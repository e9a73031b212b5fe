"""Segmentation (WMH challenge) and hand-function classification metrics."""
