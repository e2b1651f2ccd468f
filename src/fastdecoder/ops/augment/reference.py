"""The plain-PyTorch augmentation: the definition of the op, with two sources of noise.

* ``noise="philox"``: the counter-based generator of ``philox.py``, the same numbers the fused kernel draws: the
  parity oracle the Triton kernel is tested against (about a thousand small int64 ops per call: slow).
* ``noise="torch"``: the published trainers' recipe, ``torch.randn`` for the white noise (B, T, C) and the
  per-trial offset (B, 1, C), drawn from a ``torch.Generator`` on x's device seeded with ``seed``. Same
  distribution, other numbers; the cheap choice wherever the kernel does not run.

Smoothing (depthwise ``conv1d``, 'same' padding) and masking are the same for both. Computed in float32 with
autocast off (the definition does not follow an enclosing autocast region), rounded once to ``out_dtype``.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from fastdecoder.ops.augment.philox import offset_noise, white_noise

__all__ = ["augment_reference", "NOISE_SOURCES"]

NOISE_SOURCES = ("philox", "torch")


def _noise(x: torch.Tensor, ws: float, os_: float, seed: int, noise: str):
    """(white (B, T, C) or None, offset (B, 1, C) or None), unscaled N(0, 1) draws."""
    B, T, C = x.shape
    if noise == "philox":
        white = white_noise(seed, B, T, C, device=x.device) if ws != 0.0 else None
        offset = offset_noise(seed, B, C, device=x.device)[:, None, :] if os_ != 0.0 else None
        return white, offset
    gen = torch.Generator(device=x.device).manual_seed(seed)
    white = torch.randn((B, T, C), generator=gen, device=x.device) if ws != 0.0 else None
    offset = torch.randn((B, 1, C), generator=gen, device=x.device) if os_ != 0.0 else None
    return white, offset


def _autocast_off(device_type: str):
    """A region without autocast (the devices that have autocast; e.g. meta tensors have none)."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()


def _span_mask(pos: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, L) True where pos lies in [start, start + width) of any of a sample's (start, width) masks (B, M, 2)."""
    start, width = masks[..., 0:1], masks[..., 1:2]  # (B, M, 1)
    return ((pos[None, None, :] >= start) & (pos[None, None, :] < start + width)).any(dim=1)


def augment_reference(x: torch.Tensor, lengths: Optional[torch.Tensor], ws: float, os_: float,
                      taps: Optional[torch.Tensor], time_masks: Optional[torch.Tensor],
                      freq_masks: Optional[torch.Tensor], seed: int, out_dtype: torch.dtype,
                      noise: str = "philox") -> torch.Tensor:
    """x (B, T, C) -> out (B, T, C) in ``out_dtype``; arguments already validated by ``fastdecoder.ops.augment``
    (lengths (B,) int64 and masks (B, M, 2) int64 on x's device, taps (n,) float32)."""
    with _autocast_off(x.device.type):
        B, T, C = x.shape
        v = x.float()
        white, offset = _noise(x, ws, os_, seed, noise)
        if white is not None:
            v = v + ws * white
        if offset is not None:
            v = v + os_ * offset
        t = torch.arange(T, device=x.device)
        invalid = None
        if lengths is not None:
            invalid = t[None, :] >= lengths[:, None]  # (B, T): padding, zero in input and output
            v = v.masked_fill(invalid[..., None], 0.0)
        if taps is not None:
            n = taps.numel()
            left, right = (n - 1) // 2, n // 2  # conv1d padding='same'
            w = taps.to(x.device, torch.float32).view(1, 1, n).expand(C, 1, n)
            vt = F.pad(v.transpose(1, 2), (left, right))  # (B, C, T + n - 1), zeros outside [0, T)
            v = F.conv1d(vt, w, groups=C).transpose(1, 2)  # cross-correlation: sum_k w[k] v[t + k - left]
        drop = torch.zeros((B, T, 1), dtype=torch.bool, device=x.device) if invalid is None else invalid[..., None]
        if time_masks is not None and time_masks.shape[1] > 0:
            drop = drop | _span_mask(t, time_masks)[..., None]
        if freq_masks is not None and freq_masks.shape[1] > 0:
            drop = drop | _span_mask(torch.arange(C, device=x.device), freq_masks)[:, None, :]
        return v.masked_fill(drop, 0.0).to(out_dtype)
