"""Triton kernels: ``@triton.jit`` code only (one module per op), installed as ``fastdecoder.kernels``.

The launchers, references and dispatch of each op are in ``fastdecoder.ops.<op>``. Importing this package does not
import triton; each kernel module does, so CPU-only users never pay for it. Without CUDA, kernels run through
Triton's interpreter when ``TRITON_INTERPRET=1`` is set before a kernel module is imported (``tests/conftest.py``
does this); ``fastdecoder.ops.triton_usable`` is the rule for when they can run.
"""
