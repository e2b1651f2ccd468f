"""SpecAugment-style time and channel masks, drawn on the host."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from fastdecoder.ops.host_read_marker import cpu_host_read

__all__ = ["sample_masks"]



def sample_masks(batch_size: int, num_steps: int, num_channels: int, *, lengths: Optional[torch.Tensor] = None,
                 time_prob: float = 0.0, time_max_width: int = 0, time_max_count: int = 0,
                 freq_prob: float = 0.0, freq_max_width: int = 0, freq_max_count: int = 0,
                 generator: Optional[torch.Generator] = None, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw SpecAugment-style masks: returns (time_masks (B, time_max_count, 2), freq_masks (B, freq_max_count, 2)),
    int64 (start, width) pairs on ``device``.

    Each of the ``max_count`` slots of a sample is active with probability ``prob``; an active slot gets a width
    uniform in {0..max_width} (at most the span L) and a start uniform in {0..L - width}, where L is lengths[b]
    (num_steps when lengths is None) for time masks and num_channels for channel masks. Inactive slots are (0, 0),
    which mask nothing. The random numbers are drawn on the CPU with ``generator`` (torch's default generator when
    None); lengths on a device stay there (the starts are scaled to them on the device: no device -> host read, and
    no range check of their values, which CPU lengths get).
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
        span_t = torch.as_tensor(lengths).detach().to(torch.int64).reshape(-1)
        bad = span_t.numel() != batch_size
        if not bad and span_t.device.type == "cpu":
            with cpu_host_read():
                bad = bool(((span_t < 0) | (span_t > num_steps)).any())
        if bad:
            raise ValueError(f"lengths must be {batch_size} values in [0, num_steps={num_steps}]")
    span_c = torch.full((batch_size,), int(num_channels), dtype=torch.int64, device=span_t.device)

    def draw(span, prob, max_width, count):
        if count == 0:
            return torch.zeros((batch_size, 0, 2), dtype=torch.int64)
        active = (torch.rand((batch_size, count), generator=generator) < float(prob)).to(span.device)
        width = torch.randint(0, int(max_width) + 1, (batch_size, count), generator=generator).to(span.device)
        width = torch.minimum(width, span[:, None])
        room = (span[:, None] - width + 1).to(torch.float64)  # starts 0..span - width
        u = torch.rand((batch_size, count), generator=generator, dtype=torch.float64).to(span.device)
        start = (u * room).long()
        start = torch.minimum(start, span[:, None] - width)
        masks = torch.stack((start, width), dim=-1)
        return torch.where(active[..., None], masks, torch.zeros_like(masks))

    time_masks = draw(span_t, time_prob, time_max_width, time_max_count)
    freq_masks = draw(span_c, freq_prob, freq_max_width, freq_max_count)
    return time_masks.to(device), freq_masks.to(device)


