"""Configs people build on: ``base:`` inheritance, ``fastdecoder config show``, "did you mean" for typos."""
import pytest
import yaml

from fastdecoder.cli import main
from fastdecoder.config import ConfigError, load_config, read_config_raw


def test_base_preset_then_own_keys(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: b2t25\nname: mine\noptim:\n  lr: 0.001\ntrain:\n  steps: 500\n")
    cfg, preset = load_config(f), load_config("b2t25")
    assert cfg.name == "mine" and cfg.optim.lr == 0.001 and cfg.train.steps == 500
    # everything else is the preset's, section by section (not just the sections the file leaves out)
    assert cfg.optim.eps == preset.optim.eps and cfg.train.batch_size == preset.train.batch_size
    assert cfg.model == preset.model and cfg.augment == preset.augment


def test_base_chain_relative_to_the_including_file(tmp_path, monkeypatch):
    (tmp_path / "configs" / "lab").mkdir(parents=True)
    (tmp_path / "configs" / "common.yaml").write_text("base: b2t24\ntrain:\n  steps: 100\n  seed: 7\n")
    (tmp_path / "configs" / "lab" / "exp.yaml").write_text("base: ../common.yaml\ntrain:\n  steps: 200\n")
    monkeypatch.chdir(tmp_path)  # the relative base is read against the including file, not the working folder
    cfg = load_config("configs/lab/exp.yaml", ["optim.lr=0.01"])
    assert cfg.name == "b2t24" and cfg.train.steps == 200 and cfg.train.seed == 7 and cfg.optim.lr == 0.01
    assert cfg.model.patch_order == "channel_major"
    assert "base" not in read_config_raw("configs/lab/exp.yaml")


def test_base_cycles_and_bad_bases_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="config base cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "typo.yaml").write_text("base: b2t52\n")
    with pytest.raises(ConfigError, match="base 'b2t52' is neither a file .* nor a preset; did you mean 'b2t25'"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "num.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match="base must be a preset name or a YAML file path"):
        load_config(tmp_path / "num.yaml")


def test_did_you_mean_for_presets_and_keys():
    with pytest.raises(ConfigError, match="'b2t26' is neither a file nor a preset; did you mean 'b2t25'"):
        load_config("b2t26")
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config("b2t25", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown section 'trian' in override 'trian.steps=3'; did you mean 'train'"):
        load_config("b2t25", ["trian.steps=3"])
    with pytest.raises(ConfigError, match="must be one of identity, nearest, got 'nearst'; did you mean 'nearest'"):
        load_config("b2t25", ["train.init_new_days=nearst"])


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("base: b2t25\ntrain:\n  steps: 42\n")
    assert main(["config", "show", str(f), "--set", "optim.lr=0.002"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_config(f, ["optim.lr=0.002"]).to_dict()
    assert shown["train"]["steps"] == 42 and shown["optim"]["lr"] == 0.002
    assert shown["train"]["init_from"] is None and shown["model"]["rnn_trainable"] is True  # off, as in the preset
    assert main(["config", "show", "b2t2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config 'b2t2' is neither a file nor a preset; did you mean 'b2t2") and \
        err.count("\n") == 1


def test_presets_keep_calibration_off():
    for name in ("b2t24", "b2t25", "demo"):
        c = load_config(name)
        assert (c.train.init_from, c.train.early_stopping, c.model.rnn_trainable, c.model.input_trainable) == \
            (None, False, True, True)
        assert (c.data.sessions, c.data.must_include_days, c.data.feature_subset, c.data.bad_trials_dict) == \
            (None, None, None, None)
