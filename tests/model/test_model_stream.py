"""The model's own streaming API and inference path: ``GRUDecoder.init_state`` / ``forward_chunk`` against
``GRUDecoder.predict`` on the whole trial, and ``predict`` against the evaluation path (one ``infer``).

Tiny random models of several shapes (smoothing in the data or in the model or none, patch geometry, GRU or
LayerNorm-GRU, learnt initial state); equality to fp32 round-off, and a NaN never passes (``assert_same``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fastdecoder.config import load_config
from fastdecoder.model import GRUDecoder

C, DAYS = 5, 3

SHAPES = {
    "b2t25": dict(),
    "in-model smoothing": dict(smoothing="model", smooth_taps="b2t24"),
    "no smoothing, K=3 S=5, zero h0": dict(smoothing="none", patch_size=3, patch_stride=5, learn_h0=False),
    "ln_gru, K=4 S=2": dict(rnn="ln_gru", patch_size=4, patch_stride=2),
    "K=1 S=1, 3 layers": dict(patch_size=1, patch_stride=1, num_layers=3),
}


def small_model(seed: int, **keys) -> GRUDecoder:
    torch.manual_seed(seed)
    cfg = replace(load_config("b2t25").model, **{"n_features": C, "n_days": DAYS, "hidden_size": 12, "num_layers": 2,
                                                 **keys})
    model = GRUDecoder(cfg, rnn_backend="reference").eval()
    with torch.no_grad():
        model.head.weight.mul_(4.0)
        model.day_weights.add_(0.3 * torch.randn_like(model.day_weights))
    return model


def assert_same(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.isfinite(got).all() and np.isfinite(want).all(), f"{what}: non-finite values"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)


def predicted(model, x: torch.Tensor, day: int) -> np.ndarray:
    lp, n = model.predict(x[None], torch.tensor([day]))
    return lp[0, : int(n[0])].numpy()


def chunked(model, x: torch.Tensor, day: int, chunk, recurrence=None):
    """(log-probs of all chunks and the final flush, the final state)."""
    state = model.init_state(day)
    step = x.shape[0] if chunk is None else chunk
    out = []
    for i in range(0, x.shape[0], step):
        lp, state = model.forward_chunk(x[i:i + step], state, recurrence=recurrence)
        out.append(lp)
    lp, state = model.forward_chunk(x[:0], state, final=True, recurrence=recurrence)
    out.append(lp)
    return torch.cat(out).numpy(), state


@pytest.mark.parametrize("shape", list(SHAPES))
def test_chunks_equal_predict(shape, rng, test_seed):
    model = small_model(test_seed % 1000, **SHAPES[shape])
    K = model.cfg.patch_size
    for T in (K, 37, 64):
        x = torch.from_numpy(rng.standard_normal((T, C)).astype(np.float32))
        day = int(rng.integers(DAYS))
        want = predicted(model, x, day)
        for chunk in (1, 3, 7, None):
            got, state = chunked(model, x, day, chunk)
            assert_same(got, want, f"{shape}, T={T}, chunk {chunk} (seed {test_seed})")
            assert state.bins == T and state.frames == want.shape[0] and state.finished
            assert state.module_frames == want.shape[0] and state.backend_frames == 0


class StepByStep:
    """A recurrence backend that runs the GRU one frame at a time through torch (chunks of <= 2 frames only)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rnn, windows, h):
        if windows.shape[0] > 2:
            return None
        self.calls += 1
        out = []
        for w in windows:
            y, hn = rnn(w[None, None], h[:, None])
            h.copy_(hn[:, 0])
            out.append(y[0, 0])
        return torch.stack(out)


@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_a_recurrence_backend_carries_the_same_state(chunk, rng, test_seed):
    """Chunks the backend takes and chunks it declines (the model's own GRU) share the state; native step too."""
    from fastdecoder.stream.frontend import NativeRecurrence

    model = small_model(test_seed % 1000, learn_h0=True)
    x = torch.from_numpy(rng.standard_normal((71, C)).astype(np.float32))
    want = predicted(model, x, 2)
    backend = StepByStep()
    got, state = chunked(model, x, 2, chunk, backend)
    assert_same(got, want, f"torch step backend, chunk {chunk} (seed {test_seed})")
    assert state.backend_frames + state.module_frames == want.shape[0]
    assert (backend.calls > 0) == (state.backend_frames > 0)
    if chunk in (1, 3):  # at most one frame per chunk: every frame through the backend
        assert state.backend_frames == want.shape[0]
    native = NativeRecurrence()
    got, state = chunked(model, x, 2, chunk, native)
    assert_same(got, want, f"native step, chunk {chunk} (seed {test_seed})")
    assert state.backend_frames > 0


def test_streaming_ignores_dropout_and_keeps_the_mode(rng):
    model = small_model(5, num_layers=3, rnn_dropout=0.5, input_dropout=0.5)
    x = torch.from_numpy(rng.standard_normal((40, C)).astype(np.float32))
    want = predicted(model, x, 0)
    model.train()
    assert_same(chunked(model, x, 0, 3)[0], want, "training mode")
    assert model.training and model.rnn.training


def test_day_layer_of_one_day_equals_the_batched_one(rng):
    model = small_model(2)
    x = torch.from_numpy(rng.standard_normal((2, 9, C)).astype(np.float32))
    with torch.no_grad():
        batched = model.day_layer(x, torch.tensor([1, 1]))
        for b in range(2):
            assert_same(model.day_layer(x[b], 1), batched[b], "(n, C) bins of day 1")
        assert_same(model.day_layer(x, 1), batched, "(B, T, C) of day 1")


def test_state_errors():
    model = small_model(1)
    with pytest.raises(ValueError, match=r"unknown day 3: the model has day layers for days 0\.\.2"):
        model.init_state(3)
    with pytest.raises(ValueError, match="day must be an integer"):
        model.init_state(True)
    state = model.init_state(0)
    with pytest.raises(ValueError, match=rf"bins must be \(n, {C}\) float32, got shape \(4, {C + 1}\)"):
        model.forward_chunk(torch.zeros(4, C + 1), state)
    with pytest.raises(ValueError, match=r"float32, got shape \(4, 5\) torch.float64"):
        model.forward_chunk(torch.zeros(4, C, dtype=torch.float64), state)
    assert state.bins == 0  # refused chunks change nothing
    model.forward_chunk(torch.zeros(20, C), state, final=True)
    with pytest.raises(ValueError, match="finished its trial"):
        model.forward_chunk(torch.zeros(1, C), state)
    with pytest.raises(ValueError, match="bidirectional"):
        small_model(1, bidirectional=True).init_state(0)


# -- one inference path ---------------------------------------------------------------------------------------------
def _split(rng, lengths):
    from fastdecoder.data.dataset import Split

    feats = [rng.standard_normal((T, C)).astype(np.float32) for T in lengths]
    return Split(features=feats, targets=None, day=rng.integers(0, DAYS, size=len(lengths)),
                 trial_ids=[str(i) for i in range(len(lengths))])


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
@pytest.mark.parametrize("shape", ["b2t25", "in-model smoothing"])
def test_predict_is_the_evaluation_path(shape, autocast, rng, test_seed):
    """predict (autocast included) gives the log-probs evaluation gives, bit for bit: one path, ``infer``."""
    from fastdecoder.evaluation import EvalSettings, split_log_probs

    model = small_model(test_seed % 1000, **SHAPES[shape])
    lengths = [40, 23, 31, 17]
    split = _split(rng, lengths)
    settings = EvalSettings(device=torch.device("cpu"), batch_size=3, autocast_dtype=autocast)
    ev = split_log_probs(model, split, settings)
    for b in range(0, len(lengths), 3):  # the same batches evaluation makes
        idx = list(range(b, min(b + 3, len(lengths))))
        T = max(lengths[i] for i in idx)
        x = torch.zeros(len(idx), T, C)
        for j, i in enumerate(idx):
            x[j, : lengths[i]] = torch.from_numpy(split.features[i])
        lp, n = model.predict(x, torch.from_numpy(split.day[idx]), torch.tensor([lengths[i] for i in idx]),
                              autocast_dtype=autocast)
        for j, i in enumerate(idx):
            assert int(n[j]) == ev.lengths[i]
            assert np.isfinite(ev.log_probs[i]).all()
            np.testing.assert_array_equal(lp[j, : int(n[j])].numpy(), ev.log_probs[i])
    if autocast is not None:  # the autocast acted: not the fp32 numbers
        fp32 = split_log_probs(model, split, replace(settings, autocast_dtype=None))
        assert not all(np.array_equal(a, b) for a, b in zip(fp32.log_probs, ev.log_probs))


def test_the_training_runs_eval_transform_is_the_models(rng):
    from fastdecoder.train.transforms import EvalTransform

    model = small_model(0)
    x = torch.from_numpy(rng.standard_normal((2, 30, C)).astype(np.float32))
    lens = torch.tensor([30, 21])
    t = EvalTransform(model)
    want = model.input_transform(x, lens)
    assert not torch.equal(want, x)  # b2t25 smooths its input
    assert torch.equal(t(x, lens), want)
    t.backend = "reference"
    assert model.smoothing_backend == "reference" and torch.equal(t(x, lens), want)
    assert EvalTransform(small_model(0, smoothing="model", smooth_taps="b2t24")).taps is None


def test_a_refused_day_leaves_the_stream_as_it_was(rng):
    from fastdecoder.stream import StreamingDecoder

    model = small_model(4)
    x = rng.standard_normal((30, C)).astype(np.float32)
    dec = StreamingDecoder(model, beam_width=2)
    dec.reset(1)
    dec.push(x)
    frames = dict(dec.frontend.gru_frames)
    assert sum(frames.values()) > 0
    with pytest.raises(ValueError, match="unknown day 3"):
        dec.reset(3)
    assert dec.frontend.gru_frames == frames and dec.frontend.bins_received == 30
    dec.reset(0)
    assert dec.frontend.gru_frames == frames and dec.frontend.bins_received == 0
