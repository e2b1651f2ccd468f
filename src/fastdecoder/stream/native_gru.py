"""One time step of a unidirectional ``torch.nn.GRU`` (batch 1, fp32, CPU) in native code (csrc/gru_step.cpp).

The streaming decoder's per-hop path: a step of b2t25's 5 x 768 GRU is memory-bound (it reads ~124 MiB of fp32
weights), and the native step reads them at close to the core's memory bandwidth (8 weight rows per pass, AVX2+FMA
or AVX-512F picked at run time), where ``nn.GRU`` on one frame does not. Same math and weight layout as ``nn.GRU``
(gates r, z, n; h' = (1 - z) n + z h), fp32 throughout, so results agree to fp32 round-off.
"""
from __future__ import annotations

import torch

from fastdecoder import _native

__all__ = ["NativeGRUStep", "ISAS", "unsupported_reason"]

# The paths this CPU supports, in the order isa="auto" prefers (csrc/gru_step.hpp: AVX2+FMA, AVX-512F, scalar).
ISAS: tuple[str, ...] = tuple(_native.gru_isas())


def unsupported_reason(rnn) -> str | None:
    """Why :class:`NativeGRUStep` cannot run ``rnn`` (None when it can)."""
    if not isinstance(rnn, torch.nn.GRU):
        return f"{type(rnn).__name__} is not a torch.nn.GRU"
    if rnn.bidirectional or not rnn.bias or rnn.proj_size:
        return "only unidirectional nn.GRU with biases (no projection) is supported"
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in rnn.parameters()):
        return "the weights must be float32 on the CPU"
    return None


class NativeGRUStep:
    """``step(x, h)``: one time step of every layer of ``rnn``, ``h`` updated in place.

    The weights are taken once, here, as contiguous fp32 tensors sharing storage with ``rnn``'s parameters (a copy
    only for a non-contiguous parameter): in-place updates of the parameters (``load_state_dict``, an optimiser step)
    are seen by later steps; parameters replaced by new tensors (``p.data = ...``), or a copied one, are read as they
    were at construction.

    Args:
        rnn: a unidirectional ``torch.nn.GRU`` with biases, fp32 on the CPU.
        isa: "auto" (the first of :data:`ISAS`) or one of them; a path the CPU lacks raises ValueError.
    """

    def __init__(self, rnn: torch.nn.GRU, isa: str = "auto"):
        reason = unsupported_reason(rnn)
        if reason is not None:
            raise ValueError(f"NativeGRUStep: {reason}")
        L = rnn.num_layers
        self._tensors = {k: [getattr(rnn, f"{k}_l{l}").detach().contiguous() for l in range(L)]
                         for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        self._step = _native.GruStep(**{k: [t.numpy() for t in ts] for k, ts in self._tensors.items()}, isa=isa)
        self.isa: str = self._step.isa
        self.input_size, self.hidden_size, self.num_layers = rnn.input_size, rnn.hidden_size, L

    def step(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """x (input_size,) float32; h (num_layers, hidden_size) float32 contiguous CPU tensor, overwritten with the
        new states (h[-1] is the step's output). Runs without the GIL."""
        self._step.step(x.contiguous().numpy(), h.numpy())
