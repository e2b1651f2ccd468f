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


_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class NativeGRUStep:
    """``step(x, h)`` / ``run(x, h)``: time steps of every layer of ``rnn``, ``h`` updated in place.

    The native object keeps no pointer into the weights: every call reads ``rnn``'s parameters as they are at that
    moment (``getattr(rnn, "weight_ih_l0")``, ...), checks them (float32 on the CPU, the shapes of construction) and
    passes them for that call only. So in-place updates, parameters replaced by new tensors (``load_state_dict(...,
    assign=True)``, ``.half()`` then ``.float()``) and storages moved by torch (``share_memory()``) are all read as
    they are now; a parameter that is no longer float32 on the CPU raises ValueError. A non-contiguous parameter is
    copied per call. Moving the weights while a call runs in another thread is a data race, as it is for ``nn.GRU``.

    Args:
        rnn: a unidirectional ``torch.nn.GRU`` with biases, fp32 on the CPU.
        isa: "auto" (the first of :data:`ISAS`) or one of them; a path the CPU lacks raises ValueError.
    """

    def __init__(self, rnn: torch.nn.GRU, isa: str = "auto"):
        reason = unsupported_reason(rnn)
        if reason is not None:
            raise ValueError(f"NativeGRUStep: {reason}")
        self.rnn = rnn
        self.input_size, self.hidden_size, self.num_layers = rnn.input_size, rnn.hidden_size, rnn.num_layers
        self._step = _native.GruStep(self.input_size, self.hidden_size, self.num_layers, isa)
        self.isa: str = self._step.isa
        self._names = {k: [f"{k}_l{l}" for l in range(self.num_layers)] for k in _KINDS}

    def weights(self) -> dict[str, list]:
        """The GRU's current parameters as C-contiguous float32 arrays, per kind one per layer (the native call's
        arguments; valid while the parameters are neither replaced nor moved). ValueError when one is no longer
        float32 on the CPU."""
        out = {}
        for kind, names in self._names.items():
            arrays = []
            for name in names:
                p = getattr(self.rnn, name)
                if p.dtype != torch.float32 or p.device.type != "cpu":
                    raise ValueError(f"NativeGRUStep: {name} is now {p.dtype} on {p.device}; the native step needs "
                                     "float32 on the CPU")
                arrays.append(p.detach().contiguous().numpy())
            out[kind] = arrays
        return out

    def run(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x (frames, input_size) float32; h (num_layers, hidden_size) float32 contiguous CPU tensor, overwritten
        with the states after the last frame. Returns (frames, hidden_size): the last layer's state after each frame.
        Runs without the GIL."""
        out = torch.empty(x.shape[0], self.hidden_size, dtype=torch.float32)
        self._step.run(x.detach().contiguous().numpy(), h.numpy(), out.numpy(), **self.weights())
        return out

    def step(self, x: torch.Tensor, h: torch.Tensor) -> None:
        """One frame: x (input_size,) float32; h (num_layers, hidden_size) float32 contiguous CPU tensor, overwritten
        with the new states (h[-1] is the step's output). Runs without the GIL."""
        if x.dim() != 1:
            raise ValueError(f"x must be ({self.input_size},), got shape {tuple(x.shape)}")
        self.run(x[None], h)
