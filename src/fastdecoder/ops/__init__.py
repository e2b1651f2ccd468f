"""Ops: one module per op, each with a plain-PyTorch reference and a dispatch to its Triton kernel."""
from .augment import augment, gaussian_taps, sample_masks

__all__ = ["augment", "gaussian_taps", "sample_masks"]
