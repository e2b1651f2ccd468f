"""train.cuda_graphs (train/cuda_graphs.py) on the CPU: the refusals, and the bookkeeping around the capture.

The capture itself (torch.cuda.make_graphed_callables) needs a GPU: bench/gpu_check.py's ``graphs`` step trains with
and without graphs there. Here ``capture`` is replaced by an eager stand-in (the callable returned as it is, so a
"replay" is the module's forward): what is tested is what runs on the CPU as it runs on a GPU -- one capture per
input signature, the batch passed as tensors only and the day groups rebuilt from them, the trainer's call site
giving the losses of the plain step, and the dropout probe refusing a capture that repeats its masks.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastdecoder.config import config_from_dict, load_config
from fastdecoder.errors import UserError
from fastdecoder.ops.day_affine import plan_day_groups
from fastdecoder.train.cuda_graphs import StepGraphs, masks_vary, refusal

from test_fast_step import losses_of, make


class EagerCapture:
    """Stand-in for make_graphed_callables: records each capture's sample args and returns the module itself."""

    def __init__(self):
        self.samples = []

    def __call__(self, module, sample_args):
        assert all(isinstance(a, torch.Tensor) for a in sample_args)  # make_graphed_callables takes tensors only
        self.samples.append(sample_args)
        return module


def test_refusals_name_what_is_needed(monkeypatch, tmp_path):
    cfg = load_config("b2t25")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    bucketed = replace(cfg, train=replace(cfg.train, length_bucket=32, cuda_graphs=True))
    assert "CUDA device" in refusal(bucketed, cpu, True, True)
    assert "train.length_bucket > 0" in refusal(replace(cfg, train=replace(cfg.train, cuda_graphs=True)), cuda,
                                                 True, True)
    assert "train.fast: true" in refusal(bucketed, cuda, False, False)
    assert "deferred fast step" in refusal(bucketed, cuda, True, False)
    assert refusal(bucketed, cuda, True, True) is None
    # the trainer refuses on this CPU with the reason
    with pytest.raises(UserError, match="train.cuda_graphs needs a CUDA device"):
        make(monkeypatch, tmp_path, length_bucket=16, cuda_graphs=True)


def test_the_key_is_off_in_the_presets_and_validated():
    for preset in ("b2t25", "b2t24", "demo"):
        assert load_config(preset).train.cuda_graphs is False
    raw = {"train": {"cuda_graphs": True}}
    assert config_from_dict(raw).train.cuda_graphs is True
    with pytest.raises(UserError, match="cuda_graphs"):
        config_from_dict({"train": {"cuda_graphs": "sometimes"}})


def _tiny_model(seed, dropout=0.0):
    from fastdecoder.model import GRUDecoder

    torch.manual_seed(seed)
    cfg = replace(load_config("b2t25").model, n_features=6, n_days=5, hidden_size=8, num_layers=1,
                  patch_size=3, patch_stride=2, input_dropout=dropout)
    model = GRUDecoder(cfg, rnn_backend="reference")
    with torch.no_grad():
        model.day_weights.add_(0.3 * torch.randn_like(model.day_weights))
    return cfg, model


@pytest.mark.parametrize("days", [[3, 3, 1, 1], [2, 2, 2, 0], [4, 1, 4, 1], [0, 1, 2, 3]])
def test_one_capture_per_signature_and_the_replay_equals_the_model(days, test_seed):
    cfg, model = _tiny_model(test_seed)
    capture = EagerCapture()
    graphs = StepGraphs(model, cfg, None, "cpu", capture=capture)
    g = torch.Generator().manual_seed(test_seed)
    day = torch.tensor(days)
    for T in (16, 16, 24, 16, 24):
        x = torch.randn(4, T, 6, generator=g)
        lens = torch.full((4,), T)
        groups = plan_day_groups(np.array(days), 5)
        # a day tensor the groups contradict: the output is right only if the rebuilt groups are what ran
        got = graphs(x, torch.zeros_like(day), lens, groups)
        got.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        want = model(x, day, lens)  # CPU day_idx: grouped on the fly, equal to the gather (test_day_affine)
        want.square().sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for a, p in zip(grads, model.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)
        model.zero_grad(set_to_none=True)
    assert graphs.captures == 2 and len(graphs.shapes) == 2, graphs.shapes
    # the capture got its own copies of the inputs (static buffers), never the batch's tensors
    for sample in capture.samples:
        assert not any(a.requires_grad for a in sample)


def test_the_call_site_gives_the_losses_of_the_plain_step(monkeypatch, tmp_path):
    plain = losses_of(make(monkeypatch, tmp_path, length_bucket=16), 8)
    tr = make(monkeypatch, tmp_path, length_bucket=16)
    tr.step_fn.graphs = StepGraphs(tr.model, tr.cfg.model, tr.amp_dtype, tr.device, capture=EagerCapture())
    graphed = losses_of(tr, 8)
    assert len(plain) == 8 and np.isfinite(plain).all()
    np.testing.assert_allclose(graphed, plain, rtol=1e-6)
    buckets = {s[0][0][1] for s in tr.step_fn.graphs.shapes}
    assert tr.step_fn.graphs.captures == len(tr.step_fn.graphs.shapes) == len(buckets) and all(t % 16 == 0 for t in buckets)


def test_a_capture_that_repeats_its_dropout_masks_is_refused(test_seed):
    class FrozenCapture:
        """A stand-in replay that returns the capture's output again (what a graph with frozen RNG would)."""

        def __call__(self, module, sample_args):
            out = module(*sample_args)
            return lambda *a: out

    assert masks_vary(EagerCapture(), "dropout", "cpu") and masks_vary(EagerCapture(), "cudnn_gru", "cpu")
    assert not masks_vary(FrozenCapture(), "dropout", "cpu")
    cfg, model = _tiny_model(test_seed, dropout=0.2)
    graphs = StepGraphs(model, cfg, None, "cpu", capture=FrozenCapture())
    with pytest.raises(UserError, match="same dropout masks.*model.input_dropout"):
        graphs(torch.randn(2, 8, 6), torch.tensor([0, 1]), torch.tensor([8, 8]), None)
    gru_cfg = replace(cfg, rnn="gru", rnn_dropout=0.4, num_layers=2, input_dropout=0.0)
    with pytest.raises(UserError, match="cuDNN's RNN dropout"):
        StepGraphs(model, gru_cfg, None, "cpu", capture=FrozenCapture()).check_dropout()
    # no dropout in the model: nothing to probe
    StepGraphs(model, replace(cfg, input_dropout=0.0), None, "cpu", capture=FrozenCapture()).check_dropout()


@pytest.mark.gpu
def test_real_capture_on_cuda_equals_the_eager_model(test_seed):
    """The GPU side (run by the GPU check's gpu_tests step): captures replay the eager forward and backward (fp32,
    cuDNN GRU), one per shape, and a captured dropout draws fresh masks at each replay (both probes)."""
    cfg, model = _tiny_model(test_seed)
    model = model.cuda()
    graphs = StepGraphs(model, cfg, None, "cuda")
    g = torch.Generator().manual_seed(test_seed)
    days = np.array([3, 3, 1, 1])
    for T in (16, 24, 16, 24):
        x = torch.randn(4, T, 6, generator=g).cuda()
        lens = torch.full((4,), T, device="cuda")
        day = torch.from_numpy(days).cuda()
        got = graphs(x, day, lens, plan_day_groups(days, 5, "cuda"))
        got.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        want = model(x, day, lens)
        want.square().sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        for a, p in zip(grads, model.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)
        model.zero_grad(set_to_none=True)
    assert graphs.captures == 2
    capture = StepGraphs._make_graphed
    assert masks_vary(capture, "dropout", "cuda"), "a CUDA graph replayed the same nn.Dropout masks"
    assert masks_vary(capture, "cudnn_gru", "cuda"), "a CUDA graph replayed the same cuDNN GRU dropout masks"


def test_bench_train_applies_graphs_to_the_fast_path_only(monkeypatch, tmp_path):
    from fastdecoder.bench import train_speed as bench

    tr = make(monkeypatch, tmp_path)
    cfg = replace(tr.cfg, train=replace(tr.cfg.train, length_bucket=16, cuda_graphs=True))
    ran = []
    real = bench.run_path
    monkeypatch.setattr(bench, "run_path", lambda c, fast, *a: (ran.append(fast), real(c, fast, *a))[1])
    with pytest.raises(UserError, match="train.cuda_graphs needs a CUDA device"):
        bench.bench_train(cfg, steps=1, warmup=0)
    assert ran == [False, True]  # the reference path ran (graphs are not its option); the fast path refused here
