"""LayerNorm-GRU, the definition: a plain PyTorch loop over time steps (gradients by autograd; any device, dtype).

Per layer and direction (gate order r, z, n as in ``torch.nn.GRU``; LN has no bias of its own, eps 1e-5)::

    a_x = LN(x_t W_ih^T) * g_ih + b_ih          # LN over the 3H input pre-activations
    a_h = LN(h_{t-1} W_hh^T) * g_hh + b_hh      # LN over the 3H recurrent pre-activations
    r = sigmoid(a_x[r] + a_h[r]);  z = sigmoid(a_x[z] + a_h[z])
    n = tanh(a_x[n] + r * a_h[n]);  h_t = (1 - z) * n + z * h_{t-1}
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ln_gru_layer_reference", "ln_gru_reference", "run_layers", "N_PARAMS"]

N_PARAMS = 6  # per direction: weight_ih, weight_hh, bias_ih, bias_hh, ln_ih_weight, ln_hh_weight


def ln_gru_layer_reference(x: torch.Tensor, h0: torch.Tensor, params, eps: float = 1e-5):
    """One layer, all directions, as a plain PyTorch loop.

    ``x`` (B, T, I); ``h0`` (D, B, H); ``params`` the flat list of D groups ``(weight_ih, weight_hh, bias_ih,
    bias_hh, ln_ih_weight, ln_hh_weight)`` (biases may be None). Returns ``out`` (B, T, D*H) and ``h_n`` (D, B, H).
    The reverse direction reads the sequence from t = T-1 down to 0 and writes its h_t at position t.
    """
    D = len(params) // N_PARAMS
    T = x.shape[1]
    outs, h_n = [], []
    for d in range(D):
        w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = params[N_PARAMS * d: N_PARAMS * (d + 1)]
        N = w_ih.shape[0]
        ax = F.layer_norm(F.linear(x, w_ih), (N,), g_ih, b_ih, eps)     # all steps at once
        ax_r, ax_z, ax_n = ax.chunk(3, dim=-1)
        h = h0[d]
        seq = [None] * T
        for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
            ah = F.layer_norm(F.linear(h, w_hh), (N,), g_hh, b_hh, eps)
            ah_r, ah_z, ah_n = ah.chunk(3, dim=-1)
            r = torch.sigmoid(ax_r[:, t] + ah_r)
            z = torch.sigmoid(ax_z[:, t] + ah_z)
            n = torch.tanh(ax_n[:, t] + r * ah_n)
            h = (1 - z) * n + z * h
            seq[t] = h
        outs.append(torch.stack(seq, dim=1))
        h_n.append(h)
    return torch.cat(outs, dim=-1), torch.stack(h_n)



def ln_gru_reference(x, h0, layer_params, dropout: float = 0.0, training: bool = False, eps: float = 1e-5):
    """Multi-layer reference: ``x`` (B, T, I), ``h0`` (L*D, B, H), ``layer_params`` one flat list per layer."""
    return run_layers(ln_gru_layer_reference, x, h0, layer_params, dropout, training, eps)


def run_layers(layer_fn, x, h0, layer_params, dropout, training, eps):
    D = len(layer_params[0]) // N_PARAMS
    inp, h_n = x, []
    for k, params in enumerate(layer_params):
        out, hn = layer_fn(inp, h0[k * D:(k + 1) * D], params, eps)
        h_n.append(hn)
        if dropout > 0 and training and k < len(layer_params) - 1:
            out = F.dropout(out, p=dropout, training=True)
        inp = out
    return inp, torch.cat(h_n, dim=0)

