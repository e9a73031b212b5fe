"""Cohort resolution and caching, TFDS fold splits, the grain input pipeline."""
