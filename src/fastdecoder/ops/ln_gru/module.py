"""LayerNormGRU: a drop-in ``torch.nn.GRU`` with layer normalization inside the recurrence (haste-style), and the
dispatch between its two implementations (the definition is in ``reference.py``).

The LN of the recurrent pre-activations rules out cuDNN. Two implementations:

- ``"reference"``: :func:`ln_gru_layer_reference`, the definition as a plain PyTorch loop over time steps
  (gradients by autograd). Any device and dtype; slow.
- ``"triton"``: :class:`~fastdecoder.ops.ln_gru.function.LNGRULayerFunction`: the input projection and its LN for all
  steps as one GEMM + one kernel, per step one GEMM + one fused Triton kernel (LN, gates, state update), a
  hand-written backward in reverse time. On CPU tensors it runs through Triton's interpreter when
  ``TRITON_INTERPRET=1`` (slow; for tests). Where Triton cannot run (``triton_usable``) it raises
  ``FastPathUnavailable``.

``"auto"`` picks Triton for CUDA tensors where ``triton_usable`` and the reference elsewhere.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import nn

from fastdecoder.ops.ln_gru.reference import ln_gru_layer_reference, run_layers
from fastdecoder.ops.triton_support import require_triton, triton_usable

__all__ = ["LayerNormGRU", "BACKENDS"]

BACKENDS = ("auto", "reference", "triton")


def _layer_triton(x, h0, params, eps):
    from fastdecoder.ops.ln_gru.function import ln_gru_layer_triton  # imports triton

    return ln_gru_layer_triton(x, h0, params, eps)


# ----------------------------------------------------------------------------------------------------------------
# module
# ----------------------------------------------------------------------------------------------------------------
class LayerNormGRU(nn.Module):
    """A ``torch.nn.GRU`` with layer normalization of the input and recurrent pre-activations (see module doc).

    Args are those of ``torch.nn.GRU`` plus ``eps`` (of both LNs) and ``backend`` (``"auto"``, ``"reference"``,
    ``"triton"``). **``batch_first`` defaults to True here** (``torch.nn.GRU`` defaults to False): input (B, T, I),
    output (B, T, D*H); with ``batch_first=False`` they are (T, B, I) and (T, B, D*H). Unbatched input (T, I) works
    as in ``torch.nn.GRU``. ``h0`` and ``h_n`` are (num_layers * D, B, H) whatever ``batch_first``; ``h0=None`` means
    zeros. ``dropout`` applies to the outputs of every layer but the last, in training only. No packed sequences:
    the GRU runs over the padded sequence (as the reference models do).

    Parameters are named as ``torch.nn.GRU``'s (``weight_ih_l{k}{_reverse}`` (3H, in), ``weight_hh_l{k}`` (3H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,)) plus the LN gains ``ln_ih_weight_l{k}{_reverse}`` and
    ``ln_hh_weight_l{k}{_reverse}`` (3H,), init 1; an ``nn.GRU`` state dict loads with ``strict=False``.
    Init as the presets init their GRU: weight_hh orthogonal, weight_ih xavier-uniform, biases
    uniform(-1/sqrt(H), 1/sqrt(H)) (``torch.nn.GRU``'s default).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0, bidirectional: bool = False, eps: float = 1e-5,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"LayerNormGRU: {name} must be a positive int, got {v!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0) or isinstance(dropout, bool):
            raise ValueError(f"LayerNormGRU: dropout must be a number in [0, 1], got {dropout!r}")
        if not eps > 0:
            raise ValueError(f"LayerNormGRU: eps must be > 0, got {eps!r}")
        if backend not in BACKENDS:
            raise ValueError(f"LayerNormGRU: backend must be one of {BACKENDS}, got {backend!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("LayerNormGRU: dropout > 0 with num_layers=1 has no effect (it applies between layers)",
                          stacklevel=2)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.eps = float(eps)
        self.backend = backend
        D = 2 if bidirectional else 1
        N = 3 * hidden_size
        kw = {"device": device, "dtype": dtype}
        self._param_names: list[list[str]] = []
        for k in range(num_layers):
            layer_in = input_size if k == 0 else hidden_size * D
            names = []
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
                shapes = [("weight_ih", (N, layer_in)), ("weight_hh", (N, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (N,)), ("bias_hh", (N,))]
                shapes += [("ln_ih_weight", (N,)), ("ln_hh_weight", (N,))]
                for base, shape in shapes:
                    self.register_parameter(base + sfx, nn.Parameter(torch.empty(shape, **kw)))
                names.append(sfx)
            self._param_names.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            elif name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                nn.init.uniform_(p, -stdv, stdv)
            elif name.startswith("ln_"):
                nn.init.ones_(p)

    def layer_params(self, k: int) -> list:
        """Flat parameter list of layer ``k``: per direction (w_ih, w_hh, b_ih, b_hh, g_ih, g_hh); None biases
        when ``bias=False``."""
        out = []
        for sfx in self._param_names[k]:
            g = lambda base: getattr(self, base + sfx) if self.bias or not base.startswith("bias") else None  # noqa
            out += [g("weight_ih"), g("weight_hh"), g("bias_ih"), g("bias_hh"), g("ln_ih_weight"),
                    g("ln_hh_weight")]
        return out

    def resolved_backend(self, device: torch.device) -> str:
        """The implementation ``forward`` uses for tensors on ``device``."""
        return self.backend_for(self.backend, device)

    @staticmethod
    def backend_for(backend: str, device: torch.device) -> str:
        """The implementation a LayerNormGRU with ``backend`` uses for tensors on ``device``."""
        if backend == "reference":
            return "reference"
        if backend == "auto":
            return "triton" if device.type == "cuda" and triton_usable(device) else "reference"
        require_triton(device, "LayerNormGRU(backend='triton')")
        return "triton"

    def forward(self, x: torch.Tensor, h0: Optional[torch.Tensor] = None):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"LayerNormGRU: input must be a tensor, got {type(x).__name__}")
        if x.dim() not in (2, 3):
            raise ValueError(f"LayerNormGRU: input must have rank 3 ({'(B, T, I)' if self.batch_first else '(T, B, I)'})"
                             f" or 2 (unbatched (T, I)), got rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"LayerNormGRU: input feature size (last dim) is {x.shape[-1]}, "
                             f"expected input_size={self.input_size}")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        elif not self.batch_first:
            x = x.transpose(0, 1)
        B, T = x.shape[0], x.shape[1]
        if B == 0 or T == 0:
            raise ValueError(f"LayerNormGRU: empty input (batch {B}, time steps {T})")
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        if h0 is None:
            h0 = torch.zeros(LD, B, H, device=x.device, dtype=x.dtype)
        else:
            want = (LD, H) if unbatched else (LD, B, H)
            if not isinstance(h0, torch.Tensor) or tuple(h0.shape) != want:
                got = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0).__name__
                raise ValueError(f"LayerNormGRU: h0 must have shape {want} (num_layers * num_directions, "
                                 f"{'' if unbatched else 'batch, '}hidden_size), got {got}")
            if h0.device != x.device:
                raise ValueError(f"LayerNormGRU: h0 is on {h0.device}, input on {x.device}")
            if unbatched:
                h0 = h0.unsqueeze(1)
        layer_fn = _layer_triton if self.resolved_backend(x.device) == "triton" else ln_gru_layer_reference
        layer_params = [self.layer_params(k) for k in range(self.num_layers)]
        out, h_n = run_layers(layer_fn, x, h0, layer_params, self.dropout, self.training, self.eps)
        if unbatched:
            return out.squeeze(0), h_n.squeeze(1)
        if not self.batch_first:
            out = out.transpose(0, 1).contiguous()
        return out, h_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        s += f", batch_first={self.batch_first}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", eps={self.eps}, backend={self.backend!r}"
