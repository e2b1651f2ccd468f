"""LayerNorm-GRU, one op, one folder:

* ``module.py``: :class:`LayerNormGRU` (the ``torch.nn.GRU``-like module) and the choice of implementation;
* ``reference.py``: the plain-PyTorch definition (:func:`ln_gru_reference`, :func:`ln_gru_layer_reference`);
* ``function.py``: the autograd Function of the Triton path (forward and hand-written backward);
* ``launcher.py``: block sizes and launches of the kernels in ``fastdecoder.kernels.ln_gru`` (``@triton.jit``).
"""
from fastdecoder.ops.ln_gru.module import BACKENDS, LayerNormGRU
from fastdecoder.ops.ln_gru.reference import ln_gru_layer_reference, ln_gru_reference

__all__ = ["LayerNormGRU", "ln_gru_layer_reference", "ln_gru_reference", "BACKENDS"]
