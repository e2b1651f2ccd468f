"""Streaming stays equal to offline decoding whatever happens to the model between pushes or trials, and whatever
the patching's geometry:

* weights moved or replaced by torch after the decoder was built (``share_memory()``, ``load_state_dict(...,
  assign=True)``, ``.half().float()``): the native GRU step reads the weights as they are now, never freed memory;
* ``patch_stride > patch_size``: the bins between windows are skipped however the trial is cut into pushes;
* the model put back in training mode: pushes still give the eval-mode log-probabilities, and the caller's mode is
  left as the caller set it.

Offline = ``GRUDecoder.predict`` on the whole trial (the eval transform and forward in eval mode).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastdecoder.config import load_config
from fastdecoder.model import GRUDecoder
from fastdecoder.stream import StreamingDecoder
from fastdecoder.stream.frontend import NATIVE_MAX_FRAMES

C, DAYS = 6, 2


def small_model(seed: int, rnn: str = "gru", **model_keys) -> GRUDecoder:
    """A tiny b2t25-family causal model with random weights (sharpened head: peaky, distinct posteriors)."""
    torch.manual_seed(seed)
    cfg = replace(load_config("b2t25").model, **{"n_features": C, "n_days": DAYS, "hidden_size": 16, "num_layers": 2,
                                                 "rnn": rnn, **model_keys})
    model = GRUDecoder(cfg, rnn_backend="reference").eval()
    with torch.no_grad():
        model.head.weight.mul_(4.0)
        model.day_weights.add_(0.3 * torch.randn_like(model.day_weights))
    return model


def predict(model, x: torch.Tensor, day: int) -> np.ndarray:
    """(frames, 41) log-probabilities of the whole trial through ``model.predict`` (eval mode, mode restored)."""
    lp, n = model.predict(x[None], torch.tensor([day]))
    return lp[0, : int(n[0])].numpy()


def cuts(T: int, chunk, rng) -> list[tuple[int, int]]:
    """Push boundaries: fixed-size pushes, the whole trial (None) or random sizes 0..8 ("random")."""
    if chunk == "random":
        edges = np.cumsum(rng.integers(0, 9, size=T))
        edges = [0] + [int(e) for e in edges if e < T] + [T]
        return list(zip(edges[:-1], edges[1:]))
    step = T if chunk is None else chunk
    return [(i, min(i + step, T)) for i in range(0, T, step)]


def streamed(dec: StreamingDecoder, x: torch.Tensor, day: int, chunk, rng=None) -> np.ndarray:
    dec.reset(day)
    for a, b in cuts(x.shape[0], chunk, rng):
        dec.push(x[a:b].numpy())
    return dec.finish().log_probs


def assert_same(got: np.ndarray, want: np.ndarray, msg: str) -> None:
    assert got.shape == want.shape, f"{msg}: {got.shape[0]} frames streamed, {want.shape[0]} offline"
    assert np.isfinite(got).all(), f"{msg}: non-finite streamed log-probs"  # NaN never passes
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5, err_msg=msg)


# -- weights moved or replaced after construction -------------------------------------------------------------------
def _share_memory(model, seed):
    model.share_memory()  # torch moves every storage into shared memory and frees the old buffers


def _assign_other_weights(model, seed):
    other = small_model(seed + 1, hidden_size=model.cfg.hidden_size)
    model.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects


def _half_then_float(model, seed):
    model.half()
    model.float()  # new fp32 tensors holding the fp16-rounded weights


def _data_replaced(model, seed):
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            p.data = p.data.clone().mul_(-1.0 if "hh" in name else 1.3)  # the same Parameters on new storages


CHANGES = [_share_memory, _assign_other_weights, _half_then_float, _data_replaced]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_weights_changed_between_trials_are_read_as_they_are_now(change, test_seed):
    """A decoder built (and used) before torch moved or replaced the weights streams what predict() gives with the
    weights the model holds now, on the native per-hop path and on nn.GRU pushes."""
    model = small_model(test_seed % 1000, hidden_size=48)
    g = torch.Generator().manual_seed(test_seed)
    x = torch.randn(70, C, generator=g)
    dec = StreamingDecoder(model, beam_width=4)
    streamed(dec, x, 1, 4)  # a whole trial on the native path before the change
    change(model, test_seed % 1000)
    want = predict(model, x, 1)
    for chunk in (1, 4, None):
        before = dict(dec.frontend.gru_frames)
        got = streamed(dec, x, 1, chunk)
        assert_same(got, want, f"{change.__name__}, chunk {chunk} (seed {test_seed})")
        ran = {k: dec.frontend.gru_frames[k] - before[k] for k in before}
        if chunk is None:  # one push through nn.GRU, the frames finish() flushes through the native step
            assert ran["torch"] > 0 and ran["native"] <= NATIVE_MAX_FRAMES, ran
        else:
            assert ran == {"native": want.shape[0], "torch": 0}, ran


RNN_CHANGES = {
    "share_memory": lambda rnn, other: rnn.share_memory(),
    "assign_other_weights": lambda rnn, other: rnn.load_state_dict(other.state_dict(), assign=True),
    "half_then_float": lambda rnn, other: rnn.half().float(),
    "data_replaced": lambda rnn, other: [setattr(p, "data", q.detach().clone()) for p, q in
                                         zip(rnn.parameters(), other.parameters())],
    "copied_in_place": lambda rnn, other: rnn.load_state_dict(other.state_dict()),  # the same storages, new values
}


@pytest.mark.parametrize("change", list(RNN_CHANGES))
def test_gru_weights_changed_in_the_middle_of_a_trial(change, test_seed):
    """The GRU's weights moved or replaced between two pushes of one trial: the frames before are those of the old
    weights, the frames after those of the new ones from the carried state (as nn.GRU run in two parts gives)."""
    seed = test_seed % 1000
    model = small_model(seed)
    x = torch.randn(60, C, generator=torch.Generator().manual_seed(test_seed))
    dec = StreamingDecoder(model, beam_width=4)
    dec.reset(0)
    first = [dec.push(x[i:i + 1].numpy()) for i in range(30)][-1].frames
    old_rnn = copy.deepcopy(model.rnn)
    RNN_CHANGES[change](model.rnn, small_model(seed + 1).rnn)
    for i in range(30, 60):
        dec.push(x[i:i + 1].numpy())
    got = dec.finish().log_probs
    assert first > 2 and dec.frontend.gru_frames["native"] == got.shape[0]
    with torch.no_grad():
        feats = model.patch(model.day_layer(model.input_transform(x[None]), torch.tensor([0])))
        out_a, h = old_rnn(feats[:, :first], model.initial_state(1))
        out_b, _ = model.rnn(feats[:, first:], h)
        want = model.head(torch.cat([out_a, out_b], 1)).float().log_softmax(-1)[0].numpy()
    assert_same(got, want, f"{change} after frame {first} (seed {test_seed})")


# -- patch_stride > patch_size ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch_size,patch_stride", [(3, 5), (1, 4), (2, 9), (14, 4), (4, 4)])
def test_frames_do_not_depend_on_how_the_trial_is_cut(patch_size, patch_stride, rng, test_seed):
    """Streamed frames equal offline frames for pushes of 1 bin, 4, 7, the whole trial and random sizes, including
    strides beyond the window (the bins between windows belong to no frame)."""
    model = small_model(test_seed % 1000, patch_size=patch_size, patch_stride=patch_stride)
    dec = StreamingDecoder(model, beam_width=4)
    for T in (patch_size, 61, 64):
        x = torch.from_numpy(rng.standard_normal((T, C)).astype(np.float32))
        want = predict(model, x, 1)
        assert want.shape[0] == (T - patch_size) // patch_stride + 1
        for chunk in (1, 4, 7, None, "random", "random"):
            assert_same(streamed(dec, x, 1, chunk, rng), want,
                        f"K={patch_size} S={patch_stride} T={T} chunk {chunk} (seed {test_seed})")


# -- the model put back in training mode ------------------------------------------------------------------------------
@pytest.mark.parametrize("rnn", ["gru", "ln_gru"])
@pytest.mark.parametrize("when", ["after construction", "before construction"])
def test_training_mode_does_not_change_the_streamed_log_probs(rnn, when, rng, test_seed):
    """With between-layer dropout (rnn_dropout 0.5, 3 layers) and the caller's model in training mode, pushes of any
    size (native and nn.GRU paths) equal predict(); the model stays in the mode the caller chose."""
    model = small_model(test_seed % 1000, rnn, num_layers=3, rnn_dropout=0.5, input_dropout=0.5)
    x = torch.from_numpy(rng.standard_normal((83, C)).astype(np.float32))
    want = predict(model, x, 0)
    if when == "before construction":
        model.train()
    dec = StreamingDecoder(model, beam_width=4)
    model.train()
    assert model.training and model.rnn.training
    for chunk in (1, 4, NATIVE_MAX_FRAMES * 4 + 4, None, "random"):
        assert_same(streamed(dec, x, 0, chunk, rng), want, f"{rnn}, {when}, chunk {chunk} (seed {test_seed})")
        assert model.training and all(m.training for m in model.modules()), "the caller's mode was changed"
    if rnn == "gru":
        assert dec.frontend.gru_frames["native"] > 0 and dec.frontend.gru_frames["torch"] > 0
    model.eval()  # and back: still the same
    assert_same(streamed(dec, x, 0, 5), want, f"{rnn}, back in eval mode")
    assert not model.training


def test_in_model_smoothing_taps_replaced_between_trials(rng):
    """A causal model that smooths inside the model: its smooth_taps buffer replaced (load_state_dict with
    assign=True) is read at the next push, as predict() reads it; taps of another length are taken at the next trial
    (with their own lookahead) and refused in the middle of one."""
    model = small_model(3, smoothing="model", smooth_taps="b2t24")
    x = torch.from_numpy(rng.standard_normal((80, C)).astype(np.float32))
    dec = StreamingDecoder(model, beam_width=4)
    assert_same(streamed(dec, x, 0, 3), predict(model, x, 0), "the model's own taps")
    state = model.state_dict()
    state["smooth_taps"] = torch.from_numpy(rng.dirichlet(np.ones(state["smooth_taps"].numel())).astype(np.float32))
    model.load_state_dict(state, assign=True)
    assert_same(streamed(dec, x, 0, 3), predict(model, x, 0), "replaced taps")
    assert dec.lookahead_bins == 10
    model.smooth_taps = torch.tensor([0.25, 0.5, 0.25])
    assert_same(streamed(dec, x, 0, 3), predict(model, x, 0), "three taps from the next trial on")
    assert dec.lookahead_bins == 1
    dec.reset(0)
    dec.push(x[:10].numpy())
    model.smooth_taps = torch.ones(5)
    with pytest.raises(ValueError, match="smooth_taps now hold 5 taps, not the 3"):
        dec.push(x[10:20].numpy())
