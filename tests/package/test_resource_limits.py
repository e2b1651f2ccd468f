"""No input may cost more memory or time than its size justifies: small hostile files and options are refused with
one clear error (a LimitError / DataFormatError / ConfigError, all ValueErrors) before the big allocation."""
from __future__ import annotations

import gzip
import itertools
import pickle
import time
import tracemalloc
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from fastdecoder.cli import main
from fastdecoder.config import ConfigError, config_from_dict, load_config
from fastdecoder.data import DataFormatError, SynthSpec, UnsafePickleError, load_dataset
from fastdecoder.decode import build_lm
from fastdecoder.decode.lm import ArpaLM, read_text_bytes
from fastdecoder.decode.words import Lexicon
from fastdecoder.limits import (GZIP_MAX_RATIO, MAX_LM_ORDER, MAX_MODEL_PARAMETERS, LimitError, expanded_size,
                                short_repr)
from fastdecoder.model import GRUDecoder, parameter_count, state_shapes
from fastdecoder import checkpoint as ckpt


def _shared_bomb(depth: int):
    """A list nested `depth` levels whose two items are the same object: 2**depth leaves from `depth` objects."""
    x = [1]
    for _ in range(depth):
        x = [x, x]
    return x


# ------------------------------------------------------------------------------------------------ model sizes


def _model_cfg(**kw):
    return replace(load_config("demo").model, n_features=6, n_days=2, hidden_size=8, num_layers=2, patch_size=3,
                   **kw)


@pytest.mark.parametrize("preset,rnn,bidirectional,learn_h0",
                         list(itertools.product(["b2t24", "b2t25"], ["gru", "ln_gru"], [False, True], [False, True])))
def test_state_shapes_are_the_models(preset, rnn, bidirectional, learn_h0):
    cfg = replace(load_config(preset).model, n_features=5, n_days=3, hidden_size=4, num_layers=3, patch_size=2,
                  rnn=rnn, bidirectional=bidirectional, learn_h0=learn_h0)
    sd = GRUDecoder(cfg).state_dict()
    assert state_shapes(cfg) == {k: tuple(v.shape) for k, v in sd.items()}
    assert parameter_count(cfg) == sum(v.numel() for v in sd.values())


def test_model_larger_than_the_limit_is_refused_before_allocating():
    cfg = _model_cfg()
    big = replace(cfg, hidden_size=16384, num_layers=64)
    assert parameter_count(big) > MAX_MODEL_PARAMETERS
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="parameters"):
        GRUDecoder(big)
    assert time.perf_counter() - t0 < 1.0


def _write_run(tmp_path, config_change=None, model_cfg=None):
    """A run folder whose best.pt holds a tiny model's weights and (optionally altered) config."""
    cfg = load_config("demo")
    cfg = replace(cfg, model=model_cfg or _model_cfg())
    model = GRUDecoder(cfg.model)
    saved = cfg.to_dict()
    if config_change:
        config_change(saved)
    run = tmp_path / "run"
    ckpt.save_checkpoint({"model": model.state_dict(), "step": 1, "config": saved}, run / "best.pt")
    return run


def test_load_run_reads_a_matching_checkpoint(tmp_path):
    cfg, model, _ = ckpt.load_run(_write_run(tmp_path), "best")
    assert cfg.model.hidden_size == 8 and isinstance(model, GRUDecoder)


@pytest.mark.parametrize("section,key,value,match", [
    ("model", "hidden_size", 8192, "does not match its own config.*hidden_size=8192"),
    ("model", "num_layers", 5, "does not match its own config"),
    ("model", "n_days", 10**12, "model.n_days"),
    ("model", "n_features", 10**6, "model.n_features"),
    ("model", "n_days", 60000, "does not match its own config.*day_weights"),
])
def test_load_run_compares_sizes_before_building(tmp_path, monkeypatch, section, key, value, match):
    def change(d):
        d[section][key] = value
    run = _write_run(tmp_path, change)
    built = []
    from fastdecoder import device

    monkeypatch.setattr(device, "build_model", lambda *a, **k: built.append(1) or pytest.fail("model was built"))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_run(run, "best")
    assert not built


def test_checkpoint_with_shared_reference_bomb_is_refused(tmp_path):
    def change(d):
        d["data"]["synthetic"] = {"format": "b2t25", "junk": _shared_bomb(40)}
    run = _write_run(tmp_path, change)
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError, match="expands to more than"):
        ckpt.load_checkpoint(run / "best.pt")
    assert time.perf_counter() - t0 < 5.0
    assert main(["eval", "--run", str(run), "--checkpoint", "best"]) == 2


def test_expanded_size_counts_each_reference_and_stops_at_the_budget():
    a = np.zeros(100, np.int8)
    assert expanded_size([a, a], 10**6, "x") == 1 + 2 * (1 + 400)  # int8 counted at float32 size, twice
    t0 = time.perf_counter()
    with pytest.raises(LimitError):
        expanded_size(_shared_bomb(60), 10**5, "x")
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(LimitError):
        expanded_size(cyclic, 10**5, "x")
    assert time.perf_counter() - t0 < 2.0


# ------------------------------------------------------------------------------------------------ YAML, configs


BILLION_LAUGHS = """\
name: lol
data:
  synthetic:
    a: &a [x, x, x, x, x, x, x, x, x]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
model:
  hidden_size: *g
"""


def test_yaml_aliases_are_refused(tmp_path, capsys):
    path = tmp_path / "lol.yaml"
    path.write_text(BILLION_LAUGHS)
    with pytest.raises(ConfigError, match=r"alias \*a.*not allowed"):
        load_config(path)
    small = tmp_path / "alias.yaml"
    small.write_text("optim:\n  lr: &lr 0.001\n  lr_min: *lr\n")
    with pytest.raises(ConfigError, match="alias"):
        load_config(small)
    t0 = time.perf_counter()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert time.perf_counter() - t0 < 10.0
    err = capsys.readouterr().err
    assert err.startswith("error:") and "alias" in err and "line 5" in err and err.count("\n") == 1


def test_error_messages_quote_values_briefly():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        config_from_dict({"model": {"hidden_size": _shared_bomb(22)}})
    assert time.perf_counter() - t0 < 2.0
    assert "model.hidden_size must be an integer" in str(e.value) and len(str(e.value)) < 300
    assert len(short_repr("x" * 10**6)) < 100 and short_repr(3) == "3"
    with pytest.raises(ValueError) as e:
        SynthSpec(lead_bins=_shared_bomb(22))
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("override,key", [("model.hidden_size=200000", "model.hidden_size"),
                                          ("model.num_layers=1000", "model.num_layers"),
                                          ("model.patch_size=100000", "model.patch_size"),
                                          ("train.batch_size=1000000000", "train.batch_size"),
                                          ("train.eval_batch_size=1000000000", "train.eval_batch_size"),
                                          ("train.beam_width=100000", "train.beam_width"),
                                          ("train.length_bucket=1000000000", "train.length_bucket"),
                                          ("augment.time_mask_count=1000000000", "augment.time_mask_count"),
                                          ("augment.freq_mask_count=1000000000", "augment.freq_mask_count")])
def test_size_keys_have_maxima(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("demo", [override])


def test_bench_train_refuses_a_huge_model(capsys):
    assert main(["bench", "train", "--config", "demo", "--synthetic", "--steps", "1",
                 "--set", "model.hidden_size=200000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.hidden_size") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ synthetic data


@pytest.mark.parametrize("kw", [{"n_features": 10**9}, {"n_days": 10**9}, {"trials_per_day": 10**9},
                                {"vocab_size": 10**12}, {"max_phone_bins": 10**9}, {"blocks_per_day": 10**12}])
def test_synth_spec_refuses_huge_datasets(kw):
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="float32 values"):
        SynthSpec(**kw)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("opt", [["--features", "1000000000"], ["--days", "1000000000"],
                                 ["--trials-per-day", "1000000000"]])
def test_data_synth_cli_refuses_huge_datasets(tmp_path, capsys, opt):
    assert main(["data", "synth", "--format", "b2t25", "--out", str(tmp_path / "s"), *opt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------ HDF5 (b2t25)


def _session(tmp_path, make_dataset):
    sess = tmp_path / "root" / "t15.2023.08.11"
    sess.mkdir(parents=True)
    with h5py.File(sess / "data_train.hdf5", "w") as f:
        g = f.create_group("trial_0000")
        make_dataset(g, tmp_path)
    return tmp_path / "root"


def test_hdf5_declared_but_unwritten_dataset_is_refused(tmp_path, capsys):
    root = _session(tmp_path, lambda g, _: g.create_dataset("input_features", shape=(20000, 512), dtype="f4",
                                                            chunks=(1000, 512)))
    assert sum(p.stat().st_size for p in root.rglob("*.hdf5")) < 20000
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError, match="declares shape"):
            load_dataset(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert main(["data", "info", str(root)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_hdf5_external_storage_is_refused(tmp_path):
    def make(g, tmp):
        (tmp / "outside.bin").write_bytes(np.ones((4, 3), np.float32).tobytes())
        g.create_dataset("input_features", shape=(4, 3), dtype="f4", external=[(str(tmp / "outside.bin"), 0, 48)])
    with pytest.raises(DataFormatError, match="outside this file"):
        load_dataset(_session(tmp_path, make))


def test_hdf5_compressed_data_still_loads(tmp_path, rng):
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x[:, 8:] = 0  # compresses well, far below the ratio limit
    root = _session(tmp_path, lambda g, _: g.create_dataset("input_features", data=x, chunks=(100, 16),
                                                            compression="gzip"))
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds.splits["train"].features[0], x)


# ------------------------------------------------------------------------------------------------ pickles (b2t24)


def _b2t24_pickle(path, sentence_dat):
    n = len(sentence_dat)
    day = {"sentenceDat": sentence_dat, "transcriptions": [""] * n, "phonemes": [np.zeros(500, np.int32)] * n,
           "phoneLens": np.zeros(n, np.int64), "timeSeriesLens": np.asarray([len(x) for x in sentence_dat])}
    with open(path, "wb") as fh:
        pickle.dump({"train": [day], "test": [], "competition": []}, fh, protocol=4)
    return path


def test_pickle_repeating_one_array_is_refused(tmp_path):
    one = np.ones((100, 8), np.int8)  # 800 bytes, 3200 as float32
    path = _b2t24_pickle(tmp_path / "rep.pkl", [one] * 5000)
    assert path.stat().st_size < 200_000
    with pytest.raises(UnsafePickleError, match="expands to more than"):
        load_dataset(path)


def test_pickle_of_distinct_arrays_still_loads(tmp_path, rng):
    feats = [rng.standard_normal((40, 8)).astype(np.float32) for _ in range(30)]
    ds = load_dataset(_b2t24_pickle(tmp_path / "ok.pkl", feats))
    assert len(ds.splits["train"]) == 30


# ------------------------------------------------------------------------------------------------ gzip, ARPA, lexicon


ARPA_HEAD = "\\data\\\nngram 1=3\n\n\\1-grams:\n-99\t<s>\n-1.0\t</s>\n-1.0\tword\n\n\\end\\\n"


def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path, capsys):
    path = tmp_path / "lm.arpa.gz"
    path.write_bytes(gzip.compress(ARPA_HEAD.encode() + b" " * (20 * 2**20), 9))
    assert path.stat().st_size * GZIP_MAX_RATIO < 20 * 2**20
    tracemalloc.start()
    try:
        with pytest.raises(LimitError, match="decompresses to more than"):
            ArpaLM.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20 + path.stat().st_size * GZIP_MAX_RATIO
    lex = tmp_path / "lex.txt.gz"
    lex.write_bytes(gzip.compress(b"word W ER D\n" + b"\n" * (20 * 2**20), 9))
    with pytest.raises(LimitError):
        Lexicon.from_file(lex)


def test_gzip_within_the_ratio_still_reads(tmp_path):
    path = tmp_path / "lm.arpa.gz"
    path.write_bytes(gzip.compress(ARPA_HEAD.encode()) + gzip.compress(b"\n"))  # two members
    assert read_text_bytes(path) == ARPA_HEAD.encode() + b"\n"
    assert ArpaLM.load(path).order == 1
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(ARPA_HEAD.encode())[:-6])
    with pytest.raises(ValueError, match="broken gzip"):
        read_text_bytes(broken)


# ------------------------------------------------------------------------------------------------ lm build --order


def test_lm_order_above_the_maximum_is_refused(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\nb c d\n")
    with pytest.raises(LimitError, match=f"largest supported n-gram order, {MAX_LM_ORDER}"):
        build_lm(corpus, MAX_LM_ORDER + 1)
    t0 = time.perf_counter()
    assert main(["lm", "build", "--text", str(corpus), "--order", "1000000000", "--out",
                 str(tmp_path / "x.arpa")]) == 2
    assert time.perf_counter() - t0 < 5.0
    assert "--order must be in 1..10" in capsys.readouterr().err
    assert not (tmp_path / "x.arpa").exists()


def test_lm_order_beyond_the_corpus_writes_no_empty_order(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c\nb c\n")  # longest sentence: <s> a b c </s> = 5 tokens
    with pytest.raises(ValueError, match="use an order <= 5"):
        build_lm(corpus, 6, tmp_path / "six.arpa")
    assert not (tmp_path / "six.arpa").exists()
    lm = build_lm(corpus, 5, tmp_path / "five.arpa")
    assert lm.order == 5 and all(c > 0 for c in lm.counts)


def test_resume_compares_sizes_before_building(tmp_path, monkeypatch, capsys):
    from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data
    from fastdecoder.train import build as build_mod
    from fastdecoder.train import trainer as trainer_mod

    raw = tiny_config(data=tiny_data(3, trials_per_day=8, val_trials_per_day=2, test_trials_per_day=0),
                      model={"hidden_size": 8, "rnn_dropout": DEFAULT, "input_dropout": DEFAULT}, augment=None,
                      optim=None, train={"steps": 1, "batch_size": 4, "eval_every": 1, "log_every": DEFAULT,
                                         "checkpoint_every": 1, "beam_width": 0, "plot": False})
    out = tmp_path / "run"
    trainer_mod.Trainer(config_from_dict(raw), out, progress=False).fit()
    state = ckpt.load_checkpoint(out / "last.pt")
    state["config"]["model"]["hidden_size"] = 8192
    ckpt.save_checkpoint({k: v for k, v in state.items() if k != "format"}, out / "last.pt")
    monkeypatch.setattr(build_mod, "build_model", lambda *a, **k: pytest.fail("model was built"))
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not match its own config" in err and "hidden_size=8192" in err


def test_hdf5_variable_length_arrays_are_refused(tmp_path):
    def make(g, _):
        g.create_dataset("input_features", data=np.ones((20, 4), np.float32))
        g.create_dataset("transcription", data=np.array(["a", "b"], dtype=h5py.string_dtype()))
    with pytest.raises(DataFormatError, match="variable-length"):
        load_dataset(_session(tmp_path, make))


MODEL_TOO_BIG_FOR_MEMORY = r"""
import resource, sys
from dataclasses import replace
import torch
from fastdecoder.config import load_config
from fastdecoder.errors import UserError
from fastdecoder.device import build_model
cfg = load_config("demo")
cfg = replace(cfg, model=replace(cfg.model, n_features=64, n_days=4, hidden_size=4096, num_layers=8))
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**28, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    build_model(cfg, torch.device("cpu"))
except UserError as e:
    print("refused:", e)
    sys.exit(0)
sys.exit(1)
"""


def test_a_model_the_machine_cannot_allocate_is_a_clear_error():
    """A config inside every limit whose model still does not fit in memory (here: an address-space limit of the
    current size + 256 MiB, a ~3 GiB model): a UserError naming the size, not a MemoryError/RuntimeError."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MODEL_TOO_BIG_FOR_MEMORY], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "cannot allocate the model" in out.stdout and "GiB of float32" in out.stdout


@pytest.mark.parametrize("override", ["data.synthetic=&a [*a]", "data.synthetic=[*a]", "model.hidden_size=[1"])
def test_override_with_alias_or_bad_yaml_is_a_config_error(override):
    with pytest.raises(ConfigError, match="override"):
        load_config("demo", [override])


def test_checkpoint_of_stride0_views_matching_a_huge_config_is_refused(tmp_path, monkeypatch):
    """Every tensor shaped as a hidden_size=4096 config implies, but each a stride-0 view of one stored number: the
    shapes agree, the file is tiny; the model (about 0.6 GB) must not be built."""
    cfg = load_config("demo")
    big = replace(cfg, model=replace(_model_cfg(), hidden_size=4096))
    state = {name: torch.zeros(1).expand(*shape) for name, shape in state_shapes(big.model).items()}
    run = tmp_path / "run"
    ckpt.save_checkpoint({"model": state, "step": 1, "config": big.to_dict()}, run / "best.pt")
    assert (run / "best.pt").stat().st_size < 100_000
    from fastdecoder import device

    monkeypatch.setattr(device, "build_model", lambda *a, **k: pytest.fail("model was built"))
    with pytest.raises(ckpt.CheckpointError, match="expands to more than"):
        ckpt.load_run(run, "best")


def test_reference_checkpoint_of_stride0_views_is_refused(tmp_path):
    from fastdecoder.model import load_reference_checkpoint

    H, C, K = 8, 4, 2
    sd = {"dayWeights": torch.zeros(1).expand(5000, C, C), "dayBias": torch.zeros(5000, 1, C),
          "gru_decoder.weight_ih_l0": torch.zeros(3 * H, C * K), "gru_decoder.weight_hh_l0": torch.zeros(3 * H, H),
          "gru_decoder.bias_ih_l0": torch.zeros(3 * H), "gru_decoder.bias_hh_l0": torch.zeros(3 * H),
          "fc_decoder_out.weight": torch.zeros(41, H), "fc_decoder_out.bias": torch.zeros(41)}
    path = tmp_path / "modelWeights"
    torch.save(sd, path)
    with pytest.raises(LimitError, match="expands to more than"):
        load_reference_checkpoint(path, preset="b2t24")
    sd["dayWeights"] = torch.zeros(5000, C, C)  # the same sizes stored in full load
    torch.save(sd, path)
    assert load_reference_checkpoint(path, preset="b2t24").cfg.n_days == 5000
