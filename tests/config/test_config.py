"""Config: presets hold the reference code's values, unknown keys are errors naming the key, overrides work."""
import pytest

from fastdecoder.config import ConfigError, config_from_dict, load_config


def test_b2t25_preset_values():
    c = load_config("b2t25")
    m, a, o, t = c.model, c.augment, c.optim, c.train
    assert (m.hidden_size, m.num_layers, m.bidirectional, m.rnn_dropout, m.input_dropout) == (768, 5, False, 0.4, 0.2)
    assert (m.patch_size, m.patch_stride, m.patch_order, m.smoothing, m.smooth_taps, m.learn_h0) == \
        (14, 4, "time_major", "input", "b2t25", True)
    assert (a.white_noise_std, a.constant_offset_std, a.random_cut) == (1.0, 0.2, 3)
    assert (o.name, o.lr, o.betas, o.eps, o.weight_decay, o.day_lr, o.day_weight_decay) == \
        ("adamw", 0.005, (0.9, 0.999), 0.1, 0.001, 0.005, 0.0)
    assert (o.schedule, o.warmup_steps, o.decay_steps, o.lr_min, o.grad_clip) == \
        ("warmup_cosine", 1000, 120000, 1e-4, 10.0)
    assert (t.batch_size, t.steps, t.amp, t.compile) == (64, 120000, "bf16", True)
    assert (c.data.batching, c.data.days_per_batch) == ("days", 4)
    assert (c.ctc.reduction, c.ctc.zero_infinity, c.ctc.output_lengths) == ("mean_batch", False, "exact")


def test_b2t24_preset_values():
    c = load_config("b2t24")
    m, a, o, t = c.model, c.augment, c.optim, c.train
    assert (m.hidden_size, m.num_layers, m.bidirectional, m.rnn_dropout) == (1024, 5, True, 0.4)
    assert (m.patch_size, m.patch_stride, m.patch_order, m.smoothing, m.smooth_taps, m.learn_h0) == \
        (32, 4, "channel_major", "model", "b2t24", False)
    assert (a.white_noise_std, a.constant_offset_std, a.random_cut) == (0.8, 0.2, 0)
    assert (o.name, o.lr, o.eps, o.weight_decay, o.schedule, o.grad_clip) == ("adam", 0.02, 0.1, 1e-5, "constant", 0.0)
    assert (t.batch_size, t.steps) == (64, 10000)
    assert c.data.batching == "random"
    assert (c.ctc.reduction, c.ctc.zero_infinity) == ("mean_target", True)


def test_demo_preset_loads():
    c = load_config("demo")
    assert c.data.synthetic is not None and c.train.steps > 0


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"model\.hiden_size"):
        config_from_dict({"model": {"hiden_size": 3}})
    with pytest.raises(ConfigError, match=r"unknown section 'modle'"):
        config_from_dict({"modle": {}})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"model\.rnn"):
        config_from_dict({"model": {"rnn": "lstm"}})
    with pytest.raises(ConfigError, match=r"optim\.lr must be a number"):
        config_from_dict({"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match=r"model\.rnn_dropout"):
        config_from_dict({"model": {"rnn_dropout": 1.5}})


def test_overrides():
    c = load_config("b2t25", ["train.steps=10", "optim.lr=0.001", "model.rnn=ln_gru"])
    assert (c.train.steps, c.optim.lr, c.model.rnn) == (10, 0.001, "ln_gru")
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        load_config("b2t25", ["train.stepz=10"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("b2t25", ["train.steps"])


def test_missing_config_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*b2t24"):
        load_config("no_such_preset")


def test_new_sections_and_keys():
    c = load_config("b2t25", ["optim.schedule=onecycle", "stability.adaptive_lr=true", "train.deterministic=true",
                              "stability.min_lr=0.0005", "train.amp=fp16"])
    assert (c.optim.schedule, c.stability.adaptive_lr, c.train.deterministic, c.stability.min_lr, c.train.amp) == \
        ("onecycle", True, True, 0.0005, "fp16")
    c = load_config("b2t24", ["optim.schedule=plateau", "optim.plateau_patience=2"])
    assert (c.optim.schedule, c.optim.plateau_patience) == ("plateau", 2)
    d = load_config("demo")
    assert d.stability.abort_on_nonfinite is False and d.train.plot is True and d.train.tensorboard is False
    with pytest.raises(ConfigError, match=r"unknown key 'stability\.adaptive'"):
        config_from_dict({"stability": {"adaptive": True}})
    with pytest.raises(ConfigError, match=r"optim\.schedule must be one of .*onecycle.*plateau"):
        config_from_dict({"optim": {"schedule": "cosine"}})


@pytest.mark.parametrize("section,key,value", [
    ("stability", "lr_reduction_factor", 1.5), ("stability", "blank_threshold", 0.0),
    ("stability", "instability_events", 0), ("stability", "min_lr", -1.0), ("stability", "grad_norm_threshold", 0.0),
    ("optim", "plateau_factor", 1.0), ("optim", "plateau_patience", -1), ("optim", "onecycle_pct_start", 1.0),
    ("optim", "warmup_steps", -5)])
def test_new_bad_values_are_named(section, key, value):
    raw = {section: {key: value}}
    if key.startswith("onecycle"):
        raw[section]["schedule"] = "onecycle"
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        config_from_dict(raw)


def test_config_diff_names_keys():
    from fastdecoder.config import config_diff

    a = load_config("b2t25").to_dict()
    b = load_config("b2t25", ["train.steps=5", "optim.lr=0.001"]).to_dict()
    assert [k for k, _, _ in config_diff(a, b)] == ["optim.lr", "train.steps"]
    assert config_diff(a, b, ignore=("train.steps", "optim.lr")) == []


# ---------------------------------------------------------------- ranges, cross-key checks, YAML 1.2


def test_every_numeric_key_has_a_range():
    """A new numeric key must say which values it takes (config.RANGES), and no entry names a key that is gone."""
    from fastdecoder.config import RANGES, numeric_keys

    keys = numeric_keys()
    assert {"optim.lr", "train.seed", "data.max_val_trials", "model.n_classes"} <= set(keys)
    assert sorted(set(keys) - set(RANGES)) == []
    assert sorted(set(RANGES) - set(keys)) == []


def _declared_choices():
    from fastdecoder.config import _declared

    return sorted(_declared("choices").items())


@pytest.mark.parametrize("name,choices", _declared_choices())
def test_every_declared_choice_is_enforced(name, choices):
    """The choices declared beside a field (``key(choices=...)``) are what validation accepts: each one loads, and a
    near miss is refused naming the key, the choices and the closest one."""
    sec, k = name.split(".")
    for c in choices:
        assert getattr(getattr(config_from_dict({sec: {k: c}}), sec), k) == c
    wrong = f"{choices[0]}x"
    with pytest.raises(ConfigError, match=rf"{sec}\.{k} must be one of .*, got '{wrong}'; did you mean "
                                          rf"'{choices[0]}'\?"):
        config_from_dict({sec: {k: wrong}})


def test_key_declarations():
    """What may differ on resume and per member is read off the fields; a misspelt rule is refused at declaration."""
    from fastdecoder import config
    from fastdecoder.checkpoint import RESUME_MAY_DIFFER

    assert RESUME_MAY_DIFFER == config.resume_may_differ() == (
        "name", "train.steps", "train.log_every", "train.beam_width", "train.threads", "train.tensorboard",
        "train.plot", "train.train_monitor", "train.fast_selfcheck", "train.fast_selfcheck_fatal")
    assert {"train.seed", "optim.lr", "model.rnn_dropout", "stability.min_lr"} <= config.OVERRIDABLE
    assert not {"train.steps", "model.hidden_size", "data.days_per_batch"} & config.OVERRIDABLE
    with pytest.raises(ValueError, match="resume must be"):
        config.key(0, resume="sometimes")
    with pytest.raises(ValueError, match="member must be"):
        config.key(0, member="own")


def _outside(r, integer: bool) -> list:
    """Values just outside Range r (and non-integers for int keys)."""
    step = 1 if integer else 1e-9 * max(1.0, abs(r.lo or 0), abs(r.hi or 0))
    out = []
    if r.lo is not None:
        out.append(r.lo if r.lo_open else r.lo - step)
    if r.hi is not None:
        out.append(r.hi if r.hi_open else r.hi + step)
    return out


def _numeric_cases():
    from fastdecoder.config import RANGES, numeric_keys

    for key, tp in sorted(numeric_keys().items()):
        for v in _outside(RANGES[key], tp is int):
            yield key, v, "must be"
        for v in (float("nan"), float("inf"), float("-inf")):
            yield key, v, "finite" if tp is float else "integer"
        if tp is int:
            yield key, 1.5, "must be an integer"


@pytest.mark.parametrize("key,value,says", list(_numeric_cases()))
def test_every_numeric_key_refuses_values_outside_its_range(key, value, says):
    sec, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{sec}\.{name} .*{says}") as err:
        config_from_dict({sec: {name: value}})
    assert "got" in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("optim.eps=.inf", r"optim\.eps must be a finite number, got inf"),
    ("optim.day_lr=-1", r"optim\.day_lr must be > 0, got -1"),
    ("data.val_split=vall", r"data\.val_split must be one of train, val, test, null, got 'vall'"),
    ("data.max_val_trials=0", r"data\.max_val_trials must be an integer >= 1, got 0"),
    ("data.max_val_trials=-1", r"data\.max_val_trials must be an integer >= 1, got -1"),
    ("model.n_classes=5", r"model\.n_classes must be 41 \(CTC blank \+ 39 phonemes \+ SIL"),
    ("model.n_classes=0", r"model\.n_classes must be 41"),
    ("train.seed=-1", r"train\.seed must be an integer in \[0, 4294967295\], got -1"),
    ("train.device=foo", r"train\.device must be auto, cpu, mps, cuda or cuda:N, got 'foo'"),
    ("stability.min_distinct_phonemes=41", r"stability\.min_distinct_phonemes \(41\) must not exceed the 40"),
    ("optim.betas=[0.9, .inf]", r"optim\.betas must be two numbers in \[0, 1\)"),
    ("train.compile=yes", r"train\.compile must be true or false, got 'yes'"),
])
def test_issue12_values_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("b2t25", [override])


def test_yaml12_numbers_in_overrides_and_files(tmp_path):
    c = load_config("b2t25", ["optim.lr=1e-4", "train.steps=1E5", "model.rnn_dropout=.5", "optim.lr_min=1.0e-5",
                              "train.seed=017", "optim.weight_decay='2e-3'", "data.val_split=null",
                              "train.device=cuda:1"])
    assert (c.optim.lr, c.train.steps, c.model.rnn_dropout, c.optim.lr_min) == (1e-4, 100000, 0.5, 1e-5)
    assert type(c.train.steps) is int and c.train.seed == 17 and c.optim.weight_decay == 2e-3
    assert c.data.val_split is None and c.train.device == "cuda:1"
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 3e-4, eps: 1E-8, grad_clip: .5}\ndata: {path: 2023-01-01}\n")
    c = load_config(f)
    assert (c.optim.lr, c.optim.eps, c.optim.grad_clip, c.data.path) == (3e-4, 1e-8, 0.5, "2023-01-01")


def test_yaml12_scalars():
    from fastdecoder.config import yaml_load

    table = {"1e-4": 1e-4, "1E5": 1e5, ".5": 0.5, "-.inf": float("-inf"), "+1": 1, "017": 17, "0o17": 15,
             "0x1F": 31, "-1e+3": -1000.0, "yes": "yes", "on": "on", "1:30": "1:30", "1_000": "1_000",
             "true": True, "False": False, "~": None, "null": None}
    assert {k: yaml_load(k) for k in table} == table
    assert yaml_load(".nan") != yaml_load(".nan")  # NaN


def test_saved_config_loads_back_identically(tmp_path):
    from fastdecoder.config import save_config

    c = load_config("b2t25", ["optim.lr=1e-4", "data.val_split=null", "stability.min_lr=1e-6"])
    save_config(c, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == c
