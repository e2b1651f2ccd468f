"""Counter-based noise: Philox-4x32-10 (the generator of ``tl.randint4x``) in int64 torch arithmetic.

The PyTorch twin of the fused kernel's generator (``fastdecoder.kernels.augment``): the parity oracle the kernel is
tested against, bit for bit in the Philox words. Both take the constants from ``fastdecoder.kernels.philox``.
"""
from __future__ import annotations

import numpy as np
import torch

from fastdecoder.kernels.philox import PHILOX_KEY_A, PHILOX_KEY_B, PHILOX_ROUND_A, PHILOX_ROUND_B

__all__ = ["normals", "white_noise", "offset_noise", "philox4x32_10", "check_seed",
           "PHILOX_KEY_A", "PHILOX_KEY_B", "PHILOX_ROUND_A", "PHILOX_ROUND_B"]

_M32 = 0xFFFFFFFF
_TWO_POW_M24 = 2.0 ** -24
_TWO_PI_F32 = float(np.float32(6.283185307179586))
_CPU_CHUNK = 1 << 15


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox-4x32-10 on int64 tensors holding uint32 counters; key (k0, k1) as Python ints. Returns 4 words.

    The 32 x 32-bit products are formed in int64: they exceed 2^63 and wrap (two's complement on every torch
    backend), which keeps their low 64 bits exact; the high word is then (p >> 32) & 0xFFFFFFFF. The tests check
    the words bit for bit against the kernel's Philox and triton's tl.randint4x.
    """
    for _ in range(10):
        pb = c2 * PHILOX_ROUND_B
        pa = c0 * PHILOX_ROUND_A
        c0 = (pb >> 32).bitwise_and_(_M32).bitwise_xor_(c1).bitwise_xor_(k0)
        c2 = (pa >> 32).bitwise_and_(_M32).bitwise_xor_(c3).bitwise_xor_(k1)
        c1 = pb.bitwise_and_(_M32)
        c3 = pa.bitwise_and_(_M32)
        k0 = (k0 + PHILOX_KEY_A) & _M32
        k1 = (k1 + PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


def _box_muller(i_r: torch.Tensor, i_th: torch.Tensor):
    u = ((i_r >> 8).to(torch.float32) + 0.5) * _TWO_POW_M24  # (0, 1), exact
    v = (i_th >> 8).to(torch.float32) * _TWO_POW_M24  # [0, 1), exact
    r = torch.sqrt(-2.0 * torch.log(u))
    th = (v - 0.5) * _TWO_PI_F32  # uniform angle in [-pi, pi)
    return r * torch.cos(th), r * torch.sin(th)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def normals(counters: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """The generator: four N(0, 1) float32 values per int64 counter, shape counters.shape + (4,).

    Philox-4x32-10 with counter (c0, c1) = low/high 32 bits of the counter, c2 = stream, c3 = 0 and key
    (k0, k1) = low/high 32 bits of the seed; words (w0, w1) and (w2, w3) go through Box-Muller on their top 24 bits:
    u = ((w >> 8) + 0.5) 2^-24, v = (w' >> 8) 2^-24, th = 2 pi (v - 1/2), z = sqrt(-2 ln u) cos(th),
    z' = sqrt(-2 ln u) sin(th) (float32; 2 pi rounded to float32).
    """
    seed = check_seed(seed)
    ctr = counters.to(torch.int64)
    out = torch.empty(ctr.shape + (4,), dtype=torch.float32, device=ctr.device)
    flat_ctr, flat_out = ctr.reshape(-1), out.view(-1, 4)
    # On the CPU, chunks keep the ~10 int64 temporaries in cache (several times faster than whole tensors).
    chunk = _CPU_CHUNK if ctr.device.type == "cpu" else max(1, flat_ctr.numel())
    for i in range(0, flat_ctr.numel(), chunk):
        c0 = flat_ctr[i:i + chunk] & _M32
        c1 = (flat_ctr[i:i + chunk] >> 32) & _M32
        c2 = torch.full_like(c0, int(stream) & _M32)
        c3 = torch.zeros_like(c0)
        w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, seed & _M32, seed >> 32)
        z0, z1 = _box_muller(w0, w1)
        z2, z3 = _box_muller(w2, w3)
        torch.stack((z0, z1, z2, z3), dim=-1, out=flat_out[i:i + chunk])
    return out


def white_noise(seed: int, B: int, T: int, C: int, device=None) -> torch.Tensor:
    """N1 (B, T, C): stream 0, counter (b T + t) C4 + c // 4, word c % 4, C4 = ceil(C / 4)."""
    c4 = (C + 3) // 4
    ctr = torch.arange(B * T, dtype=torch.int64, device=device)[:, None] * c4 + torch.arange(
        c4, dtype=torch.int64, device=device)[None, :]
    return normals(ctr, seed, 0).reshape(B, T, 4 * c4)[:, :, :C]


def offset_noise(seed: int, B: int, C: int, device=None) -> torch.Tensor:
    """N2 (B, C): stream 1, counter b C4 + c // 4, word c % 4 (the same for every T)."""
    c4 = (C + 3) // 4
    ctr = torch.arange(B, dtype=torch.int64, device=device)[:, None] * c4 + torch.arange(
        c4, dtype=torch.int64, device=device)[None, :]
    return normals(ctr, seed, 1).reshape(B, 4 * c4)[:, :C]


