"""Pretrained teachers: reading PyTorch checkpoints and converting them to acs_jax teachers."""
