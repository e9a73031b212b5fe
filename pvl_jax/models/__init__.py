"""Flax models: the U-Net (2D/3D) and its joint hand-function head."""
