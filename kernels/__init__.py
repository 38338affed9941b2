"""Triton kernels for mLiT, installed as `mlit.kernels` (see pyproject.toml)."""
