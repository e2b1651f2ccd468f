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
    None; block: (n,) int64 recording block per trial where the format stores it, else None; trial_num: (n,) int64
    trial number within its block where the format stores it (b2t25 'trial_num'), else None.
    """

    features: list[np.ndarray]
    targets: list[np.ndarray] | None
    day: np.ndarray
    trial_ids: list[str]
    transcriptions: list[str] | None = None
    block: np.ndarray | None = None
    trial_num: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.day = np.asarray(self.day, dtype=np.int64).reshape(-1)
        if self.block is not None:
            self.block = np.asarray(self.block, dtype=np.int64).reshape(-1)
        if self.trial_num is not None:
            self.trial_num = np.asarray(self.trial_num, dtype=np.int64).reshape(-1)
        n = len(self.features)
        for name, seq in (("targets", self.targets), ("day", self.day), ("trial_ids", self.trial_ids),
                          ("transcriptions", self.transcriptions), ("block", self.block),
                          ("trial_num", self.trial_num)):
            if seq is not None and len(seq) != n:
                raise DataFormatError(f"split has {n} feature arrays but {len(seq)} {name}")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def labeled(self) -> bool:
        """True if the split has phoneme targets (a test split may not)."""
        return self.targets is not None

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


def check_targets(ids, where: str, n_classes: int = N_CLASSES) -> np.ndarray:
    """Validate one trial's phoneme ids and return them as (L,) int64; every id must lie in 1..n_classes - 1
    (1..40)."""
    y = np.asarray(ids)
    if y.ndim != 1:
        raise DataFormatError(f"{where}: targets must be a 1-D id sequence, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(y == np.round(y)):
            raise DataFormatError(f"{where}: targets have non-integer dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < MIN_TARGET) | (y >= n_classes)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where}: target id {int(y[k])} at position {k} is outside "
                              f"{MIN_TARGET}..{n_classes - 1} (0 is the CTC blank and never a target; padding must lie beyond the label length)")
    return y


def as_count(value, what: str, where: str) -> int:
    """A stored count or length (an int, integral float or size-1 array) -> int >= 0; DataFormatError naming
    `where` and `what` otherwise (a string, a fraction, a negative number, several values)."""
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataFormatError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    v = arr.reshape(-1)[0]
    if not np.isfinite(v) or v != np.round(v) or v < 0:
        raise DataFormatError(f"{where}: {what} must be a non-negative integer, got {v.item()!r}")
    return int(v)


def unpad_targets(padded, length, where: str, source: str = "stored") -> np.ndarray:
    """Cut a zero-padded id array to its label `length` (read from `source`, e.g. "attribute 'seq_len'") and
    validate it.

    A length beyond the padded size, or a nonzero id past the length (the file's ids disagree with its stated
    length), is a DataFormatError naming `where`: dropping those ids would train on a silently shortened label.
    """
    padded = np.asarray(padded).reshape(-1)
    length = as_count(length, f"label length ({source})", where)
    if length > padded.shape[0]:
        raise DataFormatError(f"{where}: label length {length} ({source}) is larger than the padded length "
                              f"{padded.shape[0]}")
    tail = np.flatnonzero(padded[length:])
    if tail.size:
        raise DataFormatError(f"{where}: label length {length} ({source}) but {tail.size} nonzero ids follow it (the "
                              f"last at position {length + int(tail[-1])}): the stored ids disagree with the stated "
                              "length (padding must be zeros)")
    return check_targets(padded[:length], where)


#: one past the largest Unicode code point (chr() refuses larger codes)
MAX_CODE_POINT = 0x110000


def decode_ascii(codes, where: str = "transcription") -> str:
    """ASCII codes, 0-terminated and padded, -> str (bytes and str pass through, stripped); codes outside
    0..0x10FFFF are a DataFormatError naming `where`."""
    if isinstance(codes, bytes):
        return codes.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
    if isinstance(codes, str):
        return codes.strip()
    arr = np.asarray(codes)
    if arr.dtype.kind in "US":
        return decode_ascii(arr.reshape(-1)[0].item() if arr.size else "", where)
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataFormatError(f"{where}: transcription must be text or character codes, got dtype {arr.dtype}")
    arr = arr.reshape(-1)
    zeros = np.flatnonzero(arr == 0)
    if zeros.size:
        arr = arr[: zeros[0]]
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0) | (arr >= MAX_CODE_POINT) | (arr != np.round(arr))) \
        if arr.size else arr
    if bad.size:
        k = int(bad[0])
        raise DataFormatError(f"{where}: transcription code {arr[k].item()!r} at position {k} is not a character code "
                              f"(expected integers in 0..{MAX_CODE_POINT - 1:#x}, 0-terminated)")
    return "".join(map(chr, arr.astype(np.int64).tolist())).strip()


def training_splits(dataset: Dataset, val_split: str | None, n_classes: int = N_CLASSES
                    ) -> tuple[Split, Split | None]:
    """The labeled training split and the labeled split named by config key ``data.val_split`` (None: no
    validation), checked against the model's ``n_classes``.

    Raises DataFormatError naming the key and the splits that exist when a split is missing or unlabeled, and naming
    the trial whose label id does not fit the model's classes.
    """
    where = dataset.path or "the dataset"
    present = ", ".join(dataset.splits) or "none"
    if "train" not in dataset.splits:
        raise DataFormatError(f"{where} has no training split (splits present: {present})")
    chosen = {"train": dataset.splits["train"]}
    if val_split is not None:
        if val_split not in dataset.splits:
            raise DataFormatError(f"data.val_split is {val_split!r} but {where} has no such split (splits present: "
                                  f"{present}); name one of them, or set data.val_split: null to train without "
                                  "validation")
        chosen[val_split] = dataset.splits[val_split]
    for name, split in chosen.items():
        key = "the training split" if name == "train" else f"data.val_split {name!r}"
        if split.targets is None:
            raise DataFormatError(f"{key} of {where} has no labels (labeled splits: "
                                  f"{', '.join(k for k, v in dataset.splits.items() if v.labeled) or 'none'})")
        for trial, y in zip(split.trial_ids, split.targets):
            check_targets(y, f"{where}: trial {trial} (model.n_classes = {n_classes})", n_classes)
    return chosen["train"], chosen.get(val_split)
