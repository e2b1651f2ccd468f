"""Parameter groups and LR schedules against their formulas."""
import math

import pytest
import torch

from fastdecoder.config import OptimConfig, load_config
from fastdecoder.model import GRUDecoder
from fastdecoder.train.optim import build_optimizer, lr_multiplier, param_groups, set_lr
from dataclasses import replace


def test_warmup_cosine_matches_nejm_formula():
    c = load_config("b2t25").optim
    r = c.lr_min / c.lr
    assert lr_multiplier(0, c) == 0.0
    assert lr_multiplier(500, c) == pytest.approx(0.5)
    assert lr_multiplier(1000, c) == pytest.approx(1.0)
    for s in (1000, 30000, 60500, 119999):
        p = (s - 1000) / (120000 - 1000)
        assert lr_multiplier(s, c) == pytest.approx(r + (1 - r) * 0.5 * (1 + math.cos(math.pi * p)))
    assert lr_multiplier(120000, c) == pytest.approx(r)
    assert lr_multiplier(200000, c) == pytest.approx(r)


def test_constant_and_linear():
    assert lr_multiplier(12345, OptimConfig(schedule="constant")) == 1.0
    c = OptimConfig(schedule="linear", lr=0.02, lr_min=0.0, warmup_steps=0, decay_steps=10000)
    assert lr_multiplier(0, c) == 1.0
    assert lr_multiplier(2500, c) == pytest.approx(0.75)
    assert lr_multiplier(10000, c) == pytest.approx(0.0)


def _tiny_model(preset):
    cfg = load_config(preset).model
    cfg = replace(cfg, n_features=8, n_days=3, hidden_size=16, num_layers=2, patch_size=4, patch_stride=2)
    return GRUDecoder(cfg)


def test_groups_b2t25_no_decay_for_bias_and_day():
    model = _tiny_model("b2t25")
    o = load_config("b2t25").optim
    groups = {g["name"]: g for g in param_groups(model, o)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("bias" in names[id(p)] or names[id(p)] == "h0" for p in groups["no_decay"]["params"])
    assert {names[id(p)] for p in groups["day"]["params"]} == {"day_weights", "day_biases"}
    assert groups["day"]["weight_decay"] == 0.0 and groups["main"]["weight_decay"] == 0.001
    n_total = sum(len(g["params"]) for g in groups.values())
    assert n_total == len(list(model.parameters()))
    opt = build_optimizer(model, o, torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    set_lr(opt, 500, o)
    assert all(g["lr"] == pytest.approx(0.0025) for g in opt.param_groups)


def test_groups_b2t24_coupled_adam_decays_everything():
    model = _tiny_model("b2t24")
    o = load_config("b2t24").optim
    opt = build_optimizer(model, o, torch.device("cpu"))
    assert type(opt) is torch.optim.Adam
    assert all(g["weight_decay"] == 1e-5 for g in opt.param_groups)
