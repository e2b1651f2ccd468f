"""The day layer's affine map as the reference code computes it: gather each trial's day matrix, then one ``bmm``."""
from __future__ import annotations

import torch

__all__ = ["day_affine_gather"]


def day_affine_gather(x: torch.Tensor, day_idx: torch.Tensor, weights: torch.Tensor,
                      biases: torch.Tensor) -> torch.Tensor:
    """The published form: ``bmm(x, W[day_idx]) + b[day_idx]``; x (B, T, C), day_idx (B,), weights (D, C, C),
    biases (D, 1, C) -> (B, T, C)."""
    day_idx = day_idx.to(weights.device)
    return torch.bmm(x, weights[day_idx]) + biases[day_idx]
