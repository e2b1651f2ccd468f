"""Hypothesis-generated hostile files for the loaders (b2t24 pickle, b2t25 HDF5, ARPA and lexicon, plain or gzip;
YAML configs): each either loads or raises one clear error (a ValueError: DataFormatError, LimitError, ConfigError,
...), never another exception, a hang or a huge allocation. FASTDECODER_FUZZ_EXAMPLES raises the example count."""
from __future__ import annotations

import gzip
import os
import pickle
import string

import h5py
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastdecoder.config import ConfigError, load_config  # noqa: E402
from fastdecoder.data import load_dataset  # noqa: E402
from fastdecoder.decode.lm import ArpaLM  # noqa: E402
from fastdecoder.decode.words import Lexicon  # noqa: E402

EXAMPLES = int(os.environ.get("FASTDECODER_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _clear_or_success(load, *args) -> None:
    """``load(*args)`` returns or raises a ValueError (the project's clear errors all are); anything else fails."""
    try:
        load(*args)
    except ValueError:
        pass


# ------------------------------------------------------------------------------------------------ b2t24 pickles


def _valid_pickle() -> bytes:
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    day = {"sentenceDat": [x, x + 1], "transcriptions": ["a b", "c"],
           "phonemes": [np.array([1, 2, 40, 0], np.int32), np.array([3, 40, 0, 0], np.int32)],
           "phoneLens": np.array([3, 2]), "timeSeriesLens": np.array([6, 6])}
    return pickle.dumps({"train": [day], "test": [day], "competition": []}, protocol=4)


VALID_PICKLE = _valid_pickle()

leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                   st.binary(max_size=8),
                   st.builds(lambda shape, dt: np.zeros(shape, dt),
                             st.lists(st.integers(0, 5), max_size=3).map(tuple),
                             st.sampled_from(["f4", "f8", "i1", "i4", "i8", "u1", "f2", "b1", "O", "U3", "c8"])))


def _shared(value, depth: int):
    """``value`` under ``depth`` levels of two references to one list: 2**depth copies when expanded."""
    for _ in range(depth):
        value = [value, value]
    return value


structures = st.recursive(leaves, lambda inner: st.one_of(
    st.builds(_shared, inner, st.integers(1, 40)),
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["train", "test", "competition", "sentenceDat", "transcriptions", "phonemes", "phoneLens",
         "timeSeriesLens", "x"]), inner, max_size=5)), max_leaves=20)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID_PICKLE) - 1), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, len(VALID_PICKLE)))
def test_mutated_b2t24_pickles(tmp_path_factory, edits, cut):
    data = bytearray(VALID_PICKLE)
    for pos, byte in edits:
        data[pos] = byte
    path = tmp_path_factory.mktemp("p") / "f.pkl"
    path.write_bytes(bytes(data[: max(cut, 1)] if cut < len(data) // 2 else data))
    _clear_or_success(load_dataset, path)


@FUZZ
@given(obj=structures)
def test_generated_b2t24_pickles(tmp_path_factory, obj):
    path = tmp_path_factory.mktemp("p") / "f.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    _clear_or_success(load_dataset, path)


# ------------------------------------------------------------------------------------------------ b2t25 HDF5

dtypes = st.sampled_from(["f4", "f8", "f2", "i1", "i4", "i8", "u1", "b1", "S4"])
shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)
attr_values = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                        st.text(st.characters(blacklist_characters="\x00"), max_size=6),  # h5py refuses NUL
                        st.lists(st.integers(-5, 50), max_size=4).map(np.array))


@st.composite
def hdf5_trials(draw):
    """(member name, shape, dtype, declared-only?, chunked?, value fill) per member, and attrs of the trial group."""
    members = draw(st.lists(st.tuples(st.sampled_from(["input_features", "seq_class_ids", "transcription", "x"]),
                                      shapes, dtypes, st.booleans(), st.booleans(), st.integers(-3, 60),
                                      st.sampled_from([1, 10, 10**4])),
                            max_size=4, unique_by=lambda m: m[0]))
    attrs = draw(st.dictionaries(st.sampled_from(["n_time_steps", "seq_len", "block_num", "sentence_label",
                                                  "session"]), attr_values, max_size=4))
    return members, attrs


@FUZZ
@given(trials=st.lists(hdf5_trials(), min_size=1, max_size=3))
def test_generated_b2t25_files(tmp_path_factory, trials):
    root = tmp_path_factory.mktemp("h")
    sess = root / "t15.2023.08.11"
    sess.mkdir()
    with h5py.File(sess / "data_train.hdf5", "w") as f:
        for i, (members, attrs) in enumerate(trials):
            g = f.create_group(f"trial_{i:04d}")
            for name, shape, dt, declared_only, chunked, fill, scale in members:
                shape = tuple(d * scale if k == 0 else d for k, d in enumerate(shape))
                chunks = tuple(max(1, min(d, 64)) for d in shape) if chunked and shape and all(shape) else None
                if declared_only:
                    g.create_dataset(name, shape=shape, dtype=dt, chunks=chunks)
                elif np.prod(shape) <= 4096:
                    g.create_dataset(name, data=np.full(shape, fill).astype(dt), chunks=chunks)
            for k, v in attrs.items():
                g.attrs[k] = v
    _clear_or_success(load_dataset, root)


# ------------------------------------------------------------------------------------------------ ARPA, lexicon

ARPA_TOKENS = ["\\data\\", "ngram 1=2", "ngram 2=1", "ngram 1=99999999999", "ngram 3=1", "\\1-grams:",
               "\\2-grams:", "\\3-grams:", "\\end\\", "-1.5", "-99", "nan", "inf", "1e400", "0", "<s>", "</s>",
               "<unk>", "a", "b", "\xe9", "\t", " ", "\n", "\n", "\n", "\r\n", "\x00", "=", "-"]


@FUZZ
@given(tokens=st.lists(st.sampled_from(ARPA_TOKENS), max_size=60), gz=st.booleans())
def test_generated_arpa_files(tmp_path_factory, tokens, gz):
    text = "".join(tokens).encode("utf-8")
    path = tmp_path_factory.mktemp("a") / "lm.arpa"
    path.write_bytes(gzip.compress(text) if gz else text)
    _clear_or_success(ArpaLM.load, path)


@FUZZ
@given(text=st.text(alphabet=string.ascii_letters + string.digits + " \t\n#()'-", max_size=200), gz=st.booleans())
def test_generated_lexicon_files(tmp_path_factory, text, gz):
    path = tmp_path_factory.mktemp("l") / "lex.txt"
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    _clear_or_success(Lexicon.from_file, path)


# ------------------------------------------------------------------------------------------------ YAML configs

YAML_TOKENS = ["model:", "data:", "optim:", "train:", "name:", "\n", "\n  ", "  ", " ", "hidden_size:", "lr:",
               "betas:", "synthetic:", "path:", "steps:", "1", "-1", "1e400", ".nan", "0x10", "'x'", "[", "]", "{", "}",
               ",", "&a", "*a", "!!python/object:os.system", "!!binary", "- ", "~", "true", "yes", ":", "? ", "|",
               "\t", "%YAML 1.1\n---\n", "---", "..."]


@FUZZ
@given(tokens=st.lists(st.sampled_from(YAML_TOKENS), max_size=40))
def test_generated_yaml_configs(tmp_path_factory, tokens):
    path = tmp_path_factory.mktemp("y") / "c.yaml"
    path.write_text("".join(tokens))
    _clear_or_success(load_config, str(path))


def test_deeply_nested_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("data:\n  synthetic: " + "[" * 5000 + "]" * 5000 + "\n")  # a RecursionError before
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        load_config(str(path))


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def tiny_run_state():
    from dataclasses import replace

    from fastdecoder.model import GRUDecoder

    cfg = load_config("demo")
    cfg = replace(cfg, model=replace(cfg.model, n_features=4, n_days=2, hidden_size=4, num_layers=1, patch_size=2))
    return {"model": GRUDecoder(cfg.model).state_dict(), "step": 1, "config": cfg.to_dict()}


@FUZZ
@given(section=st.sampled_from(["model", "data", "optim", "train", "name"]),
       key=st.sampled_from(["hidden_size", "n_days", "synthetic", "betas", "lr", "steps", "path", "zzz"]),
       value=structures)
def test_checkpoints_with_generated_config_values(tmp_path_factory, tiny_run_state, section, key, value):
    import copy

    from fastdecoder.checkpoint import load_run, save_checkpoint

    state = copy.deepcopy(tiny_run_state)
    if section == "name":
        state["config"]["name"] = value
    else:
        state["config"][section][key] = value
    run = tmp_path_factory.mktemp("c")
    save_checkpoint(state, run / "best.pt")
    _clear_or_success(load_run, run, "best")
