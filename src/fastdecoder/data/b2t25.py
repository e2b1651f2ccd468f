"""The b2t25 HDF5 format (Card et al. 2024, Neuroprosthetics-Lab/nejm-brain-to-text).

A folder holding one folder per session (`t15.YYYY.MM.DD/`), each with up to three files data_train.hdf5,
data_val.hdf5, data_test.hdf5. Each trial is a group 'trial_%04d' with datasets 'input_features' (T, 512) float32,
'seq_class_ids' (zero-padded ids), 'transcription' (ASCII codes, 0-terminated, padded) and attrs 'n_time_steps',
'seq_len', 'block_num', 'trial_num', 'session', 'sentence_label'. Test files carry no labels (no 'seq_class_ids',
'transcription', 'seq_len'). Day index = position of the session folder in sorted order, the same in every split.
"""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from fastdecoder.data.dataset import (DataFormatError, Dataset, Split, as_count, check_features, decode_ascii,
                                      unpad_targets)
from fastdecoder.limits import HDF5_MAX_RATIO, HDF5_SLACK_BYTES, LimitError

#: normalised split name -> file name inside a session folder
SPLIT_FILES = {"train": "data_train.hdf5", "val": "data_val.hdf5", "test": "data_test.hdf5"}
#: padded length of 'seq_class_ids' and 'transcription' in the reference files
PAD = 500


def trial_id(session: str, split: str, group: str) -> str:
    """Readable trial id, e.g. 't15.2023.08.11/data_val.hdf5/trial_0003'."""
    return f"{session}/{SPLIT_FILES[split]}/{group}"


def _group_order(name: str):
    m = re.fullmatch(r"trial_(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def session_folders(root: Path) -> list[Path]:
    """Sorted subfolders of `root` that hold at least one data_{train,val,test}.hdf5."""
    return sorted((p for p in root.iterdir() if p.is_dir() and any((p / f).is_file() for f in SPLIT_FILES.values())),
                  key=lambda p: p.name)


def no_sessions_message(root: Path) -> str:
    """Error text for a folder without session folders, pointing at a subfolder that has them, if any."""
    hint = next((p for p in sorted(root.iterdir()) if p.is_dir() and session_folders(p)), None)
    msg = (f"{root}: no session folders found (expected subfolders like t15.2023.08.11/ holding data_train.hdf5 / "
           "data_val.hdf5 / data_test.hdf5)")
    return msg + (f"; did you mean {hint}?" if hint is not None else "")


class _Reader:
    """Accumulates the trials of one split over sessions, with cross-session checks."""

    def __init__(self, split: str) -> None:
        self.split = split
        self.features: list[np.ndarray] = []
        self.targets: list[np.ndarray | None] = []
        self.texts: list[str | None] = []
        self.ids: list[str] = []
        self.day: list[int] = []
        self.block: list[int | None] = []
        self.trial_num: list[int | None] = []


class HDF5LimitError(DataFormatError, LimitError):
    """An HDF5 dataset declares more data than the file stores for it (or stores it outside the file)."""


def _read_dataset(group: h5py.Group, name: str, where: str, stored: dict) -> np.ndarray:
    """``group[name][()]`` once its declared size is justified by the bytes the file stores for it: at most
    `HDF5_MAX_RATIO` times its stored (compressed) bytes plus `HDF5_SLACK_BYTES`; the stored bytes of all datasets
    read from one file may not exceed the file's size (``stored['left']``: chunks shared by several datasets count
    each time). Unwritten chunks store nothing, so a huge dataset declared but never written is refused here."""
    ds = group[name]
    what = f"{where}: '{name}'"
    if not isinstance(ds, h5py.Dataset):
        raise DataFormatError(f"{what} is not a dataset")
    if ds.is_virtual or ds.external:
        raise HDF5LimitError(f"{what} keeps its data outside this file (virtual or external storage), which a "
                             "b2t25 file never does")
    if ds.dtype.kind == "O" and (ds.size or 0) > 1:  # elements may share one stored string: not countable
        raise HDF5LimitError(f"{what} is an array of variable-length values, which a b2t25 file never holds")
    declared = int(ds.size or 0) * ds.dtype.itemsize
    held = int(ds.id.get_storage_size())
    stored["left"] -= held
    if stored["left"] < 0:
        raise HDF5LimitError(f"{what}: the datasets read so far claim more stored bytes than the "
                             f"{stored['size']}-byte file has; the file is corrupt or crafted")
    if declared > HDF5_MAX_RATIO * held + HDF5_SLACK_BYTES:
        raise HDF5LimitError(f"{what} declares shape {ds.shape} {ds.dtype} ({declared} bytes) but the file stores "
                             f"only {held} bytes of it (more than {HDF5_MAX_RATIO}x compression, or data never "
                             "written); the file is corrupt or crafted")
    return ds[()]


def _read_file(fpath: Path, session: str, day: int, reader: _Reader, width: dict) -> None:
    size = fpath.stat().st_size
    stored = {"size": size, "left": size}
    try:
        with h5py.File(fpath, "r") as f:
            for gname in sorted(f.keys(), key=_group_order):
                g = f[gname]
                where = f"{fpath}: trial {gname}"
                if not isinstance(g, h5py.Group):
                    raise DataFormatError(f"{where} is not a group (expected one group 'trial_%04d' per trial)")
                if "input_features" not in g:
                    raise DataFormatError(f"{where} has no 'input_features' dataset (members: {sorted(g.keys())})")
                x = _read_dataset(g, "input_features", where, stored)
                if x.ndim == 2 and width.get("n") is not None and x.shape[1] != width["n"]:
                    what = ("ragged feature widths within session" if width["session"] == session
                            else "wrong channel count between sessions")
                    raise DataFormatError(f"{where}: {x.shape[1]} feature channels but session {width['session']} "
                                          f"has {width['n']} ({what})")
                x = check_features(x, where)
                width.setdefault("n", x.shape[1])
                width.setdefault("session", session)
                attrs = g.attrs
                steps = as_count(attrs["n_time_steps"], "attribute 'n_time_steps'", where) \
                    if "n_time_steps" in attrs else x.shape[0]
                if steps != x.shape[0]:
                    raise DataFormatError(f"{where}: n_time_steps says {steps} bins but 'input_features' has "
                                          f"{x.shape[0]}")
                y = None
                if "seq_class_ids" in g:
                    ids = _read_dataset(g, "seq_class_ids", where, stored).reshape(-1)
                    if "seq_len" in attrs:
                        y = unpad_targets(ids, attrs["seq_len"], where, "attribute 'seq_len'")
                    else:
                        zeros = np.flatnonzero(ids == 0)
                        y = unpad_targets(ids, int(zeros[0]) if zeros.size else ids.shape[0], where,
                                          "the zero padding (no 'seq_len' attribute)")
                if "transcription" in g:
                    text = decode_ascii(_read_dataset(g, "transcription", where, stored),
                                        f"{where}: 'transcription'")
                elif "sentence_label" in attrs:
                    text = decode_ascii(attrs["sentence_label"], f"{where}: attribute 'sentence_label'")
                else:
                    text = None
                reader.features.append(x)
                reader.targets.append(y)
                reader.texts.append(text)
                reader.ids.append(trial_id(session, reader.split, gname))
                reader.day.append(day)
                reader.block.append(as_count(attrs["block_num"], "attribute 'block_num'", where)
                                    if "block_num" in attrs else None)
                reader.trial_num.append(as_count(attrs["trial_num"], "attribute 'trial_num'", where)
                                        if "trial_num" in attrs else None)
    except DataFormatError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{fpath}: cannot read this HDF5 file (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc


def _finish(reader: _Reader) -> Split | None:
    if not reader.features:
        return None
    labeled = [y is not None for y in reader.targets]
    if any(labeled) and not all(labeled):
        k = labeled.index(False)
        raise DataFormatError(f"trial {reader.ids[k]} has no 'seq_class_ids' while other {reader.split} trials do "
                              "(a split must be all labeled or all unlabeled)")
    texts = reader.texts if any(t is not None for t in reader.texts) else None
    return Split(features=reader.features, targets=list(reader.targets) if all(labeled) else None,
                 day=np.asarray(reader.day, np.int64), trial_ids=reader.ids,
                 transcriptions=[t or "" for t in texts] if texts is not None else None,
                 block=None if any(b is None for b in reader.block) else np.asarray(reader.block, np.int64),
                 trial_num=(None if any(t is None for t in reader.trial_num)
                            else np.asarray(reader.trial_num, np.int64)))


def load_b2t25(path: str | Path) -> Dataset:
    """Load a folder of b2t25 session folders into a Dataset."""
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder (expected a folder of b2t25 session folders)")
    if any((root / f).is_file() for f in SPLIT_FILES.values()):
        raise DataFormatError(f"{root} is a single session folder; pass the folder that holds the session folders "
                              "(day indices are defined over all sessions)")
    sessions = session_folders(root)
    if not sessions:
        raise DataFormatError(no_sessions_message(root))
    width: dict = {}
    splits: dict[str, Split] = {}
    for split, fname in SPLIT_FILES.items():
        reader = _Reader(split)
        for day, sess in enumerate(sessions):
            if (sess / fname).is_file():
                _read_file(sess / fname, sess.name, day, reader, width)
        done = _finish(reader)
        if done is not None:
            splits[split] = done
    if not splits:
        raise DataFormatError(f"{root}: the session files hold no trials")
    return Dataset(format="b2t25", n_features=int(width["n"]), n_days=len(sessions),
                   day_names=[s.name for s in sessions], splits=splits, path=str(root))


def _padded(values: np.ndarray, pad_to: int) -> np.ndarray:
    out = np.zeros(max(pad_to, values.shape[0] + 1), dtype=np.int32)
    out[: values.shape[0]] = values
    return out


def write_b2t25(folder: str | Path, dataset: Dataset, pad_to: int = PAD) -> Path:
    """Write `dataset` as b2t25 session folders under `folder` (one folder per day name; a file per split that has
    trials on that day; trials numbered trial_0000.. in split order). Unlabeled splits get no label members."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for day, session in enumerate(dataset.day_names):
        for split_name, fname in SPLIT_FILES.items():
            split = dataset.splits.get(split_name)
            if split is None:
                continue
            idx = np.flatnonzero(split.day == day)
            if idx.size == 0:
                continue
            (root / session).mkdir(exist_ok=True)
            with h5py.File(root / session / fname, "w") as f:
                for k, i in enumerate(idx):
                    g = f.create_group(f"trial_{k:04d}")
                    x = split.features[i]
                    g.create_dataset("input_features", data=np.asarray(x, dtype=np.float32))
                    g.attrs["n_time_steps"] = np.int64(x.shape[0])
                    g.attrs["block_num"] = np.int64(split.block[i] if split.block is not None else 0)
                    g.attrs["trial_num"] = np.int64(split.trial_num[i] if split.trial_num is not None else k)
                    g.attrs["session"] = session
                    if split.targets is not None:
                        y = split.targets[i]
                        g.create_dataset("seq_class_ids", data=_padded(y, pad_to))
                        g.attrs["seq_len"] = np.int64(y.shape[0])
                        text = split.transcriptions[i] if split.transcriptions is not None else ""
                        codes = np.frombuffer(text.encode("ascii", errors="replace"), dtype=np.uint8)
                        g.create_dataset("transcription", data=_padded(codes.astype(np.int32), pad_to))
                        g.attrs["sentence_label"] = text
    return root
