"""Training augmentation: white noise, per-trial constant offset, Gaussian smoothing over time, time/channel masks.

``augment`` has two backends that compute the same function:

* ``"reference"``: plain PyTorch, the definition (several passes over the batch, the noise materialised).
* ``"triton"``: one fused kernel (``fastdecoder.kernels.augment``): one read of x, one write of the output, the noise
  regenerated in registers from the same counter-based generator. On CPU tensors it runs through Triton's
  interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported (that is how CI tests it).

Both backends draw the noise from the same Philox-4x32-10 generator keyed on (seed, index) (see ``normals``), so for
the same seed they return the same batch up to float rounding, and a seed reproduces a batch exactly.

The presets' smoothing kernels come from ``gaussian_taps``; SpecAugment-style masks from ``sample_masks``.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["augment", "gaussian_taps", "sample_masks", "normals", "white_noise", "offset_noise", "philox4x32_10"]

MAX_TAPS = 129  # the kernel's limit (kept in sync with fastdecoder.kernels.augment.MAX_TAPS)

# ----------------------------------------------------------------------------------------------------------------
# Smoothing taps of the presets
# ----------------------------------------------------------------------------------------------------------------


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
def _preset_taps_on(preset: str, device: torch.device) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------------------------------
# Counter-based noise: Philox-4x32-10 (the generator of tl.randint4x), in int64 torch arithmetic
# ----------------------------------------------------------------------------------------------------------------

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
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
        pb = c2 * _ROUND_B
        pa = c0 * _ROUND_A
        c0 = (pb >> 32).bitwise_and_(_M32).bitwise_xor_(c1).bitwise_xor_(k0)
        c2 = (pa >> 32).bitwise_and_(_M32).bitwise_xor_(c3).bitwise_xor_(k1)
        c1 = pb.bitwise_and_(_M32)
        c3 = pa.bitwise_and_(_M32)
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _box_muller(i_r: torch.Tensor, i_th: torch.Tensor):
    u = ((i_r >> 8).to(torch.float32) + 0.5) * _TWO_POW_M24  # (0, 1), exact
    v = (i_th >> 8).to(torch.float32) * _TWO_POW_M24  # [0, 1), exact
    r = torch.sqrt(-2.0 * torch.log(u))
    th = (v - 0.5) * _TWO_PI_F32  # uniform angle in [-pi, pi)
    return r * torch.cos(th), r * torch.sin(th)


def _check_seed(seed) -> int:
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
    seed = _check_seed(seed)
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


# ----------------------------------------------------------------------------------------------------------------
# SpecAugment-style masks
# ----------------------------------------------------------------------------------------------------------------


def sample_masks(batch_size: int, num_steps: int, num_channels: int, *, lengths: Optional[torch.Tensor] = None,
                 time_prob: float = 0.0, time_max_width: int = 0, time_max_count: int = 0,
                 freq_prob: float = 0.0, freq_max_width: int = 0, freq_max_count: int = 0,
                 generator: Optional[torch.Generator] = None, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw SpecAugment-style masks: returns (time_masks (B, time_max_count, 2), freq_masks (B, freq_max_count, 2)),
    int64 (start, width) pairs on ``device``.

    Each of the ``max_count`` slots of a sample is active with probability ``prob``; an active slot gets a width
    uniform in {0..max_width} (at most the span L) and a start uniform in {0..L - width}, where L is lengths[b]
    (num_steps when lengths is None) for time masks and num_channels for channel masks. Inactive slots are (0, 0),
    which mask nothing. Drawn on the CPU with ``generator`` (torch's default generator when None).
    """
    for name, v in (("batch_size", batch_size), ("num_steps", num_steps), ("num_channels", num_channels),
                    ("time_max_width", time_max_width), ("time_max_count", time_max_count),
                    ("freq_max_width", freq_max_width), ("freq_max_count", freq_max_count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    for name, p in (("time_prob", time_prob), ("freq_prob", freq_prob)):
        if not (isinstance(p, (int, float)) and 0.0 <= float(p) <= 1.0):
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if lengths is None:
        span_t = torch.full((batch_size,), int(num_steps), dtype=torch.int64)
    else:
        span_t = torch.as_tensor(lengths).detach().to("cpu", torch.int64).reshape(-1)
        if span_t.numel() != batch_size or bool(((span_t < 0) | (span_t > num_steps)).any()):
            raise ValueError(f"lengths must be {batch_size} values in [0, num_steps={num_steps}]")
    span_c = torch.full((batch_size,), int(num_channels), dtype=torch.int64)

    def draw(span, prob, max_width, count):
        if count == 0:
            return torch.zeros((batch_size, 0, 2), dtype=torch.int64)
        active = torch.rand((batch_size, count), generator=generator) < float(prob)
        width = torch.randint(0, int(max_width) + 1, (batch_size, count), generator=generator)
        width = torch.minimum(width, span[:, None])
        room = (span[:, None] - width + 1).to(torch.float64)  # starts 0..span - width
        start = (torch.rand((batch_size, count), generator=generator, dtype=torch.float64) * room).long()
        start = torch.minimum(start, span[:, None] - width)
        masks = torch.stack((start, width), dim=-1)
        return torch.where(active[..., None], masks, torch.zeros_like(masks))

    time_masks = draw(span_t, time_prob, time_max_width, time_max_count)
    freq_masks = draw(span_c, freq_prob, freq_max_width, freq_max_count)
    return time_masks.to(device), freq_masks.to(device)


# ----------------------------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------------------------

_IN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OUT_DTYPES = (torch.float32, torch.bfloat16)


def _check_std(name, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a float >= 0, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
    return v


def _aux_device_ok(t: torch.Tensor, x: torch.Tensor) -> bool:
    return t.device == x.device or t.device.type == "cpu"


def _check_taps(smooth_taps, x) -> Optional[torch.Tensor]:
    if smooth_taps is None:
        return None
    if isinstance(smooth_taps, str):
        if smooth_taps not in ("b2t25", "b2t24"):
            raise ValueError(f"smooth_taps: unknown preset {smooth_taps!r} (expected 'b2t25' or 'b2t24')")
        return _preset_taps_on(smooth_taps, x.device)
    if isinstance(smooth_taps, torch.Tensor):
        if not _aux_device_ok(smooth_taps, x):
            raise ValueError(f"smooth_taps must be on the CPU or on x's device ({x.device}), got {smooth_taps.device}")
        if not (smooth_taps.is_floating_point()):
            raise ValueError(f"smooth_taps must be a float tensor, got {smooth_taps.dtype}")
        taps = smooth_taps.detach()
    else:
        try:
            taps = torch.as_tensor(np.asarray(smooth_taps, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError("smooth_taps must be None, 'b2t25', 'b2t24' or a 1-D sequence of floats") from None
    if taps.ndim != 1 or not 1 <= taps.numel() <= MAX_TAPS:
        raise ValueError(f"smooth_taps must be 1-D with 1..{MAX_TAPS} taps, got shape {tuple(taps.shape)}")
    taps = taps.to(torch.float32)
    if not bool(torch.isfinite(taps).all()):
        raise ValueError("smooth_taps must be finite")
    return taps


def _check_masks(name, masks, x, B) -> Optional[torch.Tensor]:
    if masks is None:
        return None
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"{name} must be an int tensor (B, M, 2) of (start, width) or None, got {type(masks)}")
    if masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {masks.dtype}")
    if masks.ndim != 3 or masks.shape[0] != B or masks.shape[2] != 2:
        raise ValueError(f"{name} must have shape (B={B}, M, 2) of (start, width), got {tuple(masks.shape)}")
    if not _aux_device_ok(masks, x):
        raise ValueError(f"{name} must be on the CPU or on x's device ({x.device}), got {masks.device}")
    return masks.detach().to(x.device, torch.int64)


def _validate(x, lengths, white_noise_std, constant_offset_std, smooth_taps, time_masks, freq_masks, seed,
              out_dtype, backend):
    if backend not in ("auto", "reference", "triton"):
        raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {backend!r}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor (B, T, C), got {type(x)}")
    if x.ndim != 3:
        raise ValueError(f"x must have rank 3 (B, T, C), got shape {tuple(x.shape)}")
    if x.dtype not in _IN_DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    B, T, C = x.shape
    ws = _check_std("white_noise_std", white_noise_std)
    os_ = _check_std("constant_offset_std", constant_offset_std)
    seed = _check_seed(seed)
    if out_dtype is None:
        out_dtype = x.dtype if x.dtype in _OUT_DTYPES else torch.float32
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"out_dtype must be torch.float32 or torch.bfloat16, got {out_dtype}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            try:
                lengths = torch.as_tensor(np.asarray(lengths))
            except (TypeError, ValueError):
                raise ValueError("lengths must be an int tensor (B,) or None") from None
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.ndim != 1 or lengths.shape[0] != B:
            raise ValueError(f"lengths must have shape (B={B},), got {tuple(lengths.shape)}")
        if not _aux_device_ok(lengths, x):
            raise ValueError(f"lengths must be on the CPU or on x's device ({x.device}), got {lengths.device}")
        lengths = lengths.detach().to(x.device, torch.int64)
    taps = _check_taps(smooth_taps, x)
    tm = _check_masks("time_masks", time_masks, x, B)
    fm = _check_masks("freq_masks", freq_masks, x, B)

    # Value checks, with one device -> host transfer for all of them.
    checks = []
    if lengths is not None:
        checks.append(("lengths", f"lengths must lie in [0, T={T}]", ((lengths < 0) | (lengths > T)).any()))
    for name, m, span, what in (("time_masks", tm, T, "T"), ("freq_masks", fm, C, "C")):
        if m is not None and m.shape[1] > 0:
            start, width = m[..., 0], m[..., 1]
            bad = (start < 0) | (width < 0) | (start + width > span)
            checks.append((name, f"{name}: every (start, width) needs start >= 0, width >= 0 and "
                                 f"start + width <= {what}={span}", bad.any()))
    if checks:
        flags = torch.stack([c[2] for c in checks]).tolist()
        for (name, msg, _), bad in zip(checks, flags):
            if bad:
                raise ValueError(msg)
    return x, lengths, ws, os_, taps, tm, fm, seed, out_dtype


def _reference(x, lengths, ws, os_, taps, tm, fm, seed, out_dtype):
    B, T, C = x.shape
    v = x.float()
    if ws != 0.0:
        v = v + ws * white_noise(seed, B, T, C, device=x.device)
    if os_ != 0.0:
        v = v + os_ * offset_noise(seed, B, C, device=x.device)[:, None, :]
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
    if tm is not None and tm.shape[1] > 0:
        start, width = tm[..., 0:1], tm[..., 1:2]  # (B, M, 1)
        drop = drop | ((t[None, None, :] >= start) & (t[None, None, :] < start + width)).any(dim=1)[..., None]
    if fm is not None and fm.shape[1] > 0:
        c = torch.arange(C, device=x.device)
        start, width = fm[..., 0:1], fm[..., 1:2]
        drop = drop | ((c[None, None, :] >= start) & (c[None, None, :] < start + width)).any(dim=1)[:, None, :]
    v = v.masked_fill(drop, 0.0)
    return v.to(out_dtype)


def _triton_available_for(x) -> bool:
    if x.device.type not in ("cuda", "cpu"):
        return False
    try:
        from fastdecoder.kernels import augment as k  # imports triton
    except ImportError:
        return False
    return x.device.type == "cuda" or k.INTERPRET


def augment(x: torch.Tensor, lengths: Optional[torch.Tensor] = None, *, white_noise_std: float = 0.0,
            constant_offset_std: float = 0.0, smooth_taps: Union[None, str, torch.Tensor, Sequence[float]] = None,
            time_masks: Optional[torch.Tensor] = None, freq_masks: Optional[torch.Tensor] = None, seed: int = 0,
            out_dtype: Optional[torch.dtype] = None, backend: str = "auto") -> torch.Tensor:
    """Augment a batch x (B, T, C): ``out = mask(smooth(x + white_noise_std N1 + constant_offset_std N2))``.

    Semantics (both backends; computed in float32):

    * v[b, t, c] = x[b, t, c] + white_noise_std N1[b, t, c] + constant_offset_std N2[b, c] for 0 <= t < length[b],
      and 0 for t >= length[b] (input and noise; ``lengths=None`` means every t < T). N1, N2: independent N(0, 1)
      from a counter-based Philox generator keyed on (seed, index) (``normals``; N1 from ``white_noise``, N2 from
      ``offset_noise``); the same seed gives the same batch, in both backends.
    * smoothing over time per (b, c) with taps w (n of them): s[t] = sum_k w[k] v[t + k - left], left = (n - 1) // 2,
      right = n // 2 (conv1d's 'same' padding; cross-correlation as torch conv1d), v = 0 outside [0, length[b]).
      ``smooth_taps``: None (no smoothing), 'b2t25' / 'b2t24' (``gaussian_taps``), or a 1-D float tensor/sequence
      of 1..129 taps (any values).
    * out[b, t, c] = 0 where t >= length[b], where t lies in [start, start + width) of any of sample b's time masks,
      or c in [start, start + width) of any of its channel masks; s[b, t, c] elsewhere. Masks are applied after the
      smoothing. ``time_masks``/``freq_masks``: integer tensors (B, M, 2) of (start, width) (``sample_masks``
      draws them); width 0 masks nothing; each needs start >= 0, width >= 0 and start + width <= T (resp. C).
      A masked NaN becomes 0.
    * output dtype: ``out_dtype`` (float32 or bfloat16), default x.dtype (float32 for float16 inputs).

    Backends: "reference" (plain PyTorch, the definition; differentiable w.r.t. x), "triton" (the fused kernel;
    CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; no backward: raises ValueError if x.requires_grad),
    "auto" (triton for CUDA tensors that do not require grad, when triton imports; reference otherwise).
    lengths/masks/taps may be on the CPU or on x's device.

    Numerics: in float32 (the interpreter; float32 output on CUDA) the backends agree to ~1e-6 (noise off: float32
    rounding; noise on: the ulps of log/sin/cos, on CUDA MUFU sin/cos within 2^-20.5; the CUDA kernel's smoothing
    runs as tf32x3 products on tensor cores, ~fp32). For bfloat16 output on CUDA the kernel uses single tf32
    products and MUFU log2 as well, accurate to within bfloat16's resolution (a rounding step of the output may
    differ). The reference's conv1d on CUDA follows torch.backends.cudnn.allow_tf32 (True by default in torch).
    Non-finite inputs give non-finite outputs in both; in the kernel a NaN/Inf can reach more outputs than the
    taps' reach (0 * NaN in the banded matrix product).

    Bad input (rank, dtype, device, shapes, out-of-range lengths or masks, negative or non-finite stds, bad seed)
    raises ValueError naming the argument. Value checks on CUDA tensors cost one device-to-host sync.
    """
    x, lengths, ws, os_, taps, tm, fm, seed, out_dtype = _validate(
        x, lengths, white_noise_std, constant_offset_std, smooth_taps, time_masks, freq_masks, seed, out_dtype,
        backend)
    if backend == "auto":
        use_triton = x.device.type == "cuda" and not x.requires_grad and _triton_available_for(x)
        backend = "triton" if use_triton else "reference"
    if backend == "reference":
        return _reference(x, lengths, ws, os_, taps, tm, fm, seed, out_dtype)

    if x.requires_grad:
        raise ValueError("x requires grad, but augment's triton backend has no backward (augmentation acts on "
                         "data): pass x.detach(), or use backend='reference'")
    if not _triton_available_for(x):
        raise ValueError(f"x: backend='triton' needs a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 set "
                         f"before triton is imported; got a {x.device.type} tensor")
    from fastdecoder.kernels.augment import augment_triton

    B, T, C = x.shape
    dev = x.device
    lens = (torch.full((B,), T, dtype=torch.int32, device=dev) if lengths is None
            else lengths.to(dev, torch.int32).contiguous())
    taps_t = (torch.ones(1, dtype=torch.float32, device=dev) if taps is None
              else taps.to(dev, torch.float32).contiguous())
    empty = torch.zeros((B, 0, 2), dtype=torch.int32, device=dev)
    tm_t = empty if tm is None else tm.to(dev, torch.int32).contiguous()
    fm_t = empty if fm is None else fm.to(dev, torch.int32).contiguous()
    return augment_triton(x, lens, taps_t, tm_t, fm_t, white_noise_std=ws, constant_offset_std=os_, seed=seed,
                          out_dtype=out_dtype)
