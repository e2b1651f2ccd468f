"""Launch helpers of the fused augmentation kernel (``fastdecoder.kernels.augment``): tile sizes, grid, precision.

Imports triton; ``fastdecoder.ops.augment`` imports this module only when the Triton backend runs.
"""
from __future__ import annotations

import torch
import triton

from fastdecoder.kernels import augment as K
from fastdecoder.ops.augment.taps import MAX_TAPS
from fastdecoder.ops.triton_support import interpreter_enabled

__all__ = ["augment_triton", "normals_triton", "philox_words_triton", "pick_blocks", "pick_chunks"]


def _nvidia(device: torch.device) -> bool:
    """Compiled for an NVIDIA GPU (PTX approximations and tensor-core products are available)."""
    return not interpreter_enabled() and device.type == "cuda" and not torch.version.hip


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def pick_blocks(n_taps):
    """(BLOCK_T, BLOCK_C, num_warps) for a tap count. BLOCK_T >= n - 1 (a window spans two tiles at most)."""
    block_t = max(64, _next_pow2(n_taps - 1))
    if block_t == 64:
        return 64, 32, 4
    return block_t, max(16, 4096 // block_t), 8


def pick_chunks(programs, n_iters, device):
    """Time tiles per program: all of them (no tile regenerated) unless that leaves the GPU short of programs."""
    if device.type != "cuda" or n_iters <= 2:
        return n_iters
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    chunks = min(triton.cdiv(4 * n_sm, programs), n_iters // 2)
    return triton.cdiv(n_iters, max(1, chunks))


def _split_seed(seed):
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


def augment_triton(x, lengths, taps, time_masks, freq_masks, *, white_noise_std, constant_offset_std, seed,
                   out_dtype, block_t=None, block_c=None, num_warps=None, iters_per_chunk=None, dot_precision=None,
                   fast_math=None):
    """Launch the fused kernel. Arguments are already validated by ``fastdecoder.ops.augment``:

    x (B, T, C) float32/bfloat16/float16 on a CUDA device (or the CPU under TRITON_INTERPRET=1), any strides;
    lengths (B,) int32 on x's device; taps (n,) float32 contiguous on x's device; time_masks (B, MT, 2) and
    freq_masks (B, MF, 2) int32 contiguous on x's device (MT, MF may be 0); out_dtype float32 or bfloat16.
    Returns a new contiguous (B, T, C) tensor. ``dot_precision`` and ``fast_math`` (0: libdevice log/sin/cos,
    1: MUFU sin/cos, 2: MUFU log2/sin/cos) default to the output's precision on NVIDIA GPUs (float32: "tf32x3", 1;
    bfloat16: "tf32", 2) and to "ieee", 0 elsewhere (the interpreter, ROCm).
    """
    B, T, C = x.shape
    out = torch.empty((B, T, C), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    n = int(taps.numel())
    if not 1 <= n <= MAX_TAPS:
        raise ValueError(f"smooth_taps: 1..{MAX_TAPS} taps supported, got {n}")
    bt, bc, nw = pick_blocks(n)
    block_t = int(block_t or bt)
    block_c = int(block_c or bc)
    num_warps = int(num_warps or nw)
    if block_t < max(n - 1, 1) or block_t & (block_t - 1):
        raise ValueError(f"block_t must be a power of two >= n - 1 ({n - 1}), got {block_t}")
    if block_c < 4 or block_c & (block_c - 1):
        raise ValueError(f"block_c must be a power of two >= 4, got {block_c}")
    nvidia = _nvidia(x.device)
    bf16 = out_dtype == torch.bfloat16
    if dot_precision is None:  # tf32x3: three tensor-core products, ~fp32; tf32: one, 2^-11 relative
        dot_precision = ("tf32" if bf16 else "tf32x3") if nvidia else "ieee"
    fast_math = ((2 if bf16 else 1) if nvidia else 0) if fast_math is None else int(fast_math)
    if fast_math and not nvidia:
        raise ValueError("fast_math needs an NVIDIA GPU (PTX lg2/sin/cos.approx)")

    if x.stride(2) * C >= 2 ** 31 or x.stride(1) * T >= 2 ** 62:  # keep the kernel's in-row offsets in int32
        x = x.contiguous()
    n_c_tiles = triton.cdiv(C, block_c)
    n_iters = (T - 1 + n // 2) // block_t + 1  # the last output row T - 1 is written by iteration n_iters - 1
    per_chunk = int(iters_per_chunk or pick_chunks(B * n_c_tiles, n_iters, x.device))
    seed_lo, seed_hi = _split_seed(seed)
    white = float(white_noise_std)
    offset = float(constant_offset_std)
    grid = (B * n_c_tiles, triton.cdiv(n_iters, per_chunk))
    K.augment_kernel[grid](
        x, out, lengths, taps, time_masks, freq_masks,
        T, C, triton.cdiv(C, 4),
        x.stride(0), x.stride(1), x.stride(2),
        n_c_tiles, n_iters, per_chunk, time_masks.shape[1], freq_masks.shape[1],
        seed_lo, seed_hi, white, offset,
        N_TAPS=n, BLOCK_T=block_t, BLOCK_C=block_c,
        HAS_WHITE=white != 0.0, HAS_OFFSET=offset != 0.0, DOT_PRECISION=dot_precision, FAST_MATH=fast_math,
        num_warps=num_warps,
    )
    return out


def normals_triton(counters, seed, stream, fast_math=None):
    """The generator's four normals for each int64 counter, from the Triton kernel: (N, 4) float32."""
    counters = counters.reshape(-1).to(torch.int64).contiguous()
    if fast_math is None:
        fast_math = int(_nvidia(counters.device))
    out = torch.empty((counters.numel(), 4), dtype=torch.float32, device=counters.device)
    if counters.numel():
        seed_lo, seed_hi = _split_seed(seed)
        block = 256
        K.normals_kernel[(triton.cdiv(counters.numel(), block),)](
            counters, out, counters.numel(), seed_lo, seed_hi, int(stream), BLOCK=block, FAST_MATH=int(fast_math))
    return out


def philox_words_triton(counters, seed):
    """(ours, triton's) Philox-4x32-10 words for int64 counters on stream 0: two (N, 4) int64 tensors."""
    counters = counters.reshape(-1).to(torch.int64).contiguous()
    ours = torch.empty((counters.numel(), 4), dtype=torch.int64, device=counters.device)
    ref = torch.empty_like(ours)
    seed_lo, seed_hi = _split_seed(seed)
    block = 256
    K.philox_words_kernel[(triton.cdiv(counters.numel(), block),)](
        counters, ours, ref, counters.numel(), seed_lo, seed_hi, int(seed), BLOCK=block)
    return ours, ref
