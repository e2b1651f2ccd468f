"""Stability guards and monitors: planted NaN gradients are skipped and counted, planted explosions lower the LR,
a model forced to output blanks trips the collapse monitor, infeasible targets are reported by trial id."""
import copy
import json
import logging
import math

import pytest
import torch

from fastdecoder.config import config_from_dict
from fastdecoder.data import collate
from fastdecoder.train.monitors import CollapseMonitor, prediction_stats
from fastdecoder.train.stability import NonFiniteError
from fastdecoder.train.run_data import prepare_dataset
from fastdecoder.train.trainer import Trainer
from fastdecoder.config import StabilityConfig

from fastdecoder.testing.tiny import DEFAULT, tiny_config, tiny_data

BASE = tiny_config(
    "tiny-stability", data=tiny_data(5), model={"hidden_size": 24},
    augment={"white_noise_std": 0.1, "constant_offset_std": DEFAULT, "random_cut": 2},
    optim={"lr": 0.01, "schedule": "constant", "grad_clip": 10.0, "warmup_steps": DEFAULT, "decay_steps": DEFAULT,
           "lr_min": DEFAULT},
    train={"steps": 12, "batch_size": 8, "eval_every": 1000, "log_every": 4, "checkpoint_every": 1000,
           "beam_width": 0, "plot": False},
)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    _, path = prepare_dataset(config_from_dict(BASE), tmp_path_factory.mktemp("stab_data"))
    return str(path)


def make_cfg(data_path, **sections):
    raw = copy.deepcopy(BASE)
    raw["data"].pop("synthetic")
    raw["data"]["path"] = data_path
    for sec, kv in sections.items():
        raw.setdefault(sec, {}).update(kv)
    return config_from_dict(raw)


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_planted_nan_gradient_is_skipped_without_touching_weights(data_path):
    trainer = Trainer(make_cfg(data_path), None, progress=False)
    plant = {"on": False}
    trainer.model.head.weight.register_hook(lambda g: torch.full_like(g, float("nan")) if plant["on"] else g)

    def step():
        out = trainer.train_step(collate(trainer.train_split, next(trainer.sampler)))
        return out

    for _ in range(3):
        assert not step()["skipped"]
    before, opt_before = params(trainer), copy.deepcopy(trainer.optimizer.state_dict()["state"])
    plant["on"] = True
    out = step()
    assert out["skipped"] and math.isnan(out["grad_norm"]) and math.isfinite(out["loss"])
    assert trainer.guard.skipped == 1 and trainer.guard.consecutive == 1
    assert out["events"][0]["event"] == "skipped_update" and out["events"][0]["nonfinite_grads"] == ["head.weight"]
    after = params(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)  # neither weights ...
    opt_after = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_before[k]["exp_avg"], opt_after[k]["exp_avg"]) and
               float(opt_before[k]["step"]) == float(opt_after[k]["step"]) for k in opt_before)  # ... nor Adam moved
    plant["on"] = False
    out = step()
    assert not out["skipped"] and trainer.guard.consecutive == 0 and trainer.guard.skipped == 1
    assert not torch.equal(before["head.weight"], trainer.model.head.weight)


def test_skips_are_counted_in_metrics_and_summary(data_path, tmp_path, caplog):
    trainer = Trainer(make_cfg(data_path), tmp_path, progress=False)
    trainer.model.head.weight.register_hook(
        lambda g: torch.full_like(g, float("inf")) if trainer.step in (5, 6) else g)
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        summary = trainer.fit()
    assert summary["skipped_updates"] == 2 and summary["steps"] == 12
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skips = [r for r in recs if r.get("event") == "skipped_update"]
    assert [r["step"] for r in skips] == [6, 7] and skips[0]["nonfinite_grads"] == ["head.weight"]
    assert [r["skipped"] for r in recs if "loss" in r and "event" not in r] == [0, 2, 2]
    assert "step 6: non-finite gradient" in caplog.text and "update skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_updates"] == 2


def test_abort_on_nonfinite_and_consecutive_limit(data_path, tmp_path):
    trainer = Trainer(make_cfg(data_path, stability={"abort_on_nonfinite": True}), tmp_path, progress=False)
    trainer.model.head.weight.register_hook(lambda g: g * float("nan") if trainer.step == 2 else g)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite gradient .*abort_on_nonfinite"):
        trainer.fit()
    assert "aborted" in json.loads((tmp_path / "summary.json").read_text())

    trainer = Trainer(make_cfg(data_path, stability={"max_consecutive_skips": 3}), None, progress=False)
    trainer.model.head.weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteError, match="3 updates in a row were skipped"):
        trainer.fit()
    assert trainer.step == 2  # the aborted third step never completed


def test_planted_explosion_triggers_adaptive_lr_reduction(data_path, tmp_path, caplog):
    stab = {"adaptive_lr": True, "grad_norm_threshold": 100.0, "instability_events": 2, "instability_window": 5,
            "lr_reduction_factor": 0.5, "min_lr": 0.003, "max_lr_reductions": 5}
    trainer = Trainer(make_cfg(data_path, stability=stab, train={"steps": 14}), tmp_path, progress=False)
    trainer.model.head.weight.register_hook(lambda g: g * 1e6 if trainer.step >= 4 else g)
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        summary = trainer.fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    red = [r for r in recs if r.get("event") == "lr_reduction"]
    # events at steps 5, 6 -> 0.01 -> 0.005; steps 7, 8 -> floored at min_lr 0.003; then no further reduction
    assert [r["step"] for r in red] == [6, 8]
    assert red[0]["lr_from"] == pytest.approx(0.01) and red[0]["lr_to"] == pytest.approx(0.005)
    assert red[1]["lr_to"] == pytest.approx(0.003)
    assert summary["lr_reductions"] == 2 and summary["final_lr"] == pytest.approx(0.003)
    assert summary["high_grad_norm_steps"] == 10 and summary["skipped_updates"] == 0
    assert "adaptive LR" in caplog.text and "min_lr" in caplog.text
    assert all(g["lr"] == pytest.approx(0.003) for g in trainer.optimizer.param_groups)
    # the clipped updates stayed finite
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_max_lr_reductions_is_respected(data_path):
    stab = {"adaptive_lr": True, "grad_norm_threshold": 100.0, "instability_events": 1, "lr_reduction_factor": 0.5,
            "min_lr": 0.0, "max_lr_reductions": 3}
    trainer = Trainer(make_cfg(data_path, stability=stab, train={"steps": 8}), None, progress=False)
    trainer.model.head.weight.register_hook(lambda g: g * 1e6)
    summary = trainer.fit()
    assert summary["lr_reductions"] == 3 and summary["final_lr"] == pytest.approx(0.01 / 8)


def test_prediction_stats_and_diversity_monitor(caplog):
    logits = torch.zeros(2, 5, 41)
    logits[:, :, 0] = 1.0
    logits[0, 1, 7] = 5.0
    logits[1, 0, 9] = 5.0
    logits[1, 4, 3] = 5.0  # beyond the valid length of trial 1
    bf, distinct = prediction_stats(logits, torch.tensor([5, 3]))
    assert bf == pytest.approx(6 / 8) and distinct == 2
    mon = CollapseMonitor(StabilityConfig(monitor_after_steps=10, min_distinct_phonemes=5))
    assert mon.check(5, 1.0, 0) == []  # before monitor_after_steps: quiet
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        ev = mon.check(10, 0.5, 3)
    assert [e["event"] for e in ev] == ["low_diversity"] and "LOW OUTPUT DIVERSITY" in caplog.text
    assert mon.check(11, 0.5, 3) == []  # warned once
    assert [e["event"] for e in mon.check(12, 0.5, 20)] == ["low_diversity_recovered"]
    state = mon.state_dict()
    mon2 = CollapseMonitor(StabilityConfig())
    mon2.load_state_dict(state)
    assert mon2.state_dict() == state


def test_model_forced_to_blanks_trips_the_collapse_monitor(data_path, tmp_path, caplog):
    cfg = make_cfg(data_path, optim={"lr": 1e-9}, stability={"monitor_after_steps": 0},
                   train={"steps": 4, "eval_every": 2})
    trainer = Trainer(cfg, tmp_path, progress=False)
    with torch.no_grad():
        trainer.model.head.bias[0] = 50.0  # blank wins every frame
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        summary = trainer.fit()
    assert summary["val_blank_fraction"] == 1.0 and summary["monitor_warnings"] == 1
    assert caplog.text.count("BLANK COLLAPSE") == 1 and "still in blank collapse" in caplog.text
    assert "white_noise_std 1.0" in caplog.text and "ctc.output_lengths" in caplog.text  # suggested fixes
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    col = [r for r in recs if r.get("event") == "blank_collapse"]
    assert len(col) == 1 and col[0]["step"] == 2 and col[0]["blank_fraction"] == 1.0
    assert all(r["train_blank_fraction"] == 1.0 for r in recs if "train_blank_fraction" in r)


def test_infeasible_targets_are_reported_by_trial_id(data_path, caplog):
    cfg = make_cfg(data_path, model={"patch_stride": 60}, train={"steps": 2})
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        trainer = Trainer(cfg, None, progress=False)
    assert trainer.infeasible_trials > 0
    assert "targets longer than their output frames" in caplog.text
    assert any(tid in caplog.text for tid in trainer.train_split.trial_ids)
    assert "phonemes," in caplog.text and "frames)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        summary = trainer.fit()
    # zero_infinity is off (b2t25): such batches have an infinite loss and are skipped, saying why
    assert summary["skipped_updates"] >= 1 and summary["infeasible_trials"] == trainer.infeasible_trials
    assert "non-finite loss" in caplog.text and "targets longer than their output frames" in caplog.text


def test_host_infeasible_check_equals_the_device_one(data_path):
    """The per-step infeasible-target check reads host lengths; it must flag exactly what the device tensors say."""
    from fastdecoder.losses import infeasible_targets, output_lengths

    cfg = make_cfg(data_path, model={"patch_stride": 24}, augment={"random_cut": 8}, train={"steps": 10})
    trainer = Trainer(cfg, None, progress=False)
    feasibility = trainer.step_fn.feasibility
    host_check, seen = feasibility.check, []

    def both(batch, max_frames):  # the augmented batch: its lengths are after its cut
        bad, frames = host_check(batch, max_frames)
        cut, lens = batch.cut, batch.x_lens
        n = output_lengths(lens, cfg.model.patch_size, cfg.model.patch_stride, cfg.ctc.output_lengths, max_frames)
        assert frames.tolist() == n.tolist()
        assert bad.tolist() == infeasible_targets(n, batch.y, batch.y_lens).tolist()
        seen.append((cut, int(bad.sum())))
        return bad, frames

    feasibility.check = both
    for _ in range(10):
        trainer.train_step(trainer.next_batch())
    assert trainer.step == 10 and len(seen) == 10
    assert any(c for c, _ in seen) and any(k for _, k in seen), seen  # cuts happened and some targets did not fit
