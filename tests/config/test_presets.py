"""Presets ship as package data (``fastdecoder/presets/*.yaml``); a YAML path still works as ``--config``."""
from __future__ import annotations

import pytest

from fastdecoder.config import ConfigError, load_config, preset_names, resolve_config_path


def test_presets_are_package_data():
    assert preset_names() == ["b2t24", "b2t25", "demo"]
    for name in preset_names():
        src = resolve_config_path(name)
        assert str(src).replace("\\", "/").endswith(f"fastdecoder/presets/{name}.yaml")
        assert load_config(name).name == name
    assert load_config("b2t25").model.hidden_size == 768 and load_config("b2t24").model.bidirectional


def test_a_yaml_path_is_a_config_and_wins_over_a_preset_name(tmp_path, monkeypatch):
    text = resolve_config_path("demo").read_text().replace("\n  steps: 400\n", "\n  steps: 7\n")
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert load_config(str(path)).train.steps == 7
    assert load_config(path, ["train.steps=3"]).train.steps == 3
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text(text)  # a file named like a preset is read as the file
    assert load_config("demo").train.steps == 7


def test_unknown_config_names_the_presets():
    with pytest.raises(ConfigError, match=r"'b2t26' is neither a file nor a preset; did you mean 'b2t25'\? \(presets: b2t24, b2t25, demo\)"):
        load_config("b2t26")
