"""Inference: sliding windows, postprocessing, trained runs, native-space prediction."""
