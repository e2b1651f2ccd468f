"""The first GRU layer's input projection straight from the features, per member, without materialising the
patches: the gates of the patch of trial b at step n are x[b, S n : S n + P] (flattened in the model's patch order)
@ w_ih^T + b_ih. The forward gathers only the rows (steps) asked for from the unfold view; the backward returns the
feature gradient by adding each row's patch gradient back at its bins (one ``index_add_`` per member) instead of
a full (B, N, P*C) patch gradient and its fold.

Shapes: K members, B trials, T bins, C features, P patch size, S patch stride, N = (T - P) // S + 1 steps,
3H gates; features (K, B, T, C), w_ih (K, 3H, P*C), b_ih (K, 3H) -> gates (K, B*N, 3H), zeros at rows left out.
"""
from __future__ import annotations

import torch

__all__ = ["patch_view", "members_patch_projection"]


def patch_view(x: torch.Tensor, size: int, stride: int, time_major: bool) -> torch.Tensor:
    """(..., T, C) -> (..., N, P*C) patches (feature index j*C + c when ``time_major``, else c*P + j); a view where
    the layout allows (time-major), else a copy."""
    w = x.unfold(-2, size, stride)  # (..., N, C, P)
    if time_major:
        w = w.transpose(-1, -2)
    return w.reshape(*w.shape[:-2], -1)


class _PatchProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, w_ih, b_ih, rows, size, stride, time_major):
        K, B, T, C = feats.shape
        N = (T - size) // stride + 1
        out = feats.new_zeros(K, B * N, w_ih.shape[1])
        saved, bins = [], []
        for k in range(K):
            r = rows[k] if rows[k] is not None else torch.arange(B * N)
            b, n = r // N, r % N
            u = feats[k].unfold(1, size, stride)[b, n]  # (R, C, P): only the rows asked for
            g = (u.transpose(1, 2) if time_major else u).reshape(r.numel(), size * C)
            out[k].index_copy_(0, r, torch.addmm(b_ih[k], g, w_ih[k].t()))
            saved.append(g)
            bins.append(((b * T + n * stride).unsqueeze(1) + torch.arange(size)).reshape(-1))  # (R * P,)
        ctx.save_for_backward(w_ih, *saved)
        ctx.rows, ctx.bins, ctx.shape, ctx.time_major = rows, bins, (K, B, T, C, N), time_major
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_ih, *saved = ctx.saved_tensors
        K, B, T, C, N = ctx.shape
        P = w_ih.shape[2] // C
        d_feats = d_out.new_zeros(K, B * T, C) if ctx.needs_input_grad[0] else None
        d_w, d_b = torch.empty_like(w_ih), d_out.new_empty(K, w_ih.shape[1])
        for k in range(K):
            r = ctx.rows[k]
            d_src = d_out[k] if r is None else d_out[k].index_select(0, r)  # (R, 3H)
            torch.mm(d_src.t(), saved[k], out=d_w[k])
            torch.sum(d_src, 0, out=d_b[k])
            if d_feats is not None:
                d_patch = (d_src @ w_ih[k]).view(-1, P, C) if ctx.time_major else \
                    (d_src @ w_ih[k]).view(-1, C, P).transpose(1, 2).contiguous()
                d_feats[k].index_add_(0, ctx.bins[k], d_patch.view(-1, C))
        return (None if d_feats is None else d_feats.view(K, B, T, C)), d_w, d_b, None, None, None, None


def members_patch_projection(feats: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor,
                             rows: list[torch.Tensor | None], size: int, stride: int,
                             time_major: bool) -> torch.Tensor:
    """feats (K, B, T, C), w_ih (K, 3H, P*C), b_ih (K, 3H), ``rows`` per member the flat (b * N + n) steps to compute
    (host int64, increasing) or None (all) -> (K, B*N, 3H) gates, zeros at the steps left out. Equal to
    ``patch_view(feats) @ w_ih^T + b_ih`` (and its gradients) to fp32 round-off, in fp32 (no autocast)."""
    return _PatchProjection.apply(feats, w_ih, b_ih, rows, size, stride, time_major)
