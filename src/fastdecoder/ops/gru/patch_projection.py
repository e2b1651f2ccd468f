"""The first GRU layer's input projection straight from the features, per member, without materialising the
patches: the gates of the patch of trial b at step n are x[b, S n : S n + P] (flattened in the model's patch order)
@ w_ih^T + b_ih. The forward gathers only the rows (steps) asked for from the unfold view, in blocks of at most
``BLOCK_BYTES``; the backward returns the feature gradient by adding each row's patch gradient back at its bins
(one ``index_add_`` per block) instead of a full (B, N, P*C) patch gradient and its fold. The members' features
may come as one (K, B, T, C) tensor or as K separate (B, T, C) tensors (no stacking copy).

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


#: the most bytes one gathered block of patches may take: the rows of a member's projection go through in blocks of
#: at most this size (one addmm each), so no gathered copy is larger than a member's other per-step tensors
BLOCK_BYTES = 16 << 20


def _blocks(r: torch.Tensor, row_bytes: int) -> list[torch.Tensor]:
    """r (R,) row indices -> consecutive pieces of at most BLOCK_BYTES // row_bytes rows (at least one row)."""
    return list(r.split(max(1, BLOCK_BYTES // row_bytes))) if r.numel() else []


class _PatchProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w_ih, b_ih, rows, size, stride, time_major, *feats):
        K = len(feats)
        B, T, C = feats[0].shape
        N = (T - size) // stride + 1
        out = feats[0].new_zeros(K, B * N, w_ih.shape[1])
        saved, blocks = [], []
        for k in range(K):
            r = rows[k] if rows[k] is not None else torch.arange(B * N)
            view = feats[k].unfold(1, size, stride)  # (B, N, C, P)
            member = []
            for rb in _blocks(r, size * C * feats[k].element_size()):
                u = view[rb // N, rb % N]  # (R, C, P): only the rows asked for
                g = (u.transpose(1, 2) if time_major else u).reshape(rb.numel(), size * C)
                out[k].index_copy_(0, rb, torch.addmm(b_ih[k], g, w_ih[k].t()))
                saved.append(g)
                member.append(rb)
            blocks.append(member)
        ctx.save_for_backward(w_ih, *saved)
        ctx.blocks = blocks
        ctx.shape, ctx.time_major = (K, B, T, C, N, size, stride), time_major
        ctx.feats_grad = ctx.needs_input_grad[6:]
        return out

    @staticmethod
    def backward(ctx, d_out):
        w_ih, *saved = ctx.saved_tensors
        K, B, T, C, N, P, S = ctx.shape
        d_w, d_b = torch.zeros_like(w_ih), d_out.new_zeros(K, w_ih.shape[1])
        d_feats = [None] * K
        i = 0
        for k in range(K):
            if ctx.feats_grad[k]:
                d_feats[k] = d_out.new_zeros(B * T, C)
            for rb in ctx.blocks[k]:
                g = saved[i]
                i += 1
                d_src = d_out[k].index_select(0, rb)  # (R, 3H)
                d_w[k].addmm_(d_src.t(), g)
                d_b[k] += d_src.sum(0)
                if d_feats[k] is not None:
                    d_patch = (d_src @ w_ih[k]).view(-1, P, C) if ctx.time_major else \
                        (d_src @ w_ih[k]).view(-1, C, P).transpose(1, 2).contiguous()
                    bins = ((rb // N) * T + (rb % N) * S).unsqueeze(1) + torch.arange(P)  # (R, P) each patch's bins
                    d_feats[k].index_add_(0, bins.reshape(-1), d_patch.view(-1, C))
        return (d_w, d_b, None, None, None, None,
                *(None if d is None else d.view(B, T, C) for d in d_feats))


def members_patch_projection(feats, w_ih: torch.Tensor, b_ih: torch.Tensor,
                             rows: list[torch.Tensor | None], size: int, stride: int,
                             time_major: bool) -> torch.Tensor:
    """feats (K, B, T, C), or a sequence of K (B, T, C) tensors (one per member), w_ih (K, 3H, P*C), b_ih (K, 3H),
    ``rows`` per member the flat (b * N + n) steps to compute (host int64, increasing) or None (all) ->
    (K, B*N, 3H) gates, zeros at the steps left out. Equal to ``patch_view(feats) @ w_ih^T + b_ih`` (and its
    gradients) to fp32 round-off, in fp32 (no autocast)."""
    feats = tuple(feats.unbind(0)) if isinstance(feats, torch.Tensor) else tuple(feats)
    if len(feats) != w_ih.shape[0] or len(rows) != len(feats) or len({tuple(f.shape) for f in feats}) != 1:
        raise ValueError(f"members_patch_projection: {w_ih.shape[0]} members' weights, {len(feats)} feature "
                         f"tensors of shapes {sorted({tuple(f.shape) for f in feats})} and {len(rows)} row sets")
    return _PatchProjection.apply(w_ih, b_ih, rows, size, stride, time_major, *feats)
