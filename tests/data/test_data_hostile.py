"""Hostile data files: pickle memory bombs, ids that disagree with the stated label length, attributes
and character codes of the wrong kind, a validation split that is missing. Every one is a DataFormatError whose
message names the file and trial (or the config key), with nothing allocated beyond what the file holds."""
from __future__ import annotations

import pickle
import struct
import tracemalloc

import h5py
import numpy as np
import pytest

from fastdecoder.cli import main
from fastdecoder.data import (DataFormatError, Dataset, Split, SynthSpec, UnsafePickleError, load_dataset, safe_load,
                              write_synthetic)
from fastdecoder.data.dataset import decode_ascii, training_splits

from test_data_formats import _first as _session_file

SMALL = SynthSpec(n_days=2, trials_per_day=4, val_trials_per_day=2, test_trials_per_day=1, n_features=8,
                  vocab_size=10, seed=5)


# ---------------------------------------------------------------- pickle opcodes, written by hand


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


_P2 = b"\x80\x02"
_RECONSTRUCT = _global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")

BOMBS = {
    # numpy.ndarray((10**7,), 'f8'): 80 MB from a 33-byte file
    "ndarray_call": _P2 + _global("numpy", "ndarray") + _int(10**7) + b"\x85" + _text("f8") + b"\x86R.",
    # _reconstruct(ndarray, (10**7,), 'O'): an object array numpy fills with None (80 MB written)
    "reconstruct_shape": _P2 + _RECONSTRUCT + _int(10**7) + b"\x85" + _text("O") + b"\x87R.",
    # bytearray(10**8): 100 MB of zeros
    "bytearray_size": _P2 + _global("builtins", "bytearray") + _int(10**8) + b"\x85R.",
    # a 10 GB BINBYTES8 / BYTEARRAY8 length in a 14-byte file
    "binbytes8_length": b"\x80\x04\x8e" + struct.pack("<Q", 10**10) + b"xx.",
    "bytearray8_length": b"\x80\x05\x96" + struct.pack("<Q", 10**10) + b"xx.",
    # numpy.ndarray((1,), a structured dtype with a (10**7,) subarray field): 80 MB
    "subarray_dtype": (_P2 + _global("numpy", "ndarray") + _int(1) + b"\x85" + _global("numpy", "dtype") + b"("
                       + _text("f8") + _int(10**7) + b"\x85\x86l\x85R\x86R."),
    # an object array whose shape says 10**6 elements but whose stored list holds 1 (numpy 2.x segfaults on it)
    "short_object_list": (_P2 + _RECONSTRUCT + _int(0) + b"\x85" + _text("O") + b"\x87R("
                          + _int(1) + _int(10**6) + b"\x85" + _global("numpy", "dtype") + _text("O8")
                          + b"\x89\x88\x87R\x89]Natb."),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_pickle_bomb_refused_before_allocating(tmp_path, name):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(BOMBS[name])
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match=rf"{name}\.pkl") as err:
            safe_load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, (name, peak, str(err.value))
    assert any(w in str(err.value) for w in ("cannot hold", "remain in the file", "only", "stores")), str(err.value)


def test_many_arrays_cannot_exceed_the_file_size(tmp_path):
    """Each array alone fits in the file, all of them together cannot: the budget is per file, not per array."""
    n_bytes, copies = 3000, 400
    body = (_P2 + _global("numpy.core.multiarray", "_reconstruct") + b"q\x00" + _global("numpy", "ndarray")
            + _int(n_bytes) + b"\x85" + _text("b") + b"\x87q\x01(" + b"h\x00h\x01R" * copies + b"l.")
    assert len(body) < n_bytes * 2
    path = tmp_path / "copies.pkl"
    path.write_bytes(body)
    with pytest.raises(UnsafePickleError, match=r"cannot hold that much data"):
        safe_load(path)


def test_array_data_must_match_its_shape(tmp_path):
    ok = np.arange(4, dtype=np.float64)
    data = pickle.dumps(ok, protocol=2)
    assert safe_load_bytes(tmp_path, data).tolist() == ok.tolist()
    # the stored shape (4,) patched to (5,): the data no longer matches
    bad = data.replace(b"K\x04\x85", b"K\x05\x85", 1)
    assert bad != data
    with pytest.raises(UnsafePickleError, match=r"needs 40 bytes of data but stores 32 bytes"):
        safe_load_bytes(tmp_path, bad)


def safe_load_bytes(tmp_path, data: bytes):
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    return safe_load(path)


def test_data_info_cli_refuses_the_bomb(tmp_path, capsys):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(BOMBS["reconstruct_shape"])
    assert main(["data", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bomb.pkl" in err and "cannot hold" in err and "Traceback" not in err


# ---------------------------------------------------------------- ids past the stated label length


@pytest.fixture
def dir25(tmp_path):
    return write_synthetic(tmp_path / "d25", "b2t25", SMALL)


def test_b2t25_ids_past_seq_len(dir25):
    f = _session_file(dir25)
    with h5py.File(f, "r+") as h:
        n = int(h["trial_0001"].attrs["seq_len"])
        h["trial_0001"].attrs["seq_len"] = n - 2  # the file still stores n ids
    with pytest.raises(DataFormatError, match=rf"{f.name}: trial trial_0001: label length {n - 2} "
                                              r"\(attribute 'seq_len'\) but 2 nonzero ids follow it"):
        load_dataset(dir25)


def test_b2t25_ids_after_the_padding_without_seq_len(dir25):
    f = _session_file(dir25, session=1)
    with h5py.File(f, "r+") as h:
        g = h["trial_0000"]
        del g.attrs["seq_len"]
        ids = g["seq_class_ids"][()]
        n = int(np.flatnonzero(ids == 0)[0])
        g["seq_class_ids"][n + 3] = 7  # an id behind a zero gap
    with pytest.raises(DataFormatError, match=rf"trial trial_0000: label length {n} \(the zero padding .*1 nonzero "
                                              rf"ids follow it \(the last at position {n + 3}\)"):
        load_dataset(dir25)


@pytest.fixture
def raw24(tmp_path):
    path = write_synthetic(tmp_path / "s.pkl", "b2t24", SMALL)
    with open(path, "rb") as fh:
        return pickle.load(fh)  # our own file: trusted


def _load24(tmp_path, raw):
    p = tmp_path / "edited.pkl"
    p.write_bytes(pickle.dumps(raw))
    return load_dataset(p)


def test_b2t24_ids_past_phonelens(tmp_path, raw24):
    raw24["train"][1]["phoneLens"][2] -= 1
    with pytest.raises(DataFormatError, match=r"edited.pkl: trial b2t24/day01/train/2: label length \d+ "
                                              r"\('phoneLens'\) but 1 nonzero ids follow it"):
        _load24(tmp_path, raw24)


# ---------------------------------------------------------------- attributes and codes of the wrong kind


@pytest.mark.parametrize("attr,value", [("n_time_steps", "abc"), ("seq_len", 2.5), ("block_num", "x"),
                                        ("seq_len", -3)])
def test_b2t25_bad_attribute_names_trial(dir25, attr, value):
    with h5py.File(_session_file(dir25, "data_val.hdf5"), "r+") as h:
        h["trial_0001"].attrs[attr] = value
    with pytest.raises(DataFormatError, match=rf"data_val.hdf5: trial trial_0001: .*'{attr}'.* must be a "
                                              r"non-negative integer, got"):
        load_dataset(dir25)


def test_b2t25_transcription_code_out_of_range(dir25):
    with h5py.File(_session_file(dir25), "r+") as h:
        h["trial_0002/transcription"][1] = 0x110000
    with pytest.raises(DataFormatError, match=r"trial trial_0002: 'transcription': transcription code 1114112 at "
                                              r"position 1 is not a character code \(expected integers in "
                                              r"0\.\.0x10ffff"):
        load_dataset(dir25)


def test_b2t24_transcription_codes_and_lengths(tmp_path, raw24):
    raw24["test"][0]["transcriptions"][1] = np.array([104, -1, 0], dtype=np.int32)
    with pytest.raises(DataFormatError, match=r"trial b2t24/day00/test/1: 'transcriptions': transcription code -1"):
        _load24(tmp_path, raw24)
    raw24["test"][0]["transcriptions"][1] = "ok"
    raw24["train"][0]["timeSeriesLens"] = np.array(["x"] * len(raw24["train"][0]["sentenceDat"]))
    with pytest.raises(DataFormatError, match=r"trial b2t24/day00/train/0: 'timeSeriesLens' must be a non-negative "
                                              r"integer, got"):
        _load24(tmp_path, raw24)


def test_decode_ascii_still_reads_text_and_codes():
    assert decode_ascii(np.array([104, 105, 0, 0, 120], dtype=np.int32)) == "hi"
    assert decode_ascii(b"hi\0junk") == "hi" and decode_ascii(" hi ") == "hi"
    assert decode_ascii(np.array([0x263A, 0])) == "\u263a"


# ---------------------------------------------------------------- the splits a run trains and validates on


def _dataset(splits: dict, n_days: int = 1) -> Dataset:
    return Dataset(format="b2t25", n_features=2, n_days=n_days, day_names=[f"d{i}" for i in range(n_days)],
                   splits=splits, path="/data/here")


def _split(targets, n: int = 2) -> Split:
    return Split(features=[np.zeros((5, 2), np.float32)] * n, targets=targets, day=np.zeros(n, np.int64),
                 trial_ids=[f"t{i}" for i in range(n)])


def test_validation_split_must_exist():
    labeled = [np.array([1, 40])] * 2
    ds = _dataset({"train": _split(labeled), "test": _split(None)})
    with pytest.raises(DataFormatError, match=r"data.val_split is 'val' but /data/here has no such split \(splits "
                                              r"present: train, test\).*data.val_split: null"):
        training_splits(ds, "val")
    with pytest.raises(DataFormatError, match=r"data.val_split 'test' of /data/here has no labels \(labeled splits: "
                                              r"train\)"):
        training_splits(ds, "test")
    train, val = training_splits(ds, None)
    assert train is ds.splits["train"] and val is None
    with pytest.raises(DataFormatError, match=r"has no training split \(splits present: test\)"):
        training_splits(_dataset({"test": _split(None)}), None)


def test_labels_checked_against_n_classes():
    ds = _dataset({"train": _split([np.array([1, 40]), np.array([3])]), "val": _split([np.array([2])] * 2)})
    train, val = training_splits(ds, "val", n_classes=41)
    assert (train, val) == (ds.splits["train"], ds.splits["val"])
    with pytest.raises(DataFormatError, match=r"trial t0 \(model.n_classes = 40\): target id 40 at position 1 is "
                                              r"outside 1..39"):
        training_splits(ds, "val", n_classes=40)


def test_train_cli_names_a_missing_validation_split(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  synthetic: {format: b2t25, n_days: 1, trials_per_day: 4, val_trials_per_day: 0,\n"
                   "              test_trials_per_day: 1, n_features: 8, vocab_size: 5}\n  days_per_batch: 1\n"
                   "model: {hidden_size: 8, num_layers: 1}\ntrain: {steps: 2, batch_size: 2, amp: none}\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.val_split is 'val'" in err and "splits present: train, test" in err, err
