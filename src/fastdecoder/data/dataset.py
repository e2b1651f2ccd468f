"""In-memory dataset types shared by both file formats, and the checks every loader applies.

A `Dataset` holds up to three `Split`s ("train", "val", "test"); a `Split` holds per-trial arrays:
features (T_i, C) float32 in 20 ms bins, targets (L_i,) int64 phoneme ids in 1..40 (no blanks, no padding), and
the day (session) index of each trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from fastdecoder.errors import UserError
from fastdecoder.phonemes import N_CLASSES

#: normalised split names, in order
SPLIT_NAMES = ("train", "val", "test")
#: smallest and largest valid target id (1..39 phonemes, 40 SIL; 0 is the CTC blank and never a target)
MIN_TARGET, MAX_TARGET = 1, N_CLASSES - 1


class DataFormatError(UserError):
    """A data file or folder is missing, malformed, or holds values no valid dataset contains."""


@dataclass(eq=False)
class Split:
    """One split of a dataset, all in memory.

    features: per trial (T_i, C) float32; targets: per trial (L_i,) int64 ids in 1..40, or None when the split has
    no labels; day: (n,) int64 day index; trial_ids: a readable id per trial; transcriptions: per trial text or
    None; block: (n,) int64 recording block per trial where the format stores it, else None.
    """

    features: list[np.ndarray]
    targets: list[np.ndarray] | None
    day: np.ndarray
    trial_ids: list[str]
    transcriptions: list[str] | None = None
    block: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.day = np.asarray(self.day, dtype=np.int64).reshape(-1)
        if self.block is not None:
            self.block = np.asarray(self.block, dtype=np.int64).reshape(-1)
        n = len(self.features)
        for name, seq in (("targets", self.targets), ("day", self.day), ("trial_ids", self.trial_ids),
                          ("transcriptions", self.transcriptions), ("block", self.block)):
            if seq is not None and len(seq) != n:
                raise DataFormatError(f"split has {n} feature arrays but {len(seq)} {name}")

    def __len__(self) -> int:
        return len(self.features)

    @cached_property
    def lengths(self) -> np.ndarray:
        """(n,) int64 number of time bins of each trial."""
        return np.fromiter((f.shape[0] for f in self.features), dtype=np.int64, count=len(self.features))

    @cached_property
    def target_lengths(self) -> np.ndarray:
        """(n,) int64 number of target phonemes of each trial (zeros if unlabeled)."""
        if self.targets is None:
            return np.zeros(len(self), dtype=np.int64)
        return np.fromiter((t.shape[0] for t in self.targets), dtype=np.int64, count=len(self.targets))


@dataclass(eq=False)
class Dataset:
    """A whole dataset: `format` "b2t24" | "b2t25", `n_features` channels C, `n_days` sessions named `day_names`
    (index = day index), and its non-empty splits under "train" / "val" / "test"."""

    format: str
    n_features: int
    n_days: int
    day_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if len(self.day_names) != self.n_days:
            raise DataFormatError(f"{self.n_days} days but {len(self.day_names)} day names")
        for name, split in self.splits.items():
            if name not in SPLIT_NAMES:
                raise DataFormatError(f"unknown split name {name!r}; expected one of {SPLIT_NAMES}")
            if len(split) and (split.day.min() < 0 or split.day.max() >= self.n_days):
                raise DataFormatError(f"split {name!r} has day indices outside 0..{self.n_days - 1}")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return (f"Dataset(format={self.format!r}, n_features={self.n_features}, n_days={self.n_days}, "
                f"splits: {sizes})")


def check_features(x, where: str, n_features: int | None = None) -> np.ndarray:
    """Validate one trial's features and return them as a (T, C) float32 array.

    Raises DataFormatError naming `where` for a wrong rank, non-numeric dtype, wrong width, empty trial or NaN/Inf.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataFormatError(f"{where}: features must be a (time, channels) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataFormatError(f"{where}: features have non-numeric dtype {x.dtype}")
    if x.shape[0] == 0:
        raise DataFormatError(f"{where}: trial has no time bins")
    if n_features is not None and x.shape[1] != n_features:
        raise DataFormatError(f"{where}: {x.shape[1]} feature channels, expected {n_features} like the trials "
                              "before it (ragged feature widths)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        t, c = np.argwhere(~finite)[0]
        raise DataFormatError(f"{where}: features contain NaN/Inf ({int((~finite).sum())} values; first at "
                              f"time bin {t}, channel {c})")
    return x


def check_targets(ids, where: str) -> np.ndarray:
    """Validate one trial's phoneme ids and return them as (L,) int64; every id must lie in 1..40."""
    y = np.asarray(ids)
    if y.ndim != 1:
        raise DataFormatError(f"{where}: targets must be a 1-D id sequence, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(y == np.round(y)):
            raise DataFormatError(f"{where}: targets have non-integer dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < MIN_TARGET) | (y > MAX_TARGET)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where}: target id {int(y[k])} at position {k} is outside {MIN_TARGET}..{MAX_TARGET} "
                              "(0 is the CTC blank and never a target; padding must lie beyond the label length)")
    return y


def unpad_targets(padded, length, where: str) -> np.ndarray:
    """Cut a zero-padded id array to its label `length` and validate it; length > padded size is an error."""
    padded = np.asarray(padded).reshape(-1)
    length = int(length)
    if length < 0:
        raise DataFormatError(f"{where}: negative label length {length}")
    if length > padded.shape[0]:
        raise DataFormatError(f"{where}: label length {length} is larger than the padded length {padded.shape[0]}")
    return check_targets(padded[:length], where)


def decode_ascii(codes) -> str:
    """ASCII codes, 0-terminated and padded, -> str (bytes and str pass through, stripped)."""
    if isinstance(codes, bytes):
        return codes.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    if isinstance(codes, str):
        return codes.strip()
    arr = np.asarray(codes)
    if arr.dtype.kind in "US":
        return decode_ascii(arr.reshape(-1)[0].item() if arr.size else "")
    arr = arr.reshape(-1).astype(np.int64)
    zeros = np.flatnonzero(arr == 0)
    if zeros.size:
        arr = arr[: zeros[0]]
    return "".join(map(chr, arr.tolist())).strip()
