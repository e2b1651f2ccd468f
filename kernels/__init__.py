"""Triton kernels (``@triton.jit`` functions and their launch helpers), installed as ``fastdecoder.kernels``.

Importing this package does not import triton; each kernel module does, so CPU-only users never pay for it.
On a machine without CUDA, set ``TRITON_INTERPRET=1`` *before* triton is imported to run kernels through
Triton's interpreter (the test suite does this in ``tests/conftest.py``).
"""
