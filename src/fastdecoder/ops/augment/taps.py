"""Smoothing taps of the presets (b2t25: NEJM ``gauss_smooth``; b2t24: cffan ``GaussianSmoothing``)."""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
import torch

__all__ = ["gaussian_taps", "preset_taps_on", "PRESET_TAPS", "MAX_TAPS"]

PRESET_TAPS = ("b2t25", "b2t24")
MAX_TAPS = 129  # the most taps the op takes (bounds the fused kernel's time tile: BLOCK_T >= n - 1)

def _scipy_gaussian_impulse(size: int, std: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(unit impulse at size // 2, std) in float64, without scipy.

    gaussian_filter1d correlates with the weights exp(-x^2 / (2 std^2)), x = -r..r, r = int(4 std + 0.5),
    normalised to sum 1, and extends the input with mode 'reflect' (d c b a | a b c d | d c b a).
    """
    r = int(4.0 * float(std) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(std) ** 2) * x ** 2)
    phi /= phi.sum()
    i = np.arange(size)[:, None]
    j = (i + x[None, :].astype(np.int64)) % (2 * size)  # input index i + k, extended by 'reflect'
    j = np.where(j >= size, 2 * size - 1 - j, j)
    # out[i] = sum_k phi[k] * impulse[reflect(i + k)], the impulse at size // 2
    return np.where(j == size // 2, phi[None, :], 0.0).sum(axis=1)


def gaussian_taps(preset: Optional[str] = None, *, std: Optional[float] = None,
                  size: Optional[int] = None) -> torch.Tensor:
    """The smoothing taps of a preset, or of a sampled Gaussian, as a float32 CPU tensor (n,).

    * ``"b2t25"`` (NEJM ``gauss_smooth``; std 2, size 100 by default): a unit impulse at index size // 2 of a
      length-``size`` array filtered by scipy's ``gaussian_filter1d(std)``, taps > 0.01 kept, renormalised to sum
      1: 9 taps (-4..+4). Computed in float64 without scipy and rounded once to float32 (NEJM's own float32
      pipeline can differ by 1 ulp).
    * ``"b2t24"`` (cffan ``GaussianSmoothing(C, 20, 2.0, dim=1)``; std 2, size 20 by default):
      k = arange(size) (float32), w = 1 / (std sqrt(2 pi)) * exp(-((k - (size - 1) / 2) / std)^2 / 2),
      w /= w.sum(), in float32 with the same torch ops as cffan: 20 taps centred at 9.5 (a half-bin shift).
    * no preset: ``std`` and ``size`` required, the b2t24 formula with those values.

    ``augment`` applies taps as torch's conv1d does (cross-correlation): out[t] = sum_k w[k] x[t + k - (n - 1) // 2].
    """
    if preset is None and (std is None or size is None):
        raise ValueError("gaussian_taps: give a preset ('b2t25' or 'b2t24') or both std= and size=")
    if preset not in (None, "b2t25", "b2t24"):
        raise ValueError(f"gaussian_taps: unknown preset {preset!r} (expected 'b2t25' or 'b2t24')")
    return _gaussian_taps_cached(preset, None if std is None else float(std),
                                 None if size is None else int(size)).clone()


@functools.lru_cache(maxsize=64)
def _gaussian_taps_cached(preset, std, size) -> torch.Tensor:
    if preset is None:
        return _gaussian_taps_sampled(float(std), int(size))
    if preset == "b2t25":
        std = 2.0 if std is None else float(std)
        size = 100 if size is None else int(size)
        if not (std > 0 and math.isfinite(std)) or size < 1:
            raise ValueError(f"gaussian_taps: std must be > 0 and size >= 1, got std={std}, size={size}")
        kernel = _scipy_gaussian_impulse(size, std)
        kernel = kernel[kernel > 0.01]
        if kernel.size == 0:
            raise ValueError(f"gaussian_taps: no tap above 0.01 for std={std}, size={size}")
        return torch.from_numpy(kernel / kernel.sum()).to(torch.float32)
    # "b2t24"
    return _gaussian_taps_sampled(2.0 if std is None else float(std), 20 if size is None else int(size))


@functools.lru_cache(maxsize=16)
def preset_taps_on(preset: str, device: torch.device) -> torch.Tensor:
    """A preset's taps on a device, made once (the op only reads them)."""
    return _gaussian_taps_cached(preset, None, None).to(device)


def _gaussian_taps_sampled(std: float, size: int) -> torch.Tensor:
    if not (std > 0 and math.isfinite(std)) or size < 1:
        raise ValueError(f"gaussian_taps: std must be > 0 and size >= 1, got std={std}, size={size}")
    # Same ops, order and dtypes as cffan's GaussianSmoothing.__init__ (1-D case).
    mgrid = torch.arange(size, dtype=torch.float32)
    mean = (size - 1) / 2
    kernel = 1
    kernel = kernel * (1 / (std * math.sqrt(2 * math.pi)) * torch.exp(-(((mgrid - mean) / std) ** 2) / 2))
    kernel = kernel / torch.sum(kernel)
    return kernel.to(torch.float32)

