"""One padding helper for per-sentence log-probs: a list of (T_i, V) arrays -> one (B, T_max, V) batch + lengths."""
from __future__ import annotations

import numpy as np

from fastdecoder.errors import UserError


def pad_log_probs(log_probs, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack (T_i, V) NumPy arrays into a zero-padded (B, T_max, V) array and (B,) int64 lengths T_i.

    The batch is float64 if any input is, else float32. ``n_classes``: V of an empty list. ValueError naming the
    entry whose shape does not fit.
    """
    arrs = [np.asarray(a) for a in log_probs]
    for i, a in enumerate(arrs):
        if a.ndim != 2:
            raise UserError(f"log_probs[{i}] must be (time, classes), got shape {tuple(a.shape)}")
    V = arrs[0].shape[1] if arrs else (n_classes or 0)
    T = max((a.shape[0] for a in arrs), default=0)
    dtype = np.float64 if any(a.dtype == np.float64 for a in arrs) else np.float32
    out = np.zeros((len(arrs), T, V), dtype=dtype)
    for i, a in enumerate(arrs):
        if a.shape[1] != V:
            raise UserError(f"log_probs[{i}] has {a.shape[1]} classes, log_probs[0] has {V}")
        out[i, : a.shape[0]] = a
    return out, np.array([a.shape[0] for a in arrs], dtype=np.int64)
