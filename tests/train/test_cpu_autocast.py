"""bf16 autocast on the CPU (device.py's rule): on exactly for ``train.amp: bf16`` + the fast path + a CPU with
native bf16 GEMMs (+ an ``nn.GRU`` model), off on the reference path; training and evaluation follow the one rule;
under it ops.gru.cpu's recurrence stays fp32 while its input projection runs in bf16; a fast bf16 step trains like
the fp32 reference within bf16 tolerance (2e-2 relative over the first steps)."""
import logging
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdecoder.config import config_from_dict
from fastdecoder.evaluation import EvalSettings
from fastdecoder.ops.gru.cpu import gru_forward
from fastdecoder import device as device_mod
from fastdecoder.device import autocast_dtype, cpu_bf16_gemms

from fastdecoder.testing.tiny import tiny_config

CPU = torch.device("cpu")
BF16_REL = 2e-2  # bf16 (8 mantissa bits) through a few GEMMs: losses and outputs relative to their magnitude


def cfg_with(fast, amp, rnn="gru"):
    cfg = config_from_dict(tiny_config())
    return replace(cfg, model=replace(cfg.model, rnn=rnn), train=replace(cfg.train, fast=fast, amp=amp))


@pytest.fixture()
def bf16_cpu(monkeypatch):
    """This CPU counts as having native bf16 GEMMs (autocast computes the same, emulated or not)."""
    monkeypatch.setattr(device_mod, "cpu_bf16_gemms", lambda: (True, ""))


@pytest.mark.parametrize("fast,amp,rnn,want", [
    (True, "bf16", "gru", torch.bfloat16),
    (None, "bf16", "gru", None),          # train.fast unset: the reference path on the CPU
    (False, "bf16", "gru", None),         # the reference path: fp32, as the reference trainers run on a CPU
    (True, "none", "gru", None),
    (True, "fp16", "gru", None),          # fp16 autocasts on CUDA only
    (True, "bf16", "ln_gru", None),       # CPU autocast would put the LayerNorms in bf16
])
def test_cpu_autocast_rule_and_eval_follow_it(bf16_cpu, fast, amp, rnn, want):
    cfg = cfg_with(fast, amp, rnn)
    assert autocast_dtype(cfg, CPU) == want
    assert EvalSettings.from_config(cfg, CPU).autocast_dtype == want
    assert autocast_dtype(cfg, torch.device("cuda")) == device_mod.AUTOCAST_DTYPES.get(amp)  # CUDA unchanged


def test_no_native_bf16_stays_fp32_and_says_why_once(monkeypatch, caplog):
    monkeypatch.setattr(device_mod, "cpu_bf16_gemms", lambda: (False, "no native bf16 here (test)"))
    monkeypatch.setattr(device_mod, "_said", set())
    cfg = cfg_with(True, "bf16")
    with caplog.at_level(logging.WARNING, logger="fastdecoder.train"):
        assert autocast_dtype(cfg, CPU) is None and EvalSettings.from_config(cfg, CPU).autocast_dtype is None
    said = [r.getMessage() for r in caplog.records if "no native bf16 here (test)" in r.getMessage()]
    assert len(said) == 1 and "fp32" in said[0], said


def test_the_probe_answers_from_torch():
    ok, why = cpu_bf16_gemms()
    assert isinstance(ok, bool) and (ok or why)
    if ok:
        assert torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class DtypesOf(TorchDispatchMode):
    """Counts (op, dtype of its inputs' first tensor, (rows, cols) of the second) of the GEMM ops it sees."""

    def __init__(self):
        super().__init__()
        self.seen = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in ("mm", "addmm", "bmm"):
            mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 2]
            self.seen[(name, mats[0].dtype, tuple(mats[-1].shape))] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("B,N,I,H,layers", [(3, 6, 40, 8, 1), (4, 5, 24, 16, 2)])
def test_recurrence_fp32_input_projection_bf16_under_autocast(B, N, I, H, layers, test_seed):
    torch.manual_seed(test_seed)
    rnn = torch.nn.GRU(I, H, layers, batch_first=True)
    x0, h0, dy = torch.randn(B, N, I), torch.randn(layers, B, H), torch.randn(B, N, H)
    results = []
    for bf16 in (False, True):
        x = x0.clone().requires_grad_()
        rnn.zero_grad()
        with DtypesOf() as seen:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = gru_forward(rnn, x, h0)
            y.backward(dy)
        results.append((y.detach(), x.grad, [p.grad.clone() for p in rnn.parameters()], seen.seen))
    (y32, dx32, g32, _), (y16, dx16, g16, seen) = results
    assert y16.dtype == torch.float32  # the recurrence's output: fp32
    per_step = {k: v for k, v in seen.items() if k[0] == "addmm" and v >= N}  # forward h W_hh^T, backward dh
    assert per_step and all(dt == torch.float32 for (_, dt, _) in per_step), seen
    projection = [k for k in seen if k[2] in ((I, 3 * H), (3 * H, I))]  # layer 0's input GEMMs (fwd, dX)
    assert projection and all(dt == torch.bfloat16 for (_, dt, _) in projection), seen
    for what, got, want in [("y", y16, y32), ("dx", dx16, dx32)] + [(n, a, b) for (n, _), a, b in
                                                                    zip(rnn.named_parameters(), g16, g32)]:
        assert torch.isfinite(got).all(), what
        err = float((got.float() - want).abs().max() / want.abs().max().clamp(min=1e-12))
        assert err <= BF16_REL, f"{what}: bf16 vs fp32 max relative error {err:.2e} (B={B} N={N} I={I} H={H})"


def test_fast_bf16_losses_follow_the_fp32_reference(bf16_cpu, monkeypatch, tmp_path):
    from fastdecoder.train.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    losses, pers = {}, {}
    for name, fast in (("reference", False), ("fast bf16", True)):
        cfg = cfg_with(fast, "bf16")
        cfg = replace(cfg, augment=replace(cfg.augment, noise="philox"),  # the same noise on both paths
                      train=replace(cfg.train, log_every=4, eval_every=10**6, checkpoint_every=10**6,
                                    fast_selfcheck=False))
        tr = Trainer(cfg, None, progress=False)
        assert tr.amp_dtype == tr.eval_settings.autocast_dtype == (torch.bfloat16 if fast else None)
        out = []
        tr.run(max_steps=4, on_read=lambda outs: out.extend(o["loss"] for o in outs))
        losses[name], pers[name] = out, tr.evaluate().per  # evaluation under the run's autocast
    ref, bf = losses["reference"], losses["fast bf16"]
    assert len(ref) == len(bf) == 4 and all(math.isfinite(v) for v in ref + bf), losses
    rel = max(abs(a - b) / abs(b) for a, b in zip(bf, ref))
    assert 0 < rel <= BF16_REL, (rel, losses)  # not 0: the bf16 step did compute in bf16
    assert all(0 <= p <= 1.5 for p in pers.values()), pers  # finite (NaN fails), an error rate
