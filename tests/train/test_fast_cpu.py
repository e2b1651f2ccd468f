"""``train.fast: true`` on the CPU is a working configuration: the fast step (resident batches, the grouped day layer,
ops.gru.cpu's recurrence; Triton augmentation through the interpreter when ``augment.backend: triton``), and the
``train.fast`` default rule (auto = on CUDA only; see docs/fast-path.md)."""
import math
from dataclasses import replace

import pytest
import torch

from fastdecoder.config import config_from_dict
from fastdecoder.device import use_fast_path
from fastdecoder.train.trainer import Trainer

from fastdecoder.testing.tiny import tiny_config


@pytest.fixture()
def tiny_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # synthetic data of out_dir-less trainers goes to ./runs/synthetic
    return config_from_dict(tiny_config())


def test_default_rule_is_cuda_only(tiny_cfg):
    auto = replace(tiny_cfg, train=replace(tiny_cfg.train, fast=None))
    assert use_fast_path(auto, torch.device("cuda")) and not use_fast_path(auto, torch.device("cpu"))
    on = replace(tiny_cfg, train=replace(tiny_cfg.train, fast=True))
    assert use_fast_path(on, torch.device("cpu"))


@pytest.mark.parametrize("augment_backend", ["auto", "triton"])
def test_fast_step_trains_on_the_cpu(tiny_cfg, monkeypatch, augment_backend):
    from fastdecoder.ops.gru import cpu as gru_cpu

    calls = []
    real = gru_cpu.gru_forward
    monkeypatch.setattr(gru_cpu, "gru_forward", lambda *a: calls.append(1) or real(*a))
    cfg = replace(tiny_cfg, train=replace(tiny_cfg.train, fast=True),
                  augment=replace(tiny_cfg.augment, backend=augment_backend))
    tr = Trainer(cfg, None, progress=False)
    assert tr.backends.fast and tr.resident is not None and tr.device.type == "cpu"
    assert tr.backends.ops == augment_backend  # triton: the kernel through the interpreter (tests/conftest.py)
    before = [p.detach().clone() for p in tr.model.parameters()]
    outs = []  # the fast step defers its loss and skip flag to the next read (run() settles them)
    tr.run(max_steps=3, on_read=outs.extend)
    assert len(calls) == 3  # every training forward ran the fast recurrence
    assert len(outs) == 3 and all(math.isfinite(o["loss"]) and not o["skipped"] for o in outs), outs
    assert any(not torch.equal(a, p) for a, p in zip(before, tr.model.parameters()))
