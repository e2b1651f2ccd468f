"""``fastdecoder.testing.tiny.tiny_config``, the one builder of the suite's tiny training runs: sections merge into
TINY_RUN, ``data`` replaces its data section, ``DEFAULT`` and None fall back to the config's defaults, and TINY_RUN
itself is never changed."""
import copy

import yaml

from fastdecoder.config import Config, config_from_dict
from fastdecoder.testing.tiny import DEFAULT, TINY_RUN, TRAIN_DEFAULTS, tiny_config, tiny_data


def test_no_arguments_is_a_copy_of_the_tiny_run():
    cfg = tiny_config()
    assert cfg == TINY_RUN and cfg is not TINY_RUN and cfg["train"] is not TINY_RUN["train"]


def test_sections_merge_and_tiny_run_is_untouched():
    before = copy.deepcopy(TINY_RUN)
    words, overrides = [1, 2], [{"optim.lr": 0.01}]
    cfg = tiny_config("mine", model={"hidden_size": 8, "rnn": "ln_gru"}, stability={"monitor_after_steps": 3},
                      train={"member_overrides": overrides},
                      data=tiny_data(9, n_days=3, days_per_batch=3, words_per_sentence=words))
    assert cfg["name"] == "mine"
    assert cfg["model"] == {**TINY_RUN["model"], "hidden_size": 8, "rnn": "ln_gru"}
    assert cfg["stability"] == {"monitor_after_steps": 3}
    assert cfg["data"]["days_per_batch"] == 3 and cfg["data"]["synthetic"]["n_days"] == 3
    assert cfg["data"]["synthetic"]["seed"] == 9 and cfg["optim"] == TINY_RUN["optim"]
    cfg["model"]["hidden_size"] = 1
    cfg["data"]["synthetic"]["words_per_sentence"].append(5)
    cfg["train"]["member_overrides"][0]["optim.lr"] = 1.0
    assert TINY_RUN == before and words == [1, 2] and overrides == [{"optim.lr": 0.01}]


def test_data_replaces_the_whole_section():
    cfg = tiny_config(data={"path": "/data/b2t25", "days_per_batch": 2})
    assert cfg["data"] == {"path": "/data/b2t25", "days_per_batch": 2}  # no synthetic key left beside the path


def test_default_and_none_give_the_config_defaults():
    cfg = tiny_config(augment=None, optim={"lr": DEFAULT, "schedule": "constant"},
                      train=copy.deepcopy(TRAIN_DEFAULTS))  # a copied DEFAULT is still DEFAULT
    assert "augment" not in cfg and "lr" not in cfg["optim"] and cfg["optim"]["schedule"] == "constant"
    assert cfg["train"] == {"amp": "none"}
    defaults = Config()
    built = config_from_dict(cfg)
    assert built.augment == defaults.augment and built.optim.lr == defaults.optim.lr
    assert built.train.steps == defaults.train.steps and built.train.beam_width == defaults.train.beam_width
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg  # no sentinel left in what a test writes to a YAML file
