"""Batches: padding (`collate`), the training samplers, and in-order evaluation batches.

    days    DayBatchSampler    b2t25 (NEJM): random days x trials drawn with replacement, surplus trimmed at random
    random  RandomBatchSampler b2t24 (cffan): a fresh shuffled batch every step, like next(iter(shuffled DataLoader))
    epochs  EpochBatchSampler  every trial once per epoch in shuffled order, the epoch's last batch short

Samplers are infinite iterators of trial-index arrays whose `state_dict()` holds only plain Python containers (so it
fits in a checkpoint read with `torch.load(weights_only=True)`) and resumes exactly the same index sequence.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from fastdecoder.data.dataset import Split
from fastdecoder.plain import to_plain


@dataclass
class Batch:
    """x: (batch, time, channels) float32 zero-padded; x_lens: (batch,) int64 true lengths in bins;
    y: (batch, L_max) int64 zero-padded targets (L_max >= 1, all zero if unlabeled); y_lens: (batch,) int64;
    day: (batch,) int64 day index; index: (batch,) trial indices into the split; host_day: (batch,) int64 host
    copy of ``day`` where the batch builder has one (resident batches: the day layer groups by it, no host read);
    host_lens, host_y_lens: (batch,) int64 host copies of ``x_lens`` and ``y_lens`` (the training step's
    feasibility check and CTC lengths read them, never the device); cut: bins the training augmentation cut from
    the start of every trial (``x_lens`` and ``host_lens`` are after the cut)."""

    x: torch.Tensor
    x_lens: torch.Tensor
    y: torch.Tensor
    y_lens: torch.Tensor
    day: torch.Tensor
    index: np.ndarray
    host_day: Optional[np.ndarray] = None
    host_lens: Optional[np.ndarray] = None
    host_y_lens: Optional[np.ndarray] = None
    cut: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on `device` (index stays a numpy array)."""
        return dataclasses.replace(self, **{f: getattr(self, f).to(device, non_blocking=non_blocking)
                                            for f in ("x", "x_lens", "y", "y_lens", "day")})

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory (for async copies to a GPU); unchanged where CUDA is absent."""
        if not torch.cuda.is_available():
            return self
        return dataclasses.replace(self, **{f: getattr(self, f).pin_memory()
                                            for f in ("x", "x_lens", "y", "y_lens", "day")})


def collate(split: Split, indices) -> Batch:
    """Pad the trials `indices` of `split` into one Batch (see Batch for shapes)."""
    index = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(split)
    if index.size == 0:
        raise ValueError("collate needs at least one trial index")
    if index.min() < 0 or index.max() >= n:
        raise IndexError(f"trial indices must lie in 0..{n - 1}, got {index.min()}..{index.max()}")
    x_lens = split.lengths[index]
    c = split.features[int(index[0])].shape[1]
    x = np.zeros((index.size, int(x_lens.max()), c), dtype=np.float32)
    for b, i in enumerate(index):
        x[b, : x_lens[b]] = split.features[i]
    y_lens = split.target_lengths[index]
    y = np.zeros((index.size, max(1, int(y_lens.max()))), dtype=np.int64)
    if split.targets is not None:
        for b, i in enumerate(index):
            y[b, : y_lens[b]] = split.targets[i]
    return Batch(x=torch.from_numpy(x), x_lens=torch.from_numpy(x_lens.copy()), y=torch.from_numpy(y),
                 y_lens=torch.from_numpy(y_lens.copy()), day=torch.from_numpy(split.day[index].copy()), index=index,
                 host_lens=np.asarray(x_lens, dtype=np.int64), host_y_lens=np.asarray(y_lens, dtype=np.int64))


def eval_batches(split: Split, batch_size: int, sort_by_length: bool = False) -> Iterator[Batch]:
    """Every trial once, deterministically: in split order, or longest first with `sort_by_length` (less padding).
    Each Batch's `index` says which trials it holds."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-split.lengths, kind="stable") if sort_by_length else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start:start + batch_size])


class _Sampler:
    """Shared parts: a numpy Generator, an infinite iterator protocol, config checks on resume."""

    kind = "sampler"

    def __init__(self, split: Split, batch_size: int, seed: int = 0) -> None:
        if len(split) == 0:
            raise ValueError(f"{type(self).__name__}: the split has no trials")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n_trials = len(split)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.batches = 0  # batches produced so far

    def __iter__(self) -> "_Sampler":
        return self

    def __next__(self) -> np.ndarray:
        self.batches += 1
        return self._next()

    def _next(self) -> np.ndarray:
        raise NotImplementedError

    def _config(self) -> dict:
        return {"kind": self.kind, "n_trials": self.n_trials, "batch_size": self.batch_size}

    def _check(self, d: dict) -> None:
        mine = self._config()
        theirs = {k: d.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"sampler state was saved for {theirs}, this sampler is {mine}; resuming it would not "
                             "reproduce the same batches")

    def state_dict(self) -> dict:
        """Plain containers only: the configuration, batches so far, the generator's state."""
        return {**self._config(), "batches": self.batches, "rng": to_plain(self.rng.bit_generator.state)}

    def load_state_dict(self, d: dict) -> None:
        self._check(d)
        self.rng.bit_generator.state = d["rng"]
        self.batches = int(d["batches"])


class DayBatchSampler(_Sampler):
    """b2t25 batches as the NEJM trainer draws them: `days_per_batch` random days (without replacement; all days if
    fewer have trials) x ceil(batch_size / days) trials per day drawn with replacement; while the batch holds more
    than `batch_size` trials, one randomly chosen day (uniform over the chosen days, drawn anew for each removal)
    loses its last trial. Only days with >= 1 trial in the split take part. next() -> int64 trial indices, day by
    day in the order the days were drawn: (batch_size,) whenever ceil(batch_size / days) >= the surplus (always at
    the presets' 64 / 4, where nothing is trimmed); NEJM's rule can empty a day and then removes nothing, which this
    reproduces.

    ``must_include_days`` (NEJM's dataset key; day indices, negative ones counted from ``n_days``): these days are
    in every batch, first, and the rest of the batch's days are drawn from the other days, as NEJM's
    ``create_batch_index_train`` does. None or empty: the plain draw above."""

    kind = "day"

    def __init__(self, split: Split, batch_size: int, days_per_batch: int = 4, seed: int = 0,
                 must_include_days=None, n_days: int | None = None) -> None:
        super().__init__(split, batch_size, seed)
        if days_per_batch < 1:
            raise ValueError(f"days_per_batch must be >= 1, got {days_per_batch}")
        self.days_per_batch = int(days_per_batch)
        order = np.argsort(split.day, kind="stable")
        days, starts, counts = np.unique(split.day[order], return_index=True, return_counts=True)
        self.days = days  # days with at least one trial
        self._by_day = [order[s:s + c] for s, c in zip(starts, counts)]
        self.must_include_days = self._must_positions(must_include_days, n_days)

    def _must_positions(self, must, n_days: int | None) -> list[int]:
        """Positions in ``self.days`` of the must-include days (ValueError naming a day without training trials)."""
        if not must:
            return []
        n = int(n_days) if n_days is not None else int(self.days.max()) + 1
        if len(must) > self.days_per_batch:
            raise ValueError(f"data.must_include_days lists {len(must)} days but days_per_batch is "
                             f"{self.days_per_batch}")
        where = {int(d): i for i, d in enumerate(self.days)}
        out = []
        for d in must:
            day = int(d) + n if int(d) < 0 else int(d)
            if day not in where:
                raise ValueError(f"data.must_include_days: day {d} has no training trials (days with trials: "
                                 f"{', '.join(map(str, self.days.tolist()))})")
            if where[day] in out:
                raise ValueError(f"data.must_include_days lists day {day} twice")
            out.append(where[day])
        return out

    def _draw_days(self, k: int) -> np.ndarray:
        if not self.must_include_days:
            return self.rng.choice(len(self.days), size=k, replace=False)
        others = [i for i in range(len(self.days)) if i not in self.must_include_days]
        extra = self.rng.choice(others, size=max(0, k - len(self.must_include_days)), replace=False)
        return np.concatenate([np.asarray(self.must_include_days, dtype=np.int64), np.asarray(extra, np.int64)])

    def _next(self) -> np.ndarray:
        k = min(self.days_per_batch, len(self.days))
        chosen = self._draw_days(k)
        per_day = math.ceil(self.batch_size / k)
        parts = [self._by_day[d][self.rng.integers(0, self._by_day[d].size, size=per_day)] for d in chosen]
        keep = np.full(k, per_day)
        for _ in range(per_day * k - self.batch_size):  # the surplus, one trial at a time from a random day
            j = self.rng.integers(0, k)
            keep[j] = max(0, keep[j] - 1)
        return np.concatenate([p[:n] for p, n in zip(parts, keep)])

    def _config(self) -> dict:
        extra = {"must_include_days": list(self.must_include_days)} if self.must_include_days else {}
        return {**super()._config(), "days_per_batch": self.days_per_batch, **extra}


class RandomBatchSampler(_Sampler):
    """b2t24 batches as cffan draws them (``next(iter(loader))`` on a shuffled DataLoader every step): the first
    `batch_size` trials of a fresh permutation, so every batch is full (all trials, shuffled, when the split holds
    fewer). next() -> (min(batch_size, n_trials),) int64 trial indices, distinct within a batch."""

    kind = "random_step"  # not "random": the epoch walk had that tag in earlier versions; its states must not load

    def _next(self) -> np.ndarray:
        return self.rng.permutation(self.n_trials)[: self.batch_size].astype(np.int64, copy=False)


class EpochBatchSampler(_Sampler):
    """Epoch batches (``data.batching: epochs``): a fresh permutation of all trials per epoch, walked in chunks of
    `batch_size` (the last chunk of an epoch may be shorter), like iterating a shuffled DataLoader with
    drop_last=False: every trial once per epoch. next() -> int64 trial indices."""

    kind = "epochs"

    def __init__(self, split: Split, batch_size: int, seed: int = 0) -> None:
        super().__init__(split, batch_size, seed)
        self.epoch = -1  # incremented when a permutation is drawn
        self._perm: np.ndarray | None = None
        self._pos = 0
        self._epoch_start: dict | None = None  # rng state before the current permutation

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n_trials / self.batch_size)

    def _new_epoch(self) -> None:
        self._epoch_start = to_plain(self.rng.bit_generator.state)
        self._perm = self.rng.permutation(self.n_trials)
        self._pos = 0
        self.epoch += 1

    def _next(self) -> np.ndarray:
        if self._perm is None or self._pos >= self.n_trials:
            self._new_epoch()
        out = self._perm[self._pos:self._pos + self.batch_size]
        self._pos += out.size
        return out.astype(np.int64, copy=True)

    def state_dict(self) -> dict:
        return {**self._config(), "batches": self.batches, "epoch": self.epoch, "pos": self._pos,
                "rng": to_plain(self.rng.bit_generator.state), "epoch_start_rng": self._epoch_start}

    def load_state_dict(self, d: dict) -> None:
        self._check(d)
        self.batches = int(d["batches"])
        if d["epoch_start_rng"] is None:  # saved before the first batch
            self.rng.bit_generator.state = d["rng"]
            self._perm, self._pos, self.epoch, self._epoch_start = None, 0, -1, None
            return
        self.rng.bit_generator.state = d["epoch_start_rng"]
        self.epoch = int(d["epoch"]) - 1
        self._new_epoch()
        self._pos = int(d["pos"])


def make_sampler(batching: str, split: Split, batch_size: int, days_per_batch: int = 4, seed: int = 0,
                 must_include_days=None, n_days: int | None = None) -> _Sampler:
    """The training sampler that ``data.batching`` names: days | random | epochs (see the module docstring)."""
    if batching == "days":
        return DayBatchSampler(split, batch_size, days_per_batch, seed=seed, must_include_days=must_include_days,
                               n_days=n_days)
    if must_include_days:
        raise ValueError(f"data.must_include_days needs data.batching: days (got {batching!r})")
    if batching == "random":
        return RandomBatchSampler(split, batch_size, seed=seed)
    if batching == "epochs":
        return EpochBatchSampler(split, batch_size, seed=seed)
    raise ValueError(f"data.batching must be 'days', 'random' or 'epochs', got {batching!r}")
