"""Training: the loop, its steps, data parallelism, checkpoints, pre-emption, checks."""
