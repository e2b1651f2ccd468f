"""b2t24 pickle / b2t25 HDF5 loading: round trips, detection, the restricted unpickler, and bad-file errors."""
from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

from fastdecoder.data import (DataFormatError, SynthSpec, UnsafePickleError, detect_format, generate_synthetic,
                              load_dataset, safe_load, write_synthetic)
from fastdecoder.phonemes import SIL

SMALL = SynthSpec(n_days=3, trials_per_day=5, val_trials_per_day=3, test_trials_per_day=2, n_features=16,
                  vocab_size=20, seed=3)


def assert_same(a, b) -> None:
    """Two Datasets hold exactly the same trials."""
    assert (a.format, a.n_features, a.n_days, a.day_names) == (b.format, b.n_features, b.n_days, b.day_names)
    assert a.splits.keys() == b.splits.keys()
    for name, sa in a.splits.items():
        sb = b.splits[name]
        assert len(sa) == len(sb)
        assert sa.trial_ids == sb.trial_ids
        np.testing.assert_array_equal(sa.day, sb.day)
        for fa, fb in zip(sa.features, sb.features):
            assert fb.dtype == np.float32
            np.testing.assert_array_equal(fa, fb)
        assert (sa.targets is None) == (sb.targets is None)
        if sa.targets is not None:
            for ta, tb in zip(sa.targets, sb.targets):
                assert tb.dtype == np.int64
                np.testing.assert_array_equal(ta, tb)
        assert sa.transcriptions == sb.transcriptions


@pytest.fixture(scope="module")
def b2t24_file(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("b24") / "synth.pkl", "b2t24", SMALL)


@pytest.fixture(scope="module")
def b2t25_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("b25") / "hdf5_data_final", "b2t25", SMALL)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["b2t24", "b2t25"])
def test_round_trip(fmt, b2t24_file, b2t25_dir):
    path = b2t24_file if fmt == "b2t24" else b2t25_dir
    loaded = load_dataset(path)
    expected = generate_synthetic(SMALL, fmt)
    assert_same(expected, loaded)
    assert set(loaded.splits) == {"train", "val", "test"}
    assert len(loaded.splits["train"]) == SMALL.n_days * SMALL.trials_per_day
    assert len(loaded.splits["val"]) == SMALL.n_days * SMALL.val_trials_per_day
    test = loaded.splits["test"]
    assert len(test) == SMALL.n_days * SMALL.test_trials_per_day
    assert test.targets is None and test.transcriptions is None  # held-out data has no labels
    for split in loaded.splits.values():
        assert split.day.dtype == np.int64
        assert np.bincount(split.day, minlength=SMALL.n_days).tolist() == [len(split) // SMALL.n_days] * 3


def test_b2t25_layout(b2t25_dir):
    sessions = sorted(p.name for p in b2t25_dir.iterdir() if p.is_dir())
    assert sessions == load_dataset(b2t25_dir).day_names
    with h5py.File(b2t25_dir / sessions[1] / "data_val.hdf5", "r") as f:
        g = f["trial_0001"]
        assert g["input_features"].shape[1] == SMALL.n_features and g["input_features"].dtype == np.float32
        assert g["seq_class_ids"].shape == (500,) and g["transcription"].shape == (500,)
        ids = g["seq_class_ids"][()]
        assert ids[g.attrs["seq_len"] - 1] == SIL and not ids[g.attrs["seq_len"]:].any()
        assert g.attrs["n_time_steps"] == g["input_features"].shape[0]
        assert g.attrs["session"] == sessions[1]
        assert {"block_num", "trial_num", "sentence_label"} <= set(g.attrs)
    with h5py.File(b2t25_dir / sessions[0] / "data_test.hdf5", "r") as f:
        g = f["trial_0000"]
        assert "seq_class_ids" not in g and "transcription" not in g and "seq_len" not in g.attrs
    trial = load_dataset(b2t25_dir).splits["val"].trial_ids[SMALL.val_trials_per_day + 1]
    assert trial == f"{sessions[1]}/data_val.hdf5/trial_0001"


def test_b2t24_layout(b2t24_file):
    with open(b2t24_file, "rb") as fh:
        raw = pickle.load(fh)  # our own file: trusted
    assert set(raw) == {"train", "test", "competition"}
    day = raw["train"][0]
    assert {"sentenceDat", "phonemes", "phoneLens", "transcriptions", "timeSeriesLens"} <= set(day)
    assert all(p.shape == (500,) for p in day["phonemes"])
    assert day["sentenceDat"][0].shape[1] == SMALL.n_features


def test_b2t24_accepts_2d_phonemes_and_object_arrays(tmp_path, b2t24_file):
    with open(b2t24_file, "rb") as fh:
        raw = pickle.load(fh)
    for day in raw["train"]:
        day["phonemes"] = np.stack(day["phonemes"])  # one (n, 500) array per day
        obj = np.empty(len(day["sentenceDat"]), dtype=object)
        obj[:] = day["sentenceDat"]
        day["sentenceDat"] = obj
        day["sentenceDat"][0] = day["sentenceDat"][0].astype(np.float64)  # real files hold float64
        day["transcriptions"] = np.array(day["transcriptions"])  # numpy str_ entries
    for proto in (2, 5):
        p = tmp_path / f"p{proto}.pkl"
        p.write_bytes(pickle.dumps(raw, protocol=proto))
        assert_same(load_dataset(b2t24_file), load_dataset(p))


def test_b2t24_competition_listed_for_15_of_24_days(tmp_path):
    x = np.zeros((40, 4), np.float32) + np.arange(4, dtype=np.float32)

    def day(n):
        ph = np.zeros((n, 500), np.int32)
        ph[:, :2] = [5, SIL]
        return {"sentenceDat": [x] * n, "phonemes": ph, "phoneLens": np.full(n, 2), "transcriptions": ["a"] * n,
                "timeSeriesLens": np.full(n, 40)}

    raw = {"train": [day(2) for _ in range(24)], "test": [day(1) for _ in range(24)],
           "competition": [day(1) for _ in range(15)]}
    p = tmp_path / "ptDecoder_ctc"
    p.write_bytes(pickle.dumps(raw))
    ds = load_dataset(p)
    assert ds.splits["test"].day.tolist() == [4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 18, 19, 20]
    raw["competition"] = [day(1) for _ in range(7)]
    p.write_bytes(pickle.dumps(raw))
    with pytest.raises(DataFormatError, match="'competition' lists 7 days"):
        load_dataset(p)


# ---------------------------------------------------------------- detection


def test_detect_format(b2t24_file, b2t25_dir, tmp_path):
    assert detect_format(b2t24_file) == "b2t24"
    assert detect_format(b2t25_dir) == "b2t25"
    with pytest.raises(DataFormatError, match="no such file or folder"):
        detect_format(tmp_path / "nope")
    with pytest.raises(ValueError, match="no session folders"):
        detect_format(tmp_path)
    session = next(p for p in b2t25_dir.iterdir() if p.is_dir())
    with pytest.raises(DataFormatError, match="single b2t25 session folder"):
        detect_format(session)
    with pytest.raises(DataFormatError, match="single HDF5 file"):
        detect_format(session / "data_train.hdf5")
    with pytest.raises(DataFormatError, match=f"did you mean {b2t25_dir}"):
        detect_format(b2t25_dir.parent)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataFormatError, match="not a pickle file"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset(b2t24_file, format="b2t26")


def test_missing_paths(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        load_dataset(tmp_path / "missing.pkl", format="b2t24")
    with pytest.raises(DataFormatError, match="no such folder"):
        load_dataset(tmp_path / "missing", format="b2t25")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no session folders"):
        load_dataset(tmp_path / "empty", format="b2t25")


# ---------------------------------------------------------------- restricted unpickler


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def test_malicious_pickle_refused_without_executing(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"train": [{"sentenceDat": [np.zeros((3, 2), np.float32)], "evil": _Evil(f"touch {marker}")}],
               "test": [], "competition": []}
    for proto in (0, 2, 4, 5):
        p = tmp_path / f"evil{proto}.pkl"
        p.write_bytes(pickle.dumps(payload, protocol=proto))
        with pytest.raises(UnsafePickleError, match=r"refusing to load .*evil.*system"):
            load_dataset(p)
        assert not marker.exists()
    p = tmp_path / "eval.pkl"
    p.write_bytes(pickle.dumps([_EvalEvil()]))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load(p)
    assert issubclass(UnsafePickleError, ValueError)


def test_safe_load_reads_numpy_from_any_protocol_and_numpy1(tmp_path):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int64(7), "c": np.array(["x", "yz"]),
           "d": [np.zeros(2), {1, 2}], "e": np.array([np.ones(2), np.ones(3)], dtype=object)}
    for proto in range(6):
        p = tmp_path / f"ok{proto}.pkl"
        p.write_bytes(pickle.dumps(obj, protocol=proto))
        got = safe_load(p)
        np.testing.assert_array_equal(got["a"], obj["a"])
        assert got["b"] == 7 and got["c"].tolist() == ["x", "yz"] and got["d"][1] == {1, 2}
        assert got["e"][1].shape == (3,)
    # a file written by numpy 1.x names numpy.core.multiarray (protocol 2 names globals as text)
    p = tmp_path / "np1.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in p.read_bytes()
    np.testing.assert_array_equal(safe_load(p)["a"], obj["a"])


def test_corrupt_pickle(tmp_path):
    p = tmp_path / "cut.pkl"
    p.write_bytes(pickle.dumps({"train": [np.zeros(1000)]})[:200])
    with pytest.raises(DataFormatError, match="not a readable b2t24 pickle"):
        load_dataset(p)


# ---------------------------------------------------------------- bad b2t24 files


@pytest.fixture
def raw24(b2t24_file):
    with open(b2t24_file, "rb") as fh:
        return pickle.load(fh)


def _load_raw(tmp_path, raw):
    p = tmp_path / "bad.pkl"
    p.write_bytes(pickle.dumps(raw))
    return load_dataset(p)


def test_b2t24_not_a_dict(tmp_path):
    with pytest.raises(DataFormatError, match="expected a dict with keys 'train'"):
        _load_raw(tmp_path, [1, 2, 3])
    with pytest.raises(DataFormatError, match=r"keys \['foo'\]"):
        _load_raw(tmp_path, {"foo": []})
    with pytest.raises(DataFormatError, match="'train'\\[0\\] must be a dict"):
        _load_raw(tmp_path, {"train": [[1, 2]]})


def test_b2t24_ragged_width(tmp_path, raw24):
    raw24["train"][1]["sentenceDat"][2] = raw24["train"][1]["sentenceDat"][2][:, :-1]
    with pytest.raises(DataFormatError, match=r"b2t24/day01/train/2: 15 feature channels, expected 16 .*ragged"):
        _load_raw(tmp_path, raw24)


def test_b2t24_nan(tmp_path, raw24):
    raw24["test"][2]["sentenceDat"][1][5, 3] = np.nan
    with pytest.raises(DataFormatError, match=r"b2t24/day02/test/1: features contain NaN/Inf .*time bin 5, channel 3"):
        _load_raw(tmp_path, raw24)


def test_b2t24_inf(tmp_path, raw24):
    raw24["train"][0]["sentenceDat"][0][0, 0] = np.inf
    with pytest.raises(DataFormatError, match="b2t24/day00/train/0: features contain NaN/Inf"):
        _load_raw(tmp_path, raw24)


@pytest.mark.parametrize("bad", [41, 0, -1])
def test_b2t24_target_out_of_range(tmp_path, raw24, bad):
    raw24["train"][0]["phonemes"][3][1] = bad
    with pytest.raises(DataFormatError, match=rf"b2t24/day00/train/3: target id {bad} at position 1 is outside 1..40"):
        _load_raw(tmp_path, raw24)


def test_b2t24_phonelens_beyond_padding(tmp_path, raw24):
    raw24["test"][0]["phoneLens"][1] = 501
    msg = r"b2t24/day00/test/1: label length 501 \('phoneLens'\) is larger than the padded length 500"
    with pytest.raises(DataFormatError, match=msg):
        _load_raw(tmp_path, raw24)


def test_b2t24_time_series_lens_mismatch(tmp_path, raw24):
    raw24["train"][2]["timeSeriesLens"][0] += 1
    with pytest.raises(DataFormatError, match="b2t24/day02/train/0: timeSeriesLens says"):
        _load_raw(tmp_path, raw24)


def test_b2t24_count_mismatch(tmp_path, raw24):
    raw24["train"][1]["phoneLens"] = raw24["train"][1]["phoneLens"][:-1]
    with pytest.raises(DataFormatError, match="'train' day 1: 5 'phonemes' and 4 'phoneLens' for 5 trials"):
        _load_raw(tmp_path, raw24)


# ---------------------------------------------------------------- bad b2t25 folders


@pytest.fixture
def dir25(tmp_path):
    return write_synthetic(tmp_path / "data", "b2t25", SMALL)


def _first(dir25, fname="data_train.hdf5", session=0):
    return sorted(p for p in dir25.iterdir() if p.is_dir())[session] / fname


def test_b2t25_truncated_file(dir25):
    f = _first(dir25, session=1)
    f.write_bytes(f.read_bytes()[:3000])
    with pytest.raises(DataFormatError, match=rf"{f.parent.name}/data_train.hdf5: cannot read this HDF5 file"):
        load_dataset(dir25)


def test_b2t25_garbage_file(dir25):
    f = _first(dir25, "data_val.hdf5")
    f.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DataFormatError, match="data_val.hdf5: cannot read this HDF5 file"):
        load_dataset(dir25)


def test_b2t25_channel_count_between_sessions(dir25):
    f = _first(dir25, session=2)
    with h5py.File(f, "r+") as h:
        for g in h.values():
            x = g["input_features"][()]
            del g["input_features"]
            g.create_dataset("input_features", data=np.concatenate([x, x], axis=1))
    msg = "32 feature channels but session t15.2023.08.11 has 16 .*between sessions"
    with pytest.raises(DataFormatError, match=msg):
        load_dataset(dir25)


def test_b2t25_nan_names_trial(dir25):
    f = _first(dir25, "data_val.hdf5", session=1)
    with h5py.File(f, "r+") as h:
        h["trial_0002/input_features"][4, 7] = np.nan
    msg = r"data_val.hdf5: trial trial_0002: features contain NaN/Inf .*bin 4, channel 7"
    with pytest.raises(DataFormatError, match=msg):
        load_dataset(dir25)


def test_b2t25_target_out_of_range(dir25):
    with h5py.File(_first(dir25), "r+") as h:
        h["trial_0001/seq_class_ids"][0] = 45
    with pytest.raises(DataFormatError, match="trial trial_0001: target id 45 at position 0 is outside 1..40"):
        load_dataset(dir25)


def test_b2t25_seq_len_beyond_padding(dir25):
    with h5py.File(_first(dir25), "r+") as h:
        h["trial_0003"].attrs["seq_len"] = 600
    msg = r"trial trial_0003: label length 600 \(attribute 'seq_len'\) is larger than the padded length 500"
    with pytest.raises(DataFormatError, match=msg):
        load_dataset(dir25)


def test_b2t25_missing_features_and_bad_n_time_steps(dir25):
    with h5py.File(_first(dir25), "r+") as h:
        h["trial_0000"].attrs["n_time_steps"] = 3
    with pytest.raises(DataFormatError, match="trial trial_0000: n_time_steps says 3 bins"):
        load_dataset(dir25)
    with h5py.File(_first(dir25), "r+") as h:
        del h["trial_0000/input_features"]
    with pytest.raises(DataFormatError, match="trial trial_0000 has no 'input_features'"):
        load_dataset(dir25)


def test_b2t25_sessions_without_some_files(dir25):
    _first(dir25, "data_test.hdf5", session=0).unlink()
    _first(dir25, "data_val.hdf5", session=2).unlink()
    ds = load_dataset(dir25)
    assert ds.n_days == 3
    assert np.unique(ds.splits["test"].day).tolist() == [1, 2]
    assert np.unique(ds.splits["val"].day).tolist() == [0, 1]


def test_write_synthetic_refuses_foreign_output(tmp_path):
    foreign = tmp_path / "real.pkl"
    foreign.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_synthetic(foreign, "b2t24", SMALL)
    assert foreign.read_bytes() == b"precious"
    out = write_synthetic(tmp_path / "synth", "b2t25", SMALL)
    write_synthetic(out, "b2t25", SynthSpec(**{**SMALL.__dict__, "n_days": 2}))  # own output: replaced
    assert load_dataset(out).n_days == 2
