"""Evaluation: metrics, evaluating a trained run, summaries, plots and tables."""
