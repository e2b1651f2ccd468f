"""K independent GRUs (one per member of a batched run) as one batched computation, and its reference.

Per layer, the input projection of every member over every step is one batched GEMM (``baddbmm`` over K; on the
CPU one GEMM per member, whose large products BLAS runs best unbatched); the
recurrence (fp32, also under autocast) is one autograd Function whose forward does one batched (K, B, H) @ (K, H, 3H)
product per time step and whose backward one (K, B, 3H) @ (K, 3H, H) product per step for dh, then dW_hh and db_hh
as single batched products / sums over all steps (the scheme of ops.gru.cpu with a member dimension).
``torch.nn.GRU``'s math and gate order (r, z, n), so member k equals an ``nn.GRU`` with member k's weights to fp32
round-off.

Shapes: K members, B trials, N steps, I inputs, H hidden units; weights w_ih (K, 3H, I), w_hh (K, 3H, H), biases
(K, 3H). Time-major inside: gates (N, K, B, 3H), outputs (N, K, B, H).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdecoder.ops.gru.patch_projection import members_patch_projection, patch_view

__all__ = ["members_gru", "members_gru_reference"]


class _Recurrence(torch.autograd.Function):
    """gi (N, K, B, 3H) input gates, h0 (K, B, H), w_hh (K, 3H, H), b_hh (K, 3H) -> outputs (N, K, B, H)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, gi, h0, w_hh, b_hh):
        N, K, B, H3 = gi.shape
        H = H3 // 3
        out = gi.new_empty(N, K, B, H)
        gates = gi.new_empty(N, K, B, H3)  # r, z, n after their nonlinearities
        gh_all = gi.new_empty(N, K, B, H3)  # the hidden products; n's hidden part is read back in the backward
        h = h0
        w_t = w_hh.transpose(1, 2)  # (K, H, 3H)
        bias = b_hh.unsqueeze(1)  # (K, 1, 3H)
        for t in range(N):  # each result written in place into its step's slot (no per-step copies)
            gh = torch.baddbmm(bias, h, w_t, out=gh_all[t])  # (K, B, 3H)
            rz = torch.add(gi[t, :, :, :2 * H], gh[..., :2 * H], out=gates[t, ..., :2 * H]).sigmoid_()
            r, z = rz[..., :H], rz[..., H:]
            n = torch.addcmul(gi[t, :, :, 2 * H:], r, gh[..., 2 * H:], out=gates[t, ..., 2 * H:]).tanh_()
            h = torch.lerp(n, h, z, out=out[t])
        ctx.save_for_backward(h0, w_hh, out, gates, gh_all[..., 2 * H:])
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, d_out):
        h0, w_hh, out, gates, hn = ctx.saved_tensors
        N, K, B, H = out.shape
        h_prev = torch.cat([h0.unsqueeze(0), out[:-1]])  # (N, K, B, H)
        d_gi = torch.empty_like(gates)
        d_gh = torch.empty_like(gates)
        dh = torch.zeros_like(h0)
        for t in range(N - 1, -1, -1):
            dh = dh + d_out[t]
            r, z, n = gates[t, ..., :H], gates[t, ..., H:2 * H], gates[t, ..., 2 * H:]
            # dn, dz, dr computed in place into their slots of d_gi (the same products in the same order)
            dn = torch.mul(dh, 1 - z, out=d_gi[t, ..., 2 * H:]).mul_(1 - n * n)
            torch.mul(dh, h_prev[t] - n, out=d_gi[t, ..., H:2 * H]).mul_(z).mul_(1 - z)
            torch.mul(dn, hn[t], out=d_gi[t, ..., :H]).mul_(r).mul_(1 - r)
            d_gh[t, ..., :2 * H] = d_gi[t, ..., :2 * H]
            torch.mul(dn, r, out=d_gh[t, ..., 2 * H:])
            dh = torch.baddbmm(dh * z, d_gh[t], w_hh)  # (K, B, 3H) @ (K, 3H, H)
        # one batched product over all steps: (K, 3H, N*B) @ (K, N*B, H)
        flat_g = d_gh.permute(1, 0, 2, 3).reshape(K, N * B, 3 * H)
        flat_h = h_prev.permute(1, 0, 2, 3).reshape(K, N * B, H)
        d_w = torch.bmm(flat_g.transpose(1, 2), flat_h)
        return d_gi, dh, d_w, flat_g.sum(1)


def _valid_rows(frames: torch.Tensor, K: int, B: int, N: int) -> list[torch.Tensor | None]:
    """frames (B,) or (K, B) valid steps per trial -> per member the flat (b * N + n) indices of its steps
    n < frames[b] (host int64), or None where every step is valid."""
    f = frames.to("cpu", torch.int64).clamp(0, N)
    f = f.expand(K, B) if f.dim() == 1 else f
    valid = torch.arange(N) < f.unsqueeze(-1)  # (K, B, N)
    return [None if bool(v.all()) else v.reshape(-1).nonzero().squeeze(1) for v in valid]


def _projection_rows(x: torch.Tensor, rows: torch.Tensor | None, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One member's layer-0 input projection: x (B, N, I) (a view: the patches need not be materialised), rows the
    flat (b * N + n) steps to compute or None (all) -> (B * N, 3H), zeros at the steps left out."""
    B, N, I = x.shape
    if rows is None:
        return F.linear(x.reshape(B * N, I), w, b)
    src = F.linear(x[rows // N, rows % N], w, b)  # only the chosen rows are gathered
    return src.new_zeros(B * N, src.shape[1]).index_copy(0, rows, src)


def members_gru(x: torch.Tensor, weights: list[tuple[torch.Tensor, ...]], h0: torch.Tensor | None = None,
                dropout_masks: list[torch.Tensor] | None = None,
                batched_projection: bool | None = None, frames: torch.Tensor | None = None,
                patch: tuple[int, int, bool] | None = None) -> torch.Tensor:
    """K GRUs over their own inputs: x (K, B, N, I) batch-first per member, ``weights`` one (w_ih, w_hh, b_ih, b_hh)
    per layer, h0 (layers, K, B, H) or None (zeros), ``dropout_masks``: per layer but the last a (N, K, B, H) mask
    already scaled by 1 / (1 - p) that multiplies the layer's output (None: no inter-layer dropout).
    ``batched_projection``: each layer's input projection as one ``baddbmm`` over the members (True) or one GEMM per
    member (False); None: batched except on the CPU. ``frames``: (B,) or (K, B) the steps per trial whose outputs
    are used (a CTC loss's input lengths); with the per-member projection, layer 0's input projection computes only
    those steps (the rest of a trial, the batch's padding, gets zero input gates), so outputs at later steps are
    not the GRU's, while the outputs at the steps kept and every gradient of a loss that ignores the later steps
    equal the full computation's to fp32 round-off (a unidirectional GRU's step depends only on earlier steps).
    None: every step. ``patch``: (size, stride, time_major): x is (K, B, T, C) features, or K per-member (B, T, C)
    feature tensors, whose patches (ops.gru.patch_projection.patch_view) are layer 0's inputs; with the per-member
    projection in fp32 they are never materialised (members_patch_projection). Returns (K, B, N, H)."""
    ref = x if isinstance(x, torch.Tensor) else x[0]  # x: one tensor, or K per-member feature tensors (patch)
    batched = batched_projection if batched_projection is not None else ref.device.type != "cpu"
    fused = False
    if patch is not None:
        size, stride, time_major_patch = patch
        fused = not batched and ref.dtype == torch.float32 and not torch.is_autocast_enabled(ref.device.type)
        if not fused:
            x = patch_view(x if isinstance(x, torch.Tensor) else torch.stack(list(x)), size, stride, time_major_patch)
    elif not isinstance(x, torch.Tensor):
        raise TypeError("members_gru: per-member input tensors are taken with patch= only")
    K, B = (len(x), ref.shape[0]) if fused and not isinstance(x, torch.Tensor) else x.shape[:2]
    N = (ref.shape[-2] - size) // stride + 1 if fused else x.shape[2]
    H = weights[0][1].shape[2]
    rows = _valid_rows(frames, K, B, N) if frames is not None and not batched else [None] * K
    inp = x if not batched else x.reshape(K, B * N, -1)
    time_major = False  # layer 0's rows are (b, n); later layers' (n, b)
    out = None
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        if batched:
            gi = torch.baddbmm(b_ih.unsqueeze(1), inp, w_ih.transpose(1, 2))  # one batched GEMM over all steps
        elif layer == 0 and patch is not None and fused:  # from the features, no patch tensor
            gi = members_patch_projection(x, w_ih, b_ih, rows, size, stride, time_major_patch)
        elif layer == 0:  # one GEMM per member over its (kept) steps, gathered from the patch view
            gi = torch.stack([_projection_rows(i, r, w, b)
                              for i, r, w, b in zip(inp.unbind(0), rows, w_ih.unbind(0), b_ih.unbind(0))])
        else:  # the CPU: one GEMM per member (BLAS's own best form for these large products, backward included)
            gi = torch.stack([F.linear(i, w, b) for i, w, b in zip(inp.unbind(0), w_ih.unbind(0), b_ih.unbind(0))])
        gi = (gi.view(K, N, B, 3 * H) if time_major else gi.view(K, B, N, 3 * H).transpose(1, 2)).transpose(0, 1)
        h = ref.new_zeros(K, B, H) if h0 is None else h0[layer]
        with torch.autocast(ref.device.type, enabled=False):  # the recurrence in fp32 (state, gates, per-step GEMMs)
            out = _Recurrence.apply(gi.float(), h.float(), w_hh.float(), b_hh.float())  # (N, K, B, H)
        if dropout_masks is not None and layer < len(weights) - 1:
            out = out * dropout_masks[layer]
        inp = out.transpose(0, 1).reshape(K, N * B, H)
        time_major = True
    return out.permute(1, 2, 0, 3)


def members_gru_reference(x: torch.Tensor, weights: list[tuple[torch.Tensor, ...]],
                          h0: torch.Tensor | None = None,
                          dropout_masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The same through torch's own GRU, one member at a time (``torch._VF.gru`` with member k's weights, layer by
    layer so the masks apply between layers). Same arguments and result as :func:`members_gru`."""
    K, B, N, _ = x.shape
    outs = []
    for k in range(K):
        inp = x[k]
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            H = w_hh.shape[2]
            h = x.new_zeros(1, B, H) if h0 is None else h0[layer, k].unsqueeze(0)
            inp, _ = torch._VF.gru(inp, h, (w_ih[k], w_hh[k], b_ih[k], b_hh[k]), True, 1, 0.0, False, False, True)
            if dropout_masks is not None and layer < len(weights) - 1:
                inp = inp * dropout_masks[layer][:, k].transpose(0, 1)
        outs.append(inp)
    return torch.stack(outs)
