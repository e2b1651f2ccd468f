"""The day layer's affine map ``x W[day] + b[day]`` without materialising the (B, C, C) gather ``W[day_idx]``.

A b2t25 batch holds a few days (4 days x 16 trials), so the trials are grouped by day and each distinct day runs one
(n_d * T, C) @ (C, C) GEMM (one ``baddbmm`` over the distinct days when every day has the same number of trials).
Equal to the gather + ``bmm`` to fp32 round-off (each output is the same length-C dot product, blocked differently),
gradients included.

Grouping reads the day indices on the host: a CPU ``day_idx`` costs nothing to read; a device ``day_idx`` keeps the
gather, so the op never adds a device-to-host read to a step (pass the host copy of the batch's days to group them
on a GPU too).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["day_affine", "day_affine_gather"]


def day_affine_gather(x: torch.Tensor, day_idx: torch.Tensor, weights: torch.Tensor,
                      biases: torch.Tensor) -> torch.Tensor:
    """The published form: ``bmm(x, W[day_idx]) + b[day_idx]``; x (B, T, C), day_idx (B,), weights (D, C, C),
    biases (D, 1, C) -> (B, T, C)."""
    day_idx = day_idx.to(weights.device)
    return torch.bmm(x, weights[day_idx]) + biases[day_idx]


def _host_days(day_idx: torch.Tensor, n_days: int) -> np.ndarray:
    days = day_idx.numpy().astype(np.int64, copy=False)
    if days.size and (days.min() < 0 or days.max() >= n_days):
        raise ValueError(f"day_idx must lie in [0, {n_days}) (the model's days), got {sorted(set(days.tolist()))}")
    return days


def _groups(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct days in order of first appearance, their trial counts, the stable order that groups the trials)."""
    uniq, first, inverse = np.unique(days, return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(by_first.size)
    key = rank[inverse.reshape(-1)]
    return uniq[by_first], np.bincount(key, minlength=uniq.size), np.argsort(key, kind="stable")


def day_affine(x: torch.Tensor, day_idx: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """``x W[day] + b[day]`` per trial, grouped by day.

    x: (B, T, C) float; day_idx: (B,) int64 (on the CPU to be grouped, else the gather runs); weights: (D, C, C);
    biases: (D, 1, C). Returns (B, T, C).
    """
    if day_idx.device.type != "cpu" or x.shape[0] == 0:
        return day_affine_gather(x, day_idx, weights, biases)
    days = _host_days(day_idx, weights.shape[0])
    B, T, C = x.shape
    distinct, counts, order = _groups(days)
    in_order = bool((order == np.arange(B)).all())  # each day's trials contiguous (the day batch sampler's batches)
    dev = x.device
    xs = x if in_order else x.index_select(0, torch.from_numpy(order).to(dev))
    pick = torch.from_numpy(distinct).to(dev)
    w, b = weights.index_select(0, pick), biases.index_select(0, pick)  # (n_u, C, C), (n_u, 1, C)
    if (counts == counts[0]).all():  # equal groups: one batched GEMM over the distinct days
        y = torch.baddbmm(b, xs.reshape(len(distinct), -1, C), w).reshape(B, T, C)
    else:
        parts = torch.split(xs, counts.tolist())
        y = torch.cat([torch.addmm(b[i], p.reshape(-1, C), w[i]).reshape(p.shape) for i, p in enumerate(parts)])
    if in_order:
        return y
    return y.index_select(0, torch.from_numpy(np.argsort(order)).to(dev))
