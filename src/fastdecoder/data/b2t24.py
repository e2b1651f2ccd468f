"""The b2t24 pickle format (Willett et al. 2023, as written by cffan/neural_seq_decoder's formatCompetitionData).

A dict {'train', 'test', 'competition'}, each a list over days of per-day dicts with 'sentenceDat' (list of (T, 256)
float arrays, z-scored per block), 'phonemes' (int ids zero-padded to 500: a list of arrays or one 2-D array),
'phoneLens', 'transcriptions', 'timeSeriesLens'. Splits are renamed train -> "train", test -> "val",
competition -> "test". 'competition' has either one entry per day (empty lists on days without held-out data) or,
as the reference notebook writes it, entries only for the 15 days that have held-out data
(`COMPETITION_DAYS`).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fastdecoder.data.dataset import (DataFormatError, Dataset, Split, as_count, check_features, decode_ascii,
                                      unpad_targets)
from fastdecoder.data.safe_pickle import safe_load
from fastdecoder.phonemes import SIL

#: file key -> normalised split name
SPLIT_KEYS = {"train": "train", "test": "val", "competition": "test"}
#: day indices of the 15 'competition' entries when the pickle lists only days with held-out data (24 days)
COMPETITION_DAYS = (4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19, 20)
#: padded length of the 'phonemes' arrays in the reference files
PHONEME_PAD = 500


def _day_list(obj: Any, key: str, path: Path) -> list[dict]:
    if not isinstance(obj, (list, tuple)):
        raise DataFormatError(f"{path}: '{key}' must be a list of per-day dicts, got {type(obj).__name__}")
    for d, day in enumerate(obj):
        if not isinstance(day, dict):
            raise DataFormatError(f"{path}: '{key}'[{d}] must be a dict, got {type(day).__name__}")
    return list(obj)


def _rows(value: Any) -> list:
    """A list/tuple/object array/2-D or 3-D array -> list of per-trial entries."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return [] if value.size == 0 and value.ndim <= 1 else list(value)
    return list(value)


def _read_day(day: dict, key: str, d: int, path: Path, n_features: int | None):
    """One per-day dict -> (features, targets or None, transcriptions, trial ids)."""
    where_day = f"{path}: '{key}' day {d}"
    if "sentenceDat" not in day:
        raise DataFormatError(f"{where_day} has no 'sentenceDat' (keys: {sorted(day)})")
    raw = _rows(day["sentenceDat"])
    n = len(raw)
    ids = [f"b2t24/day{d:02d}/{key}/{i}" for i in range(n)]
    feats = []
    for i, x in enumerate(raw):
        x = check_features(x, f"{path}: trial {ids[i]}", n_features)
        n_features = x.shape[1]
        feats.append(x)
    lens = day.get("timeSeriesLens")
    if lens is not None and n:
        lens = np.asarray(lens).reshape(-1)
        if lens.shape[0] != n:
            raise DataFormatError(f"{where_day}: {lens.shape[0]} 'timeSeriesLens' for {n} trials")
        for i, (x, t) in enumerate(zip(feats, lens)):
            t = as_count(t, "'timeSeriesLens'", f"{path}: trial {ids[i]}")
            if t != x.shape[0]:
                raise DataFormatError(f"{path}: trial {ids[i]}: timeSeriesLens says {t} bins but "
                                      f"'sentenceDat' has {x.shape[0]}")
    texts_raw = _rows(day.get("transcriptions"))
    if texts_raw and len(texts_raw) != n:
        raise DataFormatError(f"{where_day}: {len(texts_raw)} transcriptions for {n} trials")
    texts = [decode_ascii(t, f"{path}: trial {ids[i]}: 'transcriptions'") for i, t in enumerate(texts_raw)] \
        if texts_raw else [""] * n
    targets = None
    if n and "phonemes" in day and "phoneLens" in day:
        padded = _rows(day["phonemes"])
        plens = np.asarray(day["phoneLens"]).reshape(-1)
        if len(padded) != n or plens.shape[0] != n:
            raise DataFormatError(f"{where_day}: {len(padded)} 'phonemes' and {plens.shape[0]} 'phoneLens' "
                                  f"for {n} trials")
        targets = [unpad_targets(p, k, f"{path}: trial {ids[i]}", "'phoneLens'")
                   for i, (p, k) in enumerate(zip(padded, plens))]
    return feats, targets, texts, ids, n_features


def _looks_unlabeled(targets: list[np.ndarray], texts: list[str]) -> bool:
    """Held-out data formatted with empty sentences: no text, and at most the single trailing SIL as 'label'."""
    return all(not t for t in texts) and all(y.size == 0 or (y.size == 1 and y[0] == SIL) for y in targets)


def load_b2t24(path: str | Path) -> Dataset:
    """Load a b2t24 pickle (read with the restricted unpickler) into a Dataset."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file (expected a b2t24 pickle)")
    data = safe_load(path)
    if not isinstance(data, dict) or "train" not in data:
        got = f"a dict with keys {sorted(map(str, data))}" if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(f"{path}: expected a dict with keys 'train', 'test', 'competition' "
                              f"(a b2t24 pickle), got {got}")
    train_days = _day_list(data["train"], "train", path)
    n_days = len(train_days)
    if n_days == 0:
        raise DataFormatError(f"{path}: 'train' lists no days")
    splits: dict[str, Split] = {}
    n_features: int | None = None
    for key, name in SPLIT_KEYS.items():
        days = _day_list(data.get(key, []), key, path)
        if not days:
            continue
        if len(days) == n_days:
            day_index = list(range(n_days))
        elif key == "competition" and n_days == 24 and len(days) == len(COMPETITION_DAYS):
            day_index = list(COMPETITION_DAYS)
        else:
            raise DataFormatError(f"{path}: '{key}' lists {len(days)} days but 'train' lists {n_days}; cannot tell "
                                  "which day each entry belongs to")
        feats, targets, texts, ids, day = [], [], [], [], []
        unlabeled_days = []
        for d, entry in zip(day_index, days):
            f, t, s, i, n_features = _read_day(entry, key, d, path, n_features)
            entry.clear()  # drop the file's (often float64) arrays now that float32 copies exist: lower peak memory
            if f and t is None:
                unlabeled_days.append(d)
            feats += f
            targets += t or []
            texts += s
            ids += i
            day += [d] * len(f)
        if not feats:
            continue
        labeled = not unlabeled_days
        if unlabeled_days and targets:
            raise DataFormatError(f"{path}: '{key}' has 'phonemes'/'phoneLens' on some days but not on day "
                                  f"{unlabeled_days[0]}")
        if labeled and _looks_unlabeled(targets, texts) and key == "competition":
            labeled = False
        has_text = any(texts)
        splits[name] = Split(features=feats, targets=targets if labeled else None, day=np.asarray(day, np.int64),
                             trial_ids=ids, transcriptions=texts if has_text else None)
    if not splits:
        raise DataFormatError(f"{path}: the pickle holds no trials")
    return Dataset(format="b2t24", n_features=int(n_features), n_days=n_days,
                   day_names=[f"day{d:02d}" for d in range(n_days)], splits=splits, path=str(path))


def write_b2t24(path: str | Path, dataset: Dataset, pad_to: int = PHONEME_PAD) -> Path:
    """Write `dataset` as a b2t24 pickle at `path` (one per-day dict per day in every split key; days without
    trials get empty lists). Unlabeled splits are written with empty texts and zero-length labels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[dict]] = {}
    for key, name in SPLIT_KEYS.items():
        split = dataset.splits.get(name)
        days = []
        for d in range(dataset.n_days):
            idx = np.flatnonzero(split.day == d) if split is not None else np.zeros(0, np.int64)
            feats = [split.features[i] for i in idx]
            tgts = [split.targets[i] for i in idx] if split is not None and split.targets is not None else \
                [np.zeros(0, np.int64)] * len(idx)
            width = max([pad_to] + [t.shape[0] for t in tgts])
            padded = []
            for t in tgts:
                p = np.zeros(width, dtype=np.int32)
                p[: t.shape[0]] = t
                padded.append(p)
            texts = [split.transcriptions[i] for i in idx] if split is not None and split.transcriptions else \
                [""] * len(idx)
            days.append({
                "sentenceDat": feats,
                "transcriptions": texts,
                "phonemes": padded,
                "timeSeriesLens": np.asarray([f.shape[0] for f in feats], dtype=np.int64),
                "phoneLens": np.asarray([t.shape[0] for t in tgts], dtype=np.int64),
            })
        out[key] = days
    with open(path, "wb") as fh:
        pickle.dump(out, fh, protocol=4)
    return path
