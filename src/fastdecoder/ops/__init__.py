"""Ops: one folder per op (``augment/``, ``ln_gru/``), each with the plain-PyTorch reference, the launcher /
autograd Function of its Triton kernels (``fastdecoder.kernels``: ``@triton.jit`` code only) and the dispatch.
Whether Triton can run is decided in one place, :func:`triton_usable`; where it cannot, the fast path raises
:class:`FastPathUnavailable`."""
from fastdecoder.ops.augment import augment, gaussian_taps, sample_masks
from fastdecoder.ops.triton_support import FastPathUnavailable, triton_usable

__all__ = ["augment", "gaussian_taps", "sample_masks", "triton_usable", "FastPathUnavailable"]
