"""Output-length math and the CTC loss as each preset defines it.

Patching with window K and stride S turns T valid input bins into ``(T - K) // S + 1`` output frames (the exact
count, used by b2t25). The b2t24 reference code computes ``floor((T - K) / S)`` instead, which drops the last valid
frame; ``mode="shipped"`` reproduces it for parity with models trained that way.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def output_lengths(x_lens, patch_size: int, patch_stride: int, mode: str = "exact", max_frames: int | None = None):
    """Valid output frames per sentence. x_lens: (B,) int input bins, a torch tensor or a numpy array (the training
    step's host copies) -> (B,) int64 frames of the same kind.

    exact: (T - K) // S + 1 in integer arithmetic, clamped to >= 1 (a trial shorter than one patch still gives the
    one frame the padded batch produces); shipped: the b2t24 code's ``((T - K) / S).to(int32)``, i.e. C-style
    truncation toward zero, clamped to >= 0. ``max_frames`` caps the result at the number of frames the batch
    produced.
    """
    if mode not in ("exact", "shipped"):
        raise ValueError(f"output length mode must be 'exact' or 'shipped', got {mode!r}")
    if isinstance(x_lens, np.ndarray):
        d = x_lens.astype(np.int64) - patch_size
    else:
        d = torch.as_tensor(x_lens).to(torch.int64) - patch_size
    q = d // patch_stride  # floor division for numpy arrays and torch integer tensors alike
    if mode == "exact":
        return (q + 1).clip(1, max_frames)
    return (q + ((d < 0) & (d % patch_stride != 0))).clip(0, max_frames)  # floor -> truncation toward zero


def min_frames_for_target(y: torch.Tensor, y_lens: torch.Tensor) -> torch.Tensor:
    """Frames CTC needs to emit each target: its length plus one blank between each pair of equal neighbours.

    y: (B, L) int64 zero padded; y_lens: (B,) -> (B,) int64.
    """
    L = y.shape[1]
    if L < 2:
        return y_lens.to(torch.int64)
    repeats = (y[:, 1:] == y[:, :-1]) & (torch.arange(1, L, device=y.device)[None, :] < y_lens[:, None])
    return y_lens.to(torch.int64) + repeats.sum(1)


def infeasible_targets(out_lens: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor) -> torch.Tensor:
    """(B,) bool: targets that cannot be aligned to their output frames (CTC loss would be infinite)."""
    return min_frames_for_target(y, y_lens) > out_lens.to(y_lens.device)


def ctc_loss(logits: torch.Tensor, out_lens: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor, *,
             reduction: str = "mean_batch", zero_infinity: bool = False, blank: int = 0) -> torch.Tensor:
    """CTC loss of logits (B, N, V) against targets y (B, L) with lengths; computed in float32.

    mean_batch (b2t25): per-sentence negative log-likelihood, plain mean over the batch.
    mean_target (b2t24): torch's reduction 'mean': each sentence's loss divided by its target length, then the mean.
    """
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (N, B, V)
    per = F.ctc_loss(log_probs, y, out_lens, y_lens, blank=blank, reduction="none", zero_infinity=zero_infinity)
    if reduction == "mean_batch":
        return per.mean()
    if reduction == "mean_target":
        return (per / y_lens.clamp(min=1).to(per.dtype)).mean()
    raise ValueError(f"CTC reduction must be 'mean_batch' or 'mean_target', got {reduction!r}")
