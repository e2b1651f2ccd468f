"""K independent unidirectional LayerNorm-GRUs (one per member of a batched run) as one batched computation.

Shapes: K members, B trials, T steps, I inputs, H hidden units, N = 3H. Per layer the member-stacked parameters
(w_ih (K, N, I), w_hh (K, N, H), b_ih / b_hh (K, N) or None, g_ih / g_hh (K, N)); x (K, B, T, I) batch-first per
member, h0 (K, B, H). Member k computes ``reference.ln_gru_layer_reference`` with its own parameters.

- ``members_ln_gru_layer_reference``: the definition with a member dimension, a plain PyTorch loop over time
  (the input projection and its LN for all steps as one batched GEMM; per step one batched (K, B, H) @ (K, H, N)
  product; gradients by autograd). Any device and dtype.
- ``members_ln_gru_layer_per_member``: K solo layers (``ln_gru_layer_reference`` or the solo Triton layer), one
  member at a time: the parity reference of the batched forms.
- ``function.MembersLNGRULayerFunction`` (``members_ln_gru_layer_triton``): the Triton path with the member
  dimension folded into the kernels' rows (K*B rows; each row reads its member's LN gains and biases).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdecoder.ops.ln_gru.reference import ln_gru_layer_reference

__all__ = ["members_ln_gru", "members_ln_gru_layer_reference", "members_ln_gru_layer_per_member"]


def _ln(a: torch.Tensor, g: torch.Tensor, b: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LN over the last dim of a (K, R, N) with per-member gain g (K, N) and bias b (K, N) or None."""
    y = F.layer_norm(a, a.shape[-1:], None, None, eps) * g.unsqueeze(1)
    return y if b is None else y + b.unsqueeze(1)


def members_ln_gru_layer_reference(x: torch.Tensor, h0: torch.Tensor, params, eps: float = 1e-5) -> torch.Tensor:
    """One unidirectional layer of K members: x (K, B, T, I), h0 (K, B, H), ``params`` (w_ih, w_hh, b_ih, b_hh,
    g_ih, g_hh) stacked over members -> out (K, B, T, H)."""
    w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = params
    K, B, T, _ = x.shape
    H = w_hh.shape[2]
    ax = _ln(torch.bmm(x.reshape(K, B * T, -1), w_ih.transpose(1, 2)), g_ih, b_ih, eps).view(K, B, T, 3 * H)
    ax_r, ax_z, ax_n = ax.chunk(3, dim=-1)
    w_t = w_hh.transpose(1, 2)
    h = h0
    seq = []
    for t in range(T):
        ah = _ln(torch.bmm(h, w_t), g_hh, b_hh, eps)
        ah_r, ah_z, ah_n = ah.chunk(3, dim=-1)
        r = torch.sigmoid(ax_r[:, :, t] + ah_r)
        z = torch.sigmoid(ax_z[:, :, t] + ah_z)
        n = torch.tanh(ax_n[:, :, t] + r * ah_n)
        h = (1 - z) * n + z * h
        seq.append(h)
    return torch.stack(seq, dim=2)


def members_ln_gru_layer_per_member(x: torch.Tensor, h0: torch.Tensor, params, eps: float = 1e-5,
                                    layer_fn=ln_gru_layer_reference) -> torch.Tensor:
    """The same, one solo layer (``layer_fn``, the solo op's signature) per member."""
    outs = []
    for k in range(x.shape[0]):
        mine = [None if p is None else p[k] for p in params]
        outs.append(layer_fn(x[k], h0[k].unsqueeze(0), mine, eps)[0])
    return torch.stack(outs)


def _layer_triton(x, h0, params, eps):
    from fastdecoder.ops.ln_gru.function import members_ln_gru_layer_triton  # imports triton

    return members_ln_gru_layer_triton(x, h0, params, eps)


LAYERS = {"reference": members_ln_gru_layer_reference, "triton": _layer_triton,
          "per_member": members_ln_gru_layer_per_member}


def members_ln_gru(x: torch.Tensor, layer_params: list, h0: torch.Tensor | None = None,
                   dropout_masks: list[torch.Tensor] | None = None, eps: float = 1e-5,
                   backend: str = "reference") -> torch.Tensor:
    """K unidirectional multi-layer LayerNorm-GRUs: x (K, B, T, I), ``layer_params`` one 6-tuple per layer
    (see ``members_ln_gru_layer_reference``), h0 (layers, K, B, H) or None (zeros), ``dropout_masks``: per layer
    but the last a (K, B, T, H) multiplier (already scaled by 1 / (1 - p)) of that layer's output, or None.
    ``backend``: reference | triton | per_member. Returns (K, B, T, H)."""
    if backend not in LAYERS:
        raise ValueError(f"backend must be one of {', '.join(LAYERS)}, got {backend!r}")
    layer_fn = LAYERS[backend]
    K, B = x.shape[:2]
    H = layer_params[0][1].shape[2]
    inp = x
    for layer, params in enumerate(layer_params):
        h = x.new_zeros(K, B, H) if h0 is None else h0[layer]
        inp = layer_fn(inp, h, params, eps)
        if dropout_masks is not None and layer < len(layer_params) - 1:
            inp = inp * dropout_masks[layer]
    return inp
