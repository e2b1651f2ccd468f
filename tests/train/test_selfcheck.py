"""The fast path checks itself before the run is built: a fast op that raises or returns wrong numbers warns, is
recorded in metrics.jsonl and the run is built with its reference, so its losses equal the reference path's."""
import json
from dataclasses import replace

import pytest
import torch

import fastdecoder.ops
from fastdecoder.nn import LayerNormGRU
from fastdecoder.parity import tiny_train_config
from fastdecoder.device import build_model
from fastdecoder.train.selfcheck import FastPathError, FastPathWarning, decide_backends, planned_backends
from fastdecoder.train.trainer import Trainer

real_augment = fastdecoder.ops.augment


def wrong_augment(x, *args, backend="auto", **kw):
    """The Triton backend returns shifted numbers (a broken kernel); the reference stays right."""
    out = real_augment(x, *args, backend=backend, **kw)
    return out + 0.5 if backend == "triton" else out


def raising_augment(x, *args, backend="auto", **kw):
    if backend == "triton":
        raise RuntimeError("simulated kernel launch failure")
    return real_augment(x, *args, backend=backend, **kw)


def _cfg(fast, **train):
    cfg = tiny_train_config("cpu", torch.float32, "gru", seed=2)
    assert cfg.augment.backend == "triton"  # the interpreter (conftest) runs the kernel on the CPU
    return replace(cfg, train=replace(cfg.train, fast=fast, fast_selfcheck=True, steps=4, log_every=1,
                                      eval_every=10**6, checkpoint_every=10**6, beam_width=0, plot=False, **train))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # synthetic data of out_dir-less trainers goes to ./runs


def _losses(history):
    return [r["loss"] for r in history if "loss" in r and "event" not in r and "val_per" not in r]


def test_healthy_fast_path_passes_its_check(tmp_path):
    tr = Trainer(_cfg(True), tmp_path / "run", progress=False)
    assert tr.backends.ops == "triton" and tr.resident is not None
    (ev,) = tr.selfcheck_events
    assert ev["event"] == "fast_selfcheck" and ev["failed"] == []
    assert set(ev["checked"]) == {"augment", "resident_batches", "fused_optimizer"}  # fused AdamW on the CPU too


@pytest.mark.parametrize("broken", [wrong_augment, raising_augment], ids=["wrong-numbers", "raises"])
def test_failing_op_warns_falls_back_and_losses_equal_reference(tmp_path, monkeypatch, broken):
    monkeypatch.setattr(fastdecoder.ops, "augment", broken)
    with pytest.warns(FastPathWarning, match=r"augment .*falls back"):
        fast = Trainer(_cfg(True), tmp_path / "fast", progress=False)
    assert fast.backends.ops == "reference" and fast.model.smoothing_backend == "reference"
    assert fast.augment.smoothing.backend == "reference"  # the augmentation's smoothing is the model's
    assert fast.resident is not None  # the ops that passed stay fast
    fast.fit()
    ref = Trainer(_cfg(False), tmp_path / "ref", progress=False)
    ref.fit()
    a, b = _losses(fast.history), _losses(ref.history)
    assert len(a) == 4 and a == b, (a, b)
    events = [json.loads(line) for line in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    fallback = [e for e in events if e.get("event") == "fast_op_fallback"]
    assert len(fallback) == 1 and fallback[0]["op"] == "augment", events
    assert ("max error" in fallback[0]["reason"]) if broken is wrong_augment else ("simulated" in fallback[0]["reason"])


def test_broken_ln_gru_falls_back(monkeypatch):
    cfg = _cfg(True)
    cfg = replace(cfg, model=replace(cfg.model, rnn="ln_gru"))
    dev = torch.device("cpu")
    planned = replace(planned_backends(cfg, dev), rnn="triton")  # on a GPU "auto" resolves to it; on the CPU we ask
    forward = LayerNormGRU.forward

    def bad_forward(self, x, h0=None):
        out, h_n = forward(self, x, h0)
        return (out * 1.01, h_n) if self.resolved_backend(x.device) == "triton" else (out, h_n)

    monkeypatch.setattr(LayerNormGRU, "forward", bad_forward)
    with pytest.warns(FastPathWarning, match="ln_gru forward max error"):
        b = decide_backends(cfg, dev, None, planned=planned)
    assert b.rnn == "reference" and b.ops == planned.ops  # only the failing op changes
    assert [e["op"] for e in b.events if e["event"] == "fast_op_fallback"] == ["ln_gru"]
    cfg = replace(cfg, model=replace(cfg.model, n_features=8, n_days=2))
    assert build_model(cfg, dev, b).rnn.backend == "reference"  # built with the decision, never changed afterwards


def test_the_decision_comes_before_the_build(monkeypatch, tmp_path):
    """The checks run on standalone inputs before any part of the run exists, and the run is built once from them."""
    import fastdecoder.train.trainer as trainer_mod

    order = []
    real_decide, real_build = trainer_mod.decide_backends, trainer_mod.build_run
    monkeypatch.setattr(trainer_mod, "decide_backends", lambda *a, **k: (order.append("decide"), real_decide(*a, **k))[1])
    monkeypatch.setattr(trainer_mod, "build_run", lambda *a, **k: (order.append("build"), real_build(*a, **k))[1])
    tr = Trainer(_cfg(True), tmp_path / "run", progress=False)
    assert order == ["decide", "build"]
    assert tr.backends.events and tr.backends.events[0]["event"] == "fast_selfcheck"


def test_fatal_setting_and_off_switch(monkeypatch):
    monkeypatch.setattr(fastdecoder.ops, "augment", wrong_augment)
    with pytest.raises(FastPathError, match="augment max error"):
        Trainer(_cfg(True, fast_selfcheck_fatal=True), None, progress=False)
    tr = Trainer(replace(_cfg(True), train=replace(_cfg(True).train, fast_selfcheck=False)), None, progress=False)
    assert tr.selfcheck_events == [] and tr.backends.ops == "triton"  # not checked: nothing falls back
