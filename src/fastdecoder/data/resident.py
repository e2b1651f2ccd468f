"""A split packed into a few contiguous tensors on one device, and batches built there by index gathers.

The fast path keeps the whole training split on the GPU (b2t25: ~45 h of 512-channel bins in float32 is ~1.7 GB;
bf16 halves that) and builds each padded batch with one gather, with no host work and no host->device copy per
step. Where the data does not fit, ``pin=True`` keeps it in page-locked host memory instead, and batches are copied
with ``non_blocking=True``.

    features: (total_bins, C)   every trial's bins, one after another
    start:    (n,) int64         first bin of each trial;  length: (n,) int64
    targets:  (n, L_max) int64   zero padded;  target_len: (n,) int64;  day: (n,) int64
"""
from __future__ import annotations

import numpy as np
import torch

from fastdecoder.data.batching import Batch
from fastdecoder.data.dataset import Split


class ResidentSplit:
    """``split`` packed on ``device`` (features in ``dtype``); ``batch(indices)`` equals ``collate(split, indices)``."""

    def __init__(self, split: Split, device="cpu", dtype: torch.dtype = torch.float32, pin: bool = False):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.device = torch.device(device)
        self.n = len(split)
        lengths = np.asarray(split.lengths, dtype=np.int64)
        start = np.zeros(self.n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=start[1:])
        feats = torch.from_numpy(np.concatenate(split.features, axis=0)).to(dtype)
        L = max(1, int(split.target_lengths.max())) if self.n else 1
        targets = np.zeros((self.n, L), dtype=np.int64)
        if split.targets is not None:
            for i, t in enumerate(split.targets):
                targets[i, : len(t)] = t
        host = {"features": feats, "start": torch.from_numpy(start), "length": torch.from_numpy(lengths.copy()),
                "targets": torch.from_numpy(targets),
                "target_len": torch.from_numpy(np.asarray(split.target_lengths, dtype=np.int64).copy()),
                "day": torch.from_numpy(np.asarray(split.day, dtype=np.int64).copy())}
        # host copies of the lengths: the padded shape of a batch is known without a device -> host sync
        self.host_length = lengths
        self.host_target_len = np.asarray(split.target_lengths, dtype=np.int64)
        self.host_day = np.asarray(split.day, dtype=np.int64)  # each batch carries its days' host copy
        self.pinned = pin and self.device.type == "cpu" and torch.cuda.is_available()
        for name, t in host.items():
            setattr(self, name, t.pin_memory() if self.pinned else t.to(self.device))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.features, self.start, self.length, self.targets, self.target_len, self.day))

    def batch(self, indices, device=None) -> Batch:
        """Padded Batch of the trials ``indices`` built where the data lives (then moved to ``device`` if given).

        x (B, T_max, C) float32 with T_max the longest trial in the batch; bins past each length are zero;
        ``host_day`` (B,) int64 the host copy of ``day`` (for ops.day_affine.plan_day_groups).
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size == 0:
            raise ValueError("a batch needs at least one trial index")
        if index.min() < 0 or index.max() >= self.n:
            raise IndexError(f"trial indices must lie in 0..{self.n - 1}, got {index.min()}..{index.max()}")
        idx = torch.from_numpy(index)
        if self.start.device.type == "cuda":  # a pinned, asynchronous copy: no host sync per step
            idx = idx.pin_memory().to(self.start.device, non_blocking=True)
        lens = self.length[idx]
        T = int(self.host_length[index].max())
        t = torch.arange(T, device=idx.device)
        valid = t[None, :] < lens[:, None]                                  # (B, T)
        rows = torch.where(valid, self.start[idx, None] + t[None, :], 0)     # (B, T) bin index into features
        x = self.features[rows] * valid[..., None]                          # (B, T, C), zero padding
        y_len = self.target_len[idx]
        Lb = max(1, int(self.host_target_len[index].max()))
        out = Batch(x=x.float(), x_lens=lens, y=self.targets[idx, :Lb], y_lens=y_len, day=self.day[idx], index=index,
                    host_day=self.host_day[index], host_lens=np.asarray(self.host_length[index], dtype=np.int64),
                    host_y_lens=np.asarray(self.host_target_len[index], dtype=np.int64))
        if device is not None and torch.device(device) != self.features.device:
            out = out.to(device, non_blocking=self.pinned)
        return out
