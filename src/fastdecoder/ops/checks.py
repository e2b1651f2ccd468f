"""Op-level parity checks: each fast op against its reference on one small random problem, returning the error.

Used by ``fastdecoder parity`` (every fast path on the user's device) and by the trainer's start-up self-check
(``train/selfcheck.py``). Errors are max |fast - ref| / max |ref| in fp32; inf on a NaN, an Inf or a shape mismatch.
"""
from __future__ import annotations

import contextlib

import torch


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (in fp32); inf on a shape mismatch or a non-finite value."""
    a, e = actual.detach().float(), expected.detach().float()
    if a.shape != e.shape or not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(e).all()):
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-12))


@contextlib.contextmanager
def exact_fp32():
    """Reference runs in true fp32 on CUDA (no TF32 in matmuls and convolutions)."""
    keep = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = keep


def augment_error(device, dtype: torch.dtype, shape, seed: int) -> float:
    """One augmentation batch (noise, offset, smoothing, masks), Triton vs reference; returns the error."""
    from fastdecoder.ops import augment, sample_masks

    B, T, C = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.5, time_max_width=max(1, T // 8), time_max_count=2,
                          freq_prob=0.5, freq_max_width=max(1, C // 8), freq_max_count=2, generator=g, device=device)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25" if seed % 2 else "b2t24",
              time_masks=tm, freq_masks=fm, seed=seed)
    with exact_fp32():
        ref = augment(x, lengths, backend="reference", **kw)
    fast = augment(x, lengths, backend="triton", out_dtype=dtype, **kw)
    if fast.dtype != dtype:
        return float("inf")
    return max_error(fast, ref)


def _ln_gru_run(m, x, h0, wo, wh):
    """Forward + backward of sum(out wo) + sum(h_n wh): (outputs, gradients) as two lists of tensors."""
    x = x.detach().clone().requires_grad_(True)
    h0 = h0.detach().clone().requires_grad_(True)
    out, h_n = m(x, h0)
    loss = (out.float() * wo).sum() + (h_n.float() * wh).sum()
    grads = torch.autograd.grad(loss, [x, h0] + list(m.parameters()))
    return [out.detach(), h_n.detach()], list(grads)


def ln_gru_errors(device, dtype: torch.dtype, shape, seed: int,
                  bf16_factor: float | None = None) -> tuple[float, float, float, float]:
    """Triton LN-GRU vs the PyTorch loop on one random problem ``shape = (B, T, I, H, layers, bidirectional)``.

    Returns (forward error, backward error, forward tolerance, backward tolerance); in bf16 (autocast) the
    tolerances are twice (on a CPU, whose tiny problems are noisy, three times) the error of the reference's own bf16
    run (both against the fp32 reference), floor 1e-3; ``bf16_factor`` overrides the factor.
    """
    from fastdecoder.ops.ln_gru import LayerNormGRU

    B, T, I, H, L, bidir = shape
    D = 2 if bidir else 1
    torch.manual_seed(seed)
    m = LayerNormGRU(I, H, num_layers=L, bidirectional=bidir, backend="reference").to(device)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)  # away from their init of 1, so that the gain paths count
    x, h0 = torch.randn(B, T, I, device=device), torch.randn(L * D, B, H, device=device)
    wo, wh = torch.randn(B, T, D * H, device=device), torch.randn(L * D, B, H, device=device)
    bf16 = dtype == torch.bfloat16
    with exact_fp32():
        ref_out, ref_grads = _ln_gru_run(m, x, h0, wo, wh)
    with exact_fp32(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        if bf16:
            r16_out, r16_grads = _ln_gru_run(m, x, h0, wo, wh)
        m.backend = "triton"
        out, grads = _ln_gru_run(m, x, h0, wo, wh)
    fwd = max(max_error(a, e) for a, e in zip(out, ref_out))
    bwd = max(max_error(a, e) for a, e in zip(grads, ref_grads))
    if not bf16:
        return fwd, bwd, 1e-4, 1e-4
    k = bf16_factor or (2 if torch.device(device).type == "cuda" else 3)
    tol_f = max(k * max(max_error(a, e) for a, e in zip(r16_out, ref_out)), 1e-3)
    tol_b = max(k * max(max_error(a, e) for a, e in zip(r16_grads, ref_grads)), 1e-3)
    return fwd, bwd, tol_f, tol_b
