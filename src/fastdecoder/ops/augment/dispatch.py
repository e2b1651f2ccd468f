"""``augment``: argument checks and the choice of backend (the plain-PyTorch reference or the fused Triton kernel).

No device-to-host transfer per call: values are checked where they are on the host (CPU tensors, Python
numbers); tensor taps on a device are checked for finiteness once per tensor (and again after an in-place change).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

from fastdecoder.ops.augment.philox import check_seed
from fastdecoder.ops.augment.reference import NOISE_SOURCES, augment_reference
from fastdecoder.ops.augment.taps import MAX_TAPS, PRESET_TAPS, preset_taps_on
from fastdecoder.ops.host_read_marker import cpu_host_read
from fastdecoder.ops.triton_support import require_triton, triton_usable

__all__ = ["augment", "BACKENDS", "NOISES"]

BACKENDS = ("auto", "reference", "triton")
NOISES = ("philox", "torch", "auto")
_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OUT_DTYPES = (torch.float32, torch.bfloat16)
_FINITE_TAPS = WeakIdKeyDictionary()  # device taps tensor -> its _version when last found finite


def _check_std(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a float >= 0, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
    return v


def _check_aux_device(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if not (t.device == x.device or t.device.type == "cpu"):
        raise ValueError(f"{name} must be on the CPU or on x's device ({x.device}), got {t.device}")


def _check_int_tensor(name: str, t: torch.Tensor) -> None:
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")


def _taps_finite(taps: torch.Tensor) -> bool:
    """Finiteness of float32 taps: a host check on the CPU; on a device one read per tensor version."""
    if taps.device.type == "cpu":
        with cpu_host_read():
            return bool(torch.isfinite(taps).all())
    if _FINITE_TAPS.get(taps) == taps._version:
        return True
    ok = bool(torch.isfinite(taps).all())  # the one device read, cached below
    if ok:
        _FINITE_TAPS[taps] = taps._version
    return ok


def _check_taps(smooth_taps, x) -> Optional[torch.Tensor]:
    if smooth_taps is None:
        return None
    if isinstance(smooth_taps, str):
        if smooth_taps not in PRESET_TAPS:
            raise ValueError(f"smooth_taps: unknown preset {smooth_taps!r} (expected 'b2t25' or 'b2t24')")
        return preset_taps_on(smooth_taps, x.device)
    if isinstance(smooth_taps, torch.Tensor):
        _check_aux_device("smooth_taps", smooth_taps, x)
        if not smooth_taps.is_floating_point():
            raise ValueError(f"smooth_taps must be a float tensor, got {smooth_taps.dtype}")
        taps = smooth_taps.detach()
        taps = taps if taps.dtype == torch.float32 else taps.to(torch.float32)
    else:
        try:
            taps = torch.as_tensor(np.asarray(smooth_taps, dtype=np.float64)).to(torch.float32)
        except (TypeError, ValueError):
            raise ValueError("smooth_taps must be None, 'b2t25', 'b2t24' or a 1-D sequence of floats") from None
    if taps.ndim != 1 or not 1 <= taps.numel() <= MAX_TAPS:
        raise ValueError(f"smooth_taps must be 1-D with 1..{MAX_TAPS} taps, got shape {tuple(taps.shape)}")
    if not _taps_finite(taps):
        raise ValueError("smooth_taps must be finite")
    return taps


def _host_range_check(name: str, bad: torch.Tensor, msg: str) -> None:
    """Raise ``msg`` if any of ``bad`` is set, where that costs no device read (CPU tensors only)."""
    if bad.device.type != "cpu":
        return
    with cpu_host_read():
        found = bool(bad.any())
    if found:
        raise ValueError(f"{name}: {msg}")


def _check_lengths(lengths, x) -> Optional[torch.Tensor]:
    if lengths is None:
        return None
    B, T = x.shape[0], x.shape[1]
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(np.asarray(lengths))
        except (TypeError, ValueError):
            raise ValueError("lengths must be an int tensor (B,) or None") from None
    _check_int_tensor("lengths", lengths)
    if lengths.ndim != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape (B={B},), got {tuple(lengths.shape)}")
    _check_aux_device("lengths", lengths, x)
    _host_range_check("lengths", (lengths < 0) | (lengths > T), f"every length must lie in [0, T={T}]")
    return lengths.detach().to(x.device, torch.int64).clamp(0, T)  # the kernel reads rows < length: keep <= T


def _check_masks(name, masks, x, span: int, what: str) -> Optional[torch.Tensor]:
    if masks is None:
        return None
    B = x.shape[0]
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"{name} must be an int tensor (B, M, 2) of (start, width) or None, got {type(masks)}")
    _check_int_tensor(name, masks)
    if masks.ndim != 3 or masks.shape[0] != B or masks.shape[2] != 2:
        raise ValueError(f"{name} must have shape (B={B}, M, 2) of (start, width), got {tuple(masks.shape)}")
    _check_aux_device(name, masks, x)
    if masks.shape[1] > 0:
        start, width = masks[..., 0], masks[..., 1]
        _host_range_check(name, (start < 0) | (width < 0) | (start + width > span),
                          f"every (start, width) needs start >= 0, width >= 0 and start + width <= {what}={span}")
    return masks.detach().to(x.device, torch.int64)


def _check_x(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor (B, T, C), got {type(x)}")
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3 (B, T, C), got shape {tuple(x.shape)}")
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")


def _check_out_dtype(out_dtype, x) -> torch.dtype:
    if out_dtype is None:
        return x.dtype if x.dtype in _OUT_DTYPES else torch.float32
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    return out_dtype


def _resolve(backend: str, noise: str, x: torch.Tensor) -> tuple[str, str]:
    """(backend, noise) to run: 'auto' backend = triton for CUDA tensors without grad; 'auto' noise = philox
    where the kernel runs, torch otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be 'philox', 'torch' or 'auto', got {noise!r}")
    if backend == "auto":
        fast = x.device.type == "cuda" and not x.requires_grad and triton_usable(x.device)
        backend = "triton" if fast else "reference"
    if noise == "auto":
        noise = "philox" if backend == "triton" else "torch"
    if backend == "triton":
        if noise != "philox":
            raise ValueError("noise='torch' is the reference backend's: the fused kernel draws the Philox noise "
                             "(use noise='philox' or 'auto', or backend='reference')")
        if x.requires_grad:
            raise ValueError("x requires grad, but augment's triton backend has no backward (augmentation acts on "
                             "data): pass x.detach(), or use backend='reference'")
        require_triton(x.device, "augment(backend='triton')")
    assert noise in NOISE_SOURCES
    return backend, noise


def augment(x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *, white_noise_std: float = 0.0,
            constant_offset_std: float = 0.0, smooth_taps: Union[None, str, torch.Tensor, Sequence[float]] = None,
            time_masks: Optional[torch.Tensor] = None, freq_masks: Optional[torch.Tensor] = None, seed: int = 0,
            noise: str = "philox", out_dtype: Optional[torch.dtype] = None, backend: str = "auto") -> torch.Tensor:
    """Augment a batch x (B, T, C): ``out = mask(smooth(x + white_noise_std N1 + constant_offset_std N2))``.

    Semantics (both backends; computed in float32):

    * v[b, t, c] = x[b, t, c] + white_noise_std N1[b, t, c] + constant_offset_std N2[b, c] for 0 <= t < length[b],
      and 0 for t >= length[b] (input and noise; ``lengths=None`` means every t < T). N1, N2: independent N(0, 1).
      ``noise="philox"`` (default): from a counter-based Philox generator keyed on (seed, index) (``normals``; N1
      from ``white_noise``, N2 from ``offset_noise``), the same numbers in both backends: the parity oracle.
      ``noise="torch"``: the published trainers' recipe, ``torch.randn`` from a generator on x's device seeded with
      ``seed`` (reference backend only; much cheaper than the Philox emulation in PyTorch). ``noise="auto"``:
      philox where the fused kernel runs, torch otherwise (what a trainer wants). Either way a seed reproduces a
      batch.
    * smoothing over time per (b, c) with taps w (n of them): s[t] = sum_k w[k] v[t + k - left], left = (n - 1) // 2,
      right = n // 2 (conv1d's 'same' padding; cross-correlation as torch conv1d), v = 0 outside [0, length[b]).
      ``smooth_taps``: None (no smoothing), 'b2t25' / 'b2t24' (``gaussian_taps``), or a 1-D float tensor/sequence
      of 1..129 taps (any values).
    * out[b, t, c] = 0 where t >= length[b], where t lies in [start, start + width) of any of sample b's time masks,
      or c in [start, start + width) of any of its channel masks; s[b, t, c] elsewhere. Masks are applied after the
      smoothing. ``time_masks``/``freq_masks``: integer tensors (B, M, 2) of (start, width) (``sample_masks``
      draws them); width 0 masks nothing; each needs start >= 0, width >= 0 and start + width <= T (resp. C).
      A masked NaN becomes 0.
    * output dtype: ``out_dtype`` (float32 or bfloat16), default x.dtype (float32 for float16 inputs); both
      backends compute in float32 (the reference with autocast off) and round once. Under bf16 autocast pass
      ``out_dtype=torch.bfloat16``: half the bytes written, and the next matmul would cast to bf16 anyway.

    Backends: "reference" (plain PyTorch, the definition; differentiable w.r.t. x), "triton" (the fused kernel;
    CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 (``triton_usable``); no backward: raises ValueError if
    x.requires_grad; ``FastPathUnavailable`` where Triton cannot run), "auto" (triton for CUDA tensors that do not
    require grad, where ``triton_usable``; reference otherwise).
    lengths/masks/taps may be on the CPU or on x's device.

    Numerics: in float32 (the interpreter; float32 output on CUDA) the backends agree to ~1e-6 (noise off: float32
    rounding; noise on: the ulps of log/sin/cos, on CUDA MUFU sin/cos within 2^-20.5; the CUDA kernel's smoothing
    runs as tf32x3 products on tensor cores, ~fp32). For bfloat16 output on CUDA the kernel uses single tf32
    products and MUFU log2 as well, accurate to within bfloat16's resolution (a rounding step of the output may
    differ). The reference's conv1d on CUDA follows torch.backends.cudnn.allow_tf32 (True by default in torch).
    Non-finite inputs give non-finite outputs in both; in the kernel a NaN/Inf can reach more outputs than the
    taps' reach (0 * NaN in the banded matrix product).

    Bad input (rank, dtype, device, shapes, out-of-range lengths or masks, negative or non-finite stds or taps, bad
    seed) raises ValueError naming the argument. No call reads a device tensor back to the host (no sync): the
    ranges of lengths and masks are checked when they are CPU tensors (pass host copies to get the check); on a
    device they are used as given (both backends clip: a length > T acts as T, a mask span is cut to [0, T)).
    Device taps are checked for finiteness once per tensor.
    """
    _check_x(x)
    B, T, C = x.shape
    backend, noise = _resolve(backend, noise, x)
    ws = _check_std("white_noise_std", white_noise_std)
    os_ = _check_std("constant_offset_std", constant_offset_std)
    seed = check_seed(seed)
    out_dtype = _check_out_dtype(out_dtype, x)
    lengths = _check_lengths(lengths, x)
    taps = _check_taps(smooth_taps, x)
    tm = _check_masks("time_masks", time_masks, x, T, "T")
    fm = _check_masks("freq_masks", freq_masks, x, C, "C")
    if backend == "reference":
        return augment_reference(x, lengths, ws, os_, taps, tm, fm, seed, out_dtype, noise)

    from fastdecoder.ops.augment.launcher import augment_triton  # imports triton

    dev = x.device
    lens = (torch.full((B,), T, dtype=torch.int32, device=dev) if lengths is None
            else lengths.to(torch.int32).contiguous())
    taps_t = (torch.ones(1, dtype=torch.float32, device=dev) if taps is None
              else taps.to(dev, torch.float32).contiguous())
    empty = torch.zeros((B, 0, 2), dtype=torch.int32, device=dev)
    tm_t = empty if tm is None else tm.to(torch.int32).contiguous()
    fm_t = empty if fm is None else fm.to(torch.int32).contiguous()
    return augment_triton(x, lens, taps_t, tm_t, fm_t, white_noise_std=ws, constant_offset_std=os_, seed=seed,
                          out_dtype=out_dtype)
