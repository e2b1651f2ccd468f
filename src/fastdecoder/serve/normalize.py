"""Rolling per-feature z-scoring over the most recent trials, as the NEJM closed-loop node adapts its normalisation.

Semantics of the NEJM node (its ``FeatureStats`` and z-score step):
- the statistics are the mean and standard deviation (ddof 0) of every bin of the last ``window`` trials (20);
- with fewer than ``min_trials`` trials (10) kept, they are blended with the starting statistics:
  ``(stat_of_kept_trials * k + start * (min_trials - k)) / min_trials`` for k kept trials;
- a bin becomes ``(x - mean) / (std + 1e-8)``, and any value with ``|z| > clip`` (10) is set to **0** (the node zeroes
  outliers rather than saturating them);
- the statistics are updated once a trial has ended, with that trial's raw bins.

Memory is bounded: each kept trial is held as its count, mean and sum of squared deviations (3 x C numbers), combined
exactly (Chan et al.'s pairwise update) instead of keeping the bins.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from fastdecoder.errors import UserError

__all__ = ["RollingZScore"]

EPS = 1e-8


class RollingZScore:
    """Args: mean, std: (C,) starting statistics; window: trials kept; min_trials: trials before the starting
    statistics stop counting; clip: |z| above which a value is zeroed."""

    def __init__(self, mean, std, *, window: int = 20, min_trials: int = 10, clip: float = 10.0):
        self.start_mean = np.asarray(mean, np.float64).reshape(-1)
        self.start_std = np.asarray(std, np.float64).reshape(-1)
        if self.start_mean.shape != self.start_std.shape:
            raise UserError(f"normalisation mean and std differ in shape: {self.start_mean.shape} vs "
                            f"{self.start_std.shape}")
        if not (np.isfinite(self.start_mean).all() and np.isfinite(self.start_std).all()) or (self.start_std < 0).any():
            raise UserError("normalisation mean/std must be finite and std >= 0")
        if window < 1 or not 1 <= min_trials:
            raise UserError(f"norm window ({window}) and min trials ({min_trials}) must be >= 1")
        if not clip > 0:
            raise UserError(f"norm clip must be > 0, got {clip}")
        self.window, self.min_trials, self.clip = int(window), int(min_trials), float(clip)
        self._trials: deque = deque(maxlen=self.window)  # (n, mean (C,), m2 (C,)) per kept trial
        self.mean, self.std = self.start_mean.copy(), self.start_std.copy()

    @property
    def n_features(self) -> int:
        return self.start_mean.shape[0]

    @property
    def trials(self) -> int:
        return len(self._trials)

    def __call__(self, bins: np.ndarray) -> np.ndarray:
        """(n, C) raw bins -> (n, C) float32 z-scores (outliers zeroed)."""
        z = (np.asarray(bins, np.float64) - self.mean) / (self.std + EPS)
        z[np.abs(z) > self.clip] = 0.0
        return z.astype(np.float32)

    def update(self, trial_bins: np.ndarray) -> None:
        """Take one ended trial's raw bins (n, C) into the window and recompute the statistics."""
        x = np.asarray(trial_bins, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features or x.shape[0] == 0:
            return
        m = x.mean(0)
        self._trials.append((x.shape[0], m, ((x - m) ** 2).sum(0)))
        n, mean, m2 = 0, np.zeros_like(m), np.zeros_like(m)
        for nb, mb, m2b in self._trials:  # pairwise combination: exact mean / variance of the concatenation
            tot = n + nb
            delta = mb - mean
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta ** 2 * (n * nb / tot)
            n = tot
        std = np.sqrt(m2 / n)
        k = len(self._trials)
        if k >= self.min_trials:
            self.mean, self.std = mean, std
        else:
            self.mean = (mean * k + self.start_mean * (self.min_trials - k)) / self.min_trials
            self.std = (std * k + self.start_std * (self.min_trials - k)) / self.min_trials

    @classmethod
    def from_file(cls, path, n_features: int, **kw) -> "RollingZScore":
        """Starting statistics from an .npz with arrays ``mean`` and ``std`` (C,)."""
        try:
            with np.load(path) as f:
                mean, std = f["mean"], f["std"]
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"cannot read normalisation statistics from {path} (an .npz with 'mean' and 'std'): "
                            f"{e}") from None
        if np.shape(mean) != (n_features,):
            raise UserError(f"{path}: mean has shape {np.shape(mean)}, the model takes {n_features} features")
        return cls(mean, std, **kw)
