"""nnU-Net v2-style experiment planning: fingerprint, plan, apply to a config."""
