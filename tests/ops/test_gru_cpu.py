"""ops.gru.cpu (the fast path's CPU recurrence) against torch.nn.GRU: outputs and every gradient to fp32 round-off
(1e-5 relative to the largest magnitude) on fresh random inputs of several shapes; the same dropout draws; the
model uses it only off the reference backend, training, on the CPU."""
from dataclasses import replace

import pytest
import torch

from fastdecoder.ops.gru.cpu import gru_forward, supports


def _close(a, b, what):
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), what
    err = (a - b).abs().max() / b.abs().max().clamp(min=1e-12)
    assert err <= 1e-5, f"{what}: max relative error {err:.2e}"


@pytest.mark.parametrize("B,N,I,H,layers,with_h0", [(3, 7, 10, 8, 1, False), (5, 12, 24, 16, 2, True),
                                                    (1, 1, 4, 5, 3, True)])
def test_outputs_and_gradients_equal_nn_gru(B, N, I, H, layers, with_h0, test_seed):
    torch.manual_seed(test_seed)
    rnn = torch.nn.GRU(I, H, layers, batch_first=True)
    x0 = torch.randn(B, N, I)
    h00 = torch.randn(layers, B, H) if with_h0 else None
    dy = torch.randn(B, N, H)
    results = []
    for fn in (lambda x, h: gru_forward(rnn, x, h), lambda x, h: rnn(x, h)[0]):
        x = x0.clone().requires_grad_()
        h0 = h00.clone().requires_grad_() if with_h0 else None
        rnn.zero_grad()
        y = fn(x, h0)
        y.backward(dy)
        grads = [x.grad] + ([h0.grad] if with_h0 else []) + [p.grad.clone() for p in rnn.parameters()]
        results.append([y.detach()] + grads)
    names = ["y", "dx"] + (["dh0"] if with_h0 else []) + [n for n, _ in rnn.named_parameters()]
    for name, got, want in zip(names, *results):
        _close(got, want, f"{name} (B={B} N={N} I={I} H={H} layers={layers})")


def test_inter_layer_dropout_draws_as_nn_gru(test_seed):
    rnn = torch.nn.GRU(6, 8, 3, batch_first=True, dropout=0.4).train()
    x = torch.randn(4, 9, 6)
    torch.manual_seed(test_seed)
    want = rnn(x)[0]
    torch.manual_seed(test_seed)
    got = gru_forward(rnn, x)
    _close(got, want, "outputs with dropout")
    assert not torch.allclose(want, rnn.eval()(x)[0])  # the dropout did act


def test_supports_only_unidirectional_batch_first_gru():
    assert supports(torch.nn.GRU(4, 3, batch_first=True))
    assert not supports(torch.nn.GRU(4, 3, batch_first=True, bidirectional=True))
    assert not supports(torch.nn.GRU(4, 3))
    assert not supports(torch.nn.LSTM(4, 3, batch_first=True))


def test_model_runs_it_only_off_the_reference_backend(monkeypatch, test_seed):
    from fastdecoder.config import load_config
    from fastdecoder.model import GRUDecoder
    from fastdecoder.ops.gru import cpu as gru_cpu

    calls = []
    real = gru_cpu.gru_forward
    monkeypatch.setattr(gru_cpu, "gru_forward", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(test_seed)
    cfg = replace(load_config("b2t25").model, n_features=6, n_days=2, hidden_size=8, num_layers=2,
                  input_dropout=0.0, rnn_dropout=0.0)
    fast, ref = GRUDecoder(cfg, rnn_backend="auto"), GRUDecoder(cfg, rnn_backend="reference")
    ref.load_state_dict(fast.state_dict())
    x, day = torch.randn(3, 30, 6), torch.tensor([0, 1, 1])
    y_fast, y_ref = fast(x, day), ref(x, day)
    assert calls == [1]
    _close(y_fast, y_ref, "logits fast vs reference backend")
    with torch.no_grad():
        fast(x, day)
    assert calls == [1]  # inference runs nn.GRU itself
