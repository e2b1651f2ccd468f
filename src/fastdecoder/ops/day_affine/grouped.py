"""The day layer's affine map ``x W[day] + b[day]`` without materialising the (B, C, C) gather ``W[day_idx]``.

A b2t25 batch holds a few days (4 days x 16 trials), so the trials are grouped by day and the distinct days run one
``bmm`` of (G, m*T, C) @ (G, C, C): G distinct days, m trials each (groups of unequal size are padded up to m
by repeating a trial of the group, whose extra outputs are dropped; where that padding would add more than a quarter
of the batch, each day runs its own GEMM instead). Equal to the gather + ``bmm`` to fp32 round-off (each output is
the same length-C dot product, blocked differently), gradients included.

The grouping is planned on the host from host day indices (``plan_day_groups``: numpy only, small index tensors
copied pinned and non-blocking), so the device op never reads a device tensor back and its shapes depend only on
(B, T, G, m): with the 'days' batching they are the same every step. A CPU ``day_idx`` is planned on the fly (free to
read); a device ``day_idx`` without a plan keeps the gather, so the op never adds a device-to-host read to a step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from fastdecoder.ops.day_affine.reference import day_affine_gather
from fastdecoder.ops.host_read_marker import cpu_host_read

__all__ = ["DayGroups", "MAX_PADDING", "check_days", "day_affine", "plan_day_groups"]

#: padding unequal groups up to the largest one is used while it adds at most this share of the batch's rows
MAX_PADDING = 0.25


@dataclass(frozen=True)
class DayGroups:
    """A batch of ``batch`` trials grouped by day (see ``plan_day_groups``).

    pick: (G,) int64 distinct days, on the device; take: rows of x in group order, (G*width,) or (B,) int64 (None:
    x as it is); put: (B,) int64 row of the grouped output holding each trial (None: as it is); counts: trials per
    group (host ints); width: m, the slots per group of the batched GEMM (0: one GEMM per group)."""

    pick: torch.Tensor
    take: Optional[torch.Tensor]
    put: Optional[torch.Tensor]
    counts: tuple
    width: int
    batch: int


def _group_order(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct days in order of first appearance, their trial counts, the stable order that groups the trials)."""
    uniq, first, inverse = np.unique(days, return_index=True, return_inverse=True)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(by_first.size)
    key = rank[inverse.reshape(-1)]
    return uniq[by_first], np.bincount(key, minlength=uniq.size), np.argsort(key, kind="stable")


def _to_device(a: np.ndarray, device) -> torch.Tensor:
    """(n,) int64 host array -> tensor on ``device``: pinned and non-blocking on CUDA (no host sync)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _index(a: np.ndarray, device) -> Optional[torch.Tensor]:
    """``_to_device(a)``, or None where ``a`` is the identity permutation."""
    return None if np.array_equal(a, np.arange(a.size)) else _to_device(a, device)


def check_days(days: np.ndarray, n_days: int) -> np.ndarray:
    """(B,) day indices as int64, checked against the model's ``n_days`` (ValueError naming the bad ones)."""
    days = np.asarray(days).astype(np.int64, copy=False).reshape(-1)
    if days.size and (days.min() < 0 or days.max() >= n_days):
        raise ValueError(f"day_idx must lie in [0, {n_days}) (the model's days), got {sorted(set(days.tolist()))}")
    return days


def plan_day_groups(days, n_days: int, device="cpu", max_padding: float = MAX_PADDING) -> DayGroups:
    """Plan ``day_affine``'s grouping from host day indices ``days`` (B,) (numpy, list or CPU tensor); the index
    tensors go to ``device``. Reads nothing from a device."""
    days = check_days(days.numpy() if isinstance(days, torch.Tensor) else days, n_days)
    if days.size == 0:
        raise ValueError("day groups need at least one trial")
    distinct, counts, order = _group_order(days)
    B, G = days.size, distinct.size
    m = int(counts.max()) if G else 0
    if G and counts.min() == m:  # equal groups: the grouped rows are the batch reordered
        take, put, width = order, np.argsort(order), m
    elif G * m - B <= max_padding * B:  # pad each group to m slots with its first trial
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        j = np.arange(m)
        valid = j[None, :] < counts[:, None]                               # (G, m)
        pos = start[:, None] + np.where(valid, j[None, :], 0)              # (G, m) position in ``order``
        take = order[pos].reshape(-1)
        put = np.empty(B, dtype=np.int64)
        put[order[pos[valid]]] = (np.arange(G)[:, None] * m + j[None, :])[valid]
        width = m
    else:
        take, put, width = order, np.argsort(order), 0
    # padded groups (G * m > B rows): ``put`` picks B of them even where it reads 0..B-1 (only the last group short)
    put = _index(put, device) if take.size == B else _to_device(put, device)
    return DayGroups(pick=_to_device(distinct, device), take=_index(take, device), put=put,
                     counts=tuple(int(c) for c in counts), width=width, batch=B)


def _grouped_affine(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor, g: DayGroups) -> torch.Tensor:
    B, T, C = x.shape
    if B != g.batch:
        raise ValueError(f"the day groups were planned for {g.batch} trials, x holds {B}")
    xs = x if g.take is None else x.index_select(0, g.take)
    w, b = weights.index_select(0, g.pick), biases.index_select(0, g.pick)  # (G, C, C), (G, 1, C)
    # the bias is added after the product (not baddbmm / addmm): under autocast the product runs in bf16 and the
    # bias adds in fp32, as in the gather form, so both give the same dtype and rounding
    if g.width:  # one batched GEMM over the distinct days: (G, m*T, C) @ (G, C, C)
        y = (torch.bmm(xs.reshape(len(g.counts), g.width * T, C), w) + b).reshape(-1, T, C)
    else:
        parts = torch.split(xs, list(g.counts))
        y = torch.cat([(torch.mm(p.reshape(-1, C), w[i]) + b[i]).reshape(p.shape) for i, p in enumerate(parts)])
    return y if g.put is None else y.index_select(0, g.put)


def day_affine(x: torch.Tensor, day_idx: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor,
               groups: Optional[DayGroups] = None) -> torch.Tensor:
    """``x W[day] + b[day]`` per trial, grouped by day.

    x: (B, T, C) float; day_idx: (B,) int64; weights: (D, C, C); biases: (D, 1, C); groups: the plan made on the
    host from the batch's day indices (``plan_day_groups``; None: planned here from a CPU ``day_idx``, while a device
    ``day_idx`` keeps the gather). Returns (B, T, C).
    """
    if groups is None:
        if day_idx.device.type != "cpu" or x.shape[0] == 0:
            return day_affine_gather(x, day_idx, weights, biases)
        groups = plan_day_groups(_host_days(day_idx, weights.shape[0]), weights.shape[0], x.device)
    return _grouped_affine(x, weights, biases, groups)


def _host_days(day_idx: torch.Tensor, n_days: int) -> np.ndarray:
    """A CPU ``day_idx`` read on the host (free there; a device ``day_idx`` keeps the gather instead)."""
    with cpu_host_read():
        days = day_idx.numpy()
    return check_days(days, n_days)
