"""A training-speed GRU for the CPU: ``torch.nn.GRU``'s math and weights, a backward with one GEMM per weight.

``nn.GRU`` on the CPU already computes each layer's input projection as one GEMM over all steps; its autograd
backward, though, runs per time step: two small GEMMs (dh and dW_hh) and a gradient accumulation for every weight,
every step. :func:`gru_forward` keeps the input projection as autograd's one GEMM and runs the recurrence as one
autograd Function whose backward does one (B, 3H) @ (3H, H) GEMM per step for dh and then dW_hh, db_hh as single
GEMMs/sums over all steps. Equal to ``nn.GRU`` to fp32 round-off (the sums over steps are reordered); the same
inter-layer dropout call as ``nn.GRU`` (``F.dropout`` on each layer's output but the last).

Under CPU autocast (bf16) the input projections run in bf16 (autocast's ``linear``: the big GEMMs, forward and
backward) and the recurrence in fp32: its inputs are cast to fp32 and autocast is off inside it, so the state, the
gates and the per-step GEMMs keep fp32 (as ops.ln_gru keeps its state on CUDA); each layer's output is fp32.

Unidirectional, batch-first GRUs only (:func:`supports` says whether a module qualifies).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gru_forward", "supports"]


def supports(rnn: torch.nn.Module) -> bool:
    """True for a unidirectional, batch-first ``nn.GRU`` with biases and no projections."""
    return (isinstance(rnn, torch.nn.GRU) and rnn.batch_first and not rnn.bidirectional and rnn.bias
            and getattr(rnn, "proj_size", 0) == 0)


class _Recurrence(torch.autograd.Function):
    """gi (N, B, 3H) input gates (x W_ih^T + b_ih), h0 (B, H), w_hh (3H, H), b_hh (3H,) -> outputs (N, B, H)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, gi, h0, w_hh, b_hh):
        N, B, H3 = gi.shape
        H = H3 // 3
        out = gi.new_empty(N, B, H)
        gates = gi.new_empty(N, B, H3)  # r, z, n after their nonlinearities
        hn = gi.new_empty(N, B, H)  # the hidden part of n's pre-activation (h W_hn^T + b_hn)
        h = h0
        w_t = w_hh.t()
        for t in range(N):
            gh = torch.addmm(b_hh, h, w_t)
            rz = torch.sigmoid(gi[t, :, :2 * H] + gh[:, :2 * H])
            r, z = rz[:, :H], rz[:, H:]
            n = torch.tanh(torch.addcmul(gi[t, :, 2 * H:], r, gh[:, 2 * H:]))
            h = torch.lerp(n, h, z)  # n + z (h - n) = (1 - z) n + z h
            gates[t, :, :2 * H] = rz
            gates[t, :, 2 * H:] = n
            hn[t] = gh[:, 2 * H:]
            out[t] = h
        ctx.save_for_backward(h0, w_hh, out, gates, hn)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, d_out):
        h0, w_hh, out, gates, hn = ctx.saved_tensors
        N, B, H = out.shape
        h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (N, B, H)
        d_gi = torch.empty_like(gates)  # grads of the gate pre-activations (input side)
        d_gh = torch.empty_like(gates)  # ... and of the hidden side (differs from d_gi in the n part only)
        dh = torch.zeros_like(h0)
        for t in range(N - 1, -1, -1):
            dh = dh + d_out[t]
            r, z, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
            dn = dh * (1 - z) * (1 - n * n)
            dz = dh * (h_prev[t] - n) * z * (1 - z)
            dr = dn * hn[t] * r * (1 - r)
            d_gi[t, :, :H] = dr
            d_gi[t, :, H:2 * H] = dz
            d_gi[t, :, 2 * H:] = dn
            d_gh[t, :, :2 * H] = d_gi[t, :, :2 * H]
            d_gh[t, :, 2 * H:] = dn * r
            dh = torch.addmm(dh * z, d_gh[t], w_hh)
        flat = d_gh.reshape(N * B, 3 * H)
        d_w = flat.t() @ h_prev.reshape(N * B, H)
        return d_gi, dh, d_w, flat.sum(0)


def gru_forward(rnn: torch.nn.GRU, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The output sequence of ``rnn(x, h0)[0]``: x (B, N, I) batch-first, h0 (layers, B, H) or None -> (B, N, H)."""
    B, N, _ = x.shape
    inp = x
    for layer in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh"))
        gi = F.linear(inp, w_ih, b_ih)  # one GEMM over all steps
        if layer == 0:  # time-major gates without copying the (wide) batch-first input
            gi = gi.transpose(0, 1)
        h = x.new_zeros(B, rnn.hidden_size) if h0 is None else h0[layer]
        inp = _Recurrence.apply(gi, h, w_hh, b_hh)
        if rnn.dropout and rnn.training and layer < rnn.num_layers - 1:
            inp = F.dropout(inp, rnn.dropout, training=True)
    return inp.transpose(0, 1)
