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


# -- every schedule's curve against its formula ----------------------------------------------------------------------

def test_linear_with_warmup_formula():
    c = OptimConfig(schedule="linear", lr=0.02, lr_min=0.002, warmup_steps=100, decay_steps=1100)
    r = 0.002 / 0.02
    for s in (0, 1, 50, 99):
        assert lr_multiplier(s, c) == pytest.approx(s / 100)
    for s in (100, 350, 600, 1099, 1100, 5000):
        p = min(1.0, (s - 100) / 1000)
        assert lr_multiplier(s, c) == pytest.approx(1 + (r - 1) * p)


def _torch_lrs(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total,pct,div,final",
                         [(100, 0.3, 25.0, 1e4), (1000, 0.1, 25.0, 1000.0), (37, 0.5, 10.0, 5.0)])
def test_onecycle_matches_torch_onecycle_and_formula(total, pct, div, final):
    c = OptimConfig(schedule="onecycle", lr=0.01, decay_steps=total, onecycle_pct_start=pct, onecycle_div_factor=div,
                    onecycle_final_div_factor=final)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=total, pct_start=pct, div_factor=div,
                                                final_div_factor=final, anneal_strategy="cos", cycle_momentum=False)
    ref = _torch_lrs(opt, sched, total)
    ours = [0.01 * lr_multiplier(s, c) for s in range(total)]
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)
    # the formula itself: cosine up from lr/div to lr over pct*total - 1 steps, then down to lr/div/final
    up = pct * total - 1
    lo, hi, end = 0.01 / div, 0.01, 0.01 / div / final
    cos = lambda a, b, t: b + (a - b) / 2 * (math.cos(math.pi * t) + 1)
    for s in range(total):
        want = cos(lo, hi, s / up) if s <= up else cos(hi, end, (s - up) / (total - 1 - up))
        assert 0.01 * lr_multiplier(s, c) == pytest.approx(want, rel=1e-9)
    assert 0.01 * lr_multiplier(total + 50, c) == pytest.approx(end)  # flat after the cycle


def test_plateau_matches_reduce_lr_on_plateau():
    from fastdecoder.train.optim import LRSchedule

    pers = [0.9, 0.8, 0.8, 0.81, 0.79, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    for patience, cooldown in ((0, 0), (2, 0), (1, 2)):
        c = OptimConfig(schedule="plateau", lr=0.01, lr_min=0.001, plateau_factor=0.5, plateau_patience=patience,
                        plateau_cooldown=cooldown, plateau_threshold=1e-4)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.01)
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=patience,
                                                         threshold=1e-4, threshold_mode="rel", cooldown=cooldown,
                                                         min_lr=0.001)
        sch = LRSchedule(opt, c)
        n_events = 0
        for i, per in enumerate(pers):
            n_events += sch.on_eval(i, per) is not None
            ref.step(per)
            assert sch.apply(i) == pytest.approx(ref_opt.param_groups[0]["lr"]), (patience, cooldown, i)
        assert n_events == sch.plateau_reductions > 0
        assert sch.peak_lr >= 0.001 - 1e-12


def test_schedule_state_round_trip_and_adaptive_floor():
    from fastdecoder.train.optim import LRSchedule

    model = _tiny_model("b2t25")
    c = replace(load_config("b2t25").optim, schedule="plateau", lr=0.01, lr_min=1e-4)
    opt = build_optimizer(model, c, torch.device("cpu"))
    sch = LRSchedule(opt, c)
    for _ in range(3):
        assert sch.reduce_adaptive(0.5, min_lr=0.002) is not None
    assert sch.peak_lr == pytest.approx(0.002)         # 0.01 -> 0.005 -> 0.0025 -> floor 0.002
    assert sch.reduce_adaptive(0.5, min_lr=0.002) is None
    for i, per in enumerate([0.5, 0.6, 0.6, 0.6, 0.6]):
        sch.on_eval(i, per)
    state = sch.state_dict()
    sch2 = LRSchedule(build_optimizer(model, c, torch.device("cpu")), c)
    sch2.load_state_dict(state)
    assert sch2.state_dict() == state and sch2.apply(7) == sch.apply(7)
    assert all(g["lr"] == pytest.approx(g["base_lr"] * sch.scale) for g in opt.param_groups)  # day group keeps ratio


def test_describe_schedule_warns_when_it_does_not_fit_the_run():
    from fastdecoder.train.optim import describe_schedule

    text, warn = describe_schedule(load_config("b2t25").optim, 120000)
    assert "cosine decay to 0.0001 at step 120000" in text and warn is None
    text, warn = describe_schedule(load_config("b2t25").optim, 10000)
    assert "will not finish" in warn and "decay_steps (120000)" in warn
    assert "constant at 0.02" in describe_schedule(load_config("b2t24").optim, 10000)[0]


# -- groups per preset, parameter by parameter, against the references' rules ----------------------------------------

def _groups_by_name(model, o):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: ({names[id(p)] for p in g["params"]}, g["weight_decay"]) for g in param_groups(model, o)}


def test_groups_b2t25_parameter_by_parameter_as_nejm():
    """NEJM's create_optimizer: 'gru.bias*' and 'out.bias' undecayed, 'day_*' in their own group, everything else
    (GRU weights, head weight and the learnable h0) decayed with weight_decay."""
    model = _tiny_model("b2t25")
    o = load_config("b2t25").optim
    nejm_name = {n: n.replace("rnn.", "gru.").replace("head.", "out.") for n, _ in model.named_parameters()}
    bias = {n for n, m in nejm_name.items() if "gru.bias" in m or "out.bias" in m}
    day = {n for n, m in nejm_name.items() if "day_" in m}
    other = set(nejm_name) - bias - day
    assert "h0" in other and len(bias) == 5  # 2 layers x (bias_ih, bias_hh) + the head bias
    assert _groups_by_name(model, o) == {"main": (other, 0.001), "no_decay": (bias, 0.0), "day": (day, 0.0)}


def test_no_decay_h0_moves_only_h0():
    model = _tiny_model("b2t25")
    o = load_config("b2t25").optim
    shipped = _groups_by_name(model, o)
    fixed = _groups_by_name(model, replace(o, no_decay_h0=True))
    assert fixed["main"][0] == shipped["main"][0] - {"h0"}
    assert fixed["no_decay"][0] == shipped["no_decay"][0] | {"h0"}
    assert fixed["day"] == shipped["day"]
    assert [(k, v[1]) for k, v in fixed.items()] == [(k, v[1]) for k, v in shipped.items()]


def test_groups_b2t24_parameter_by_parameter_as_cffan():
    """cffan: one Adam group over model.parameters() with L2 decay 1e-5: every parameter decayed alike."""
    model = _tiny_model("b2t24")
    o = load_config("b2t24").optim
    groups = _groups_by_name(model, o)
    assert groups == {"main": ({n for n, _ in model.named_parameters()} - {"day_weights", "day_biases"}, 1e-5),
                      "day": ({"day_weights", "day_biases"}, 1e-5)}
    opt = build_optimizer(model, o, torch.device("cpu"))
    assert {g["lr"] for g in opt.param_groups} == {0.02} and type(opt) is torch.optim.Adam
