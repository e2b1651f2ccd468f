"""GRUDecoder: shapes of both presets, feature orders, and reference-checkpoint loading with equal logits.

The reference forwards below are written from the reference code independently of fastdecoder.model (einsum day
layer, F.conv1d smoothing, nn.Unfold / Tensor.unfold patching, nn.GRU), so the loaded model is checked against
the published computation, not against itself.
"""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdecoder.config import load_config
from fastdecoder.model import GRUDecoder, load_reference_checkpoint


def _cfg(preset, **kw):
    base = dict(n_features=12, n_days=3, hidden_size=16, num_layers=2)
    base.update(kw)
    return replace(load_config(preset).model, **base)


@pytest.mark.parametrize("preset", ["b2t25", "b2t24"])
@pytest.mark.parametrize("T", [40, 57])
def test_output_shapes(preset, T):
    cfg = _cfg(preset)
    model = GRUDecoder(cfg).eval()
    x = torch.randn(2, T, 12)
    out = model(x, torch.tensor([0, 2]))
    n = (T - cfg.patch_size) // cfg.patch_stride + 1
    assert out.shape == (2, n, 41)
    assert torch.isfinite(out).all()


def test_full_size_shapes():
    """The real presets' sizes: b2t25 (512 features, 14*512 GRU input), b2t24 (256 features, 32*256, bidirectional)."""
    m25 = GRUDecoder(replace(load_config("b2t25").model, n_features=512, n_days=2, num_layers=1))
    assert m25.rnn.weight_ih_l0.shape == (3 * 768, 14 * 512) and m25.head.in_features == 768
    assert m25.h0.shape == (1, 1, 768)
    m24 = GRUDecoder(replace(load_config("b2t24").model, n_features=256, n_days=2, num_layers=1))
    assert m24.rnn.weight_ih_l0.shape == (3 * 1024, 32 * 256) and m24.head.in_features == 2048
    assert m24.h0 is None and m24.smooth_taps.shape == (20,)


def test_init_identity_day_layers_and_orthogonal_hh():
    model = GRUDecoder(_cfg("b2t25"))
    assert torch.equal(model.day_weights[1], torch.eye(12)) and not model.day_biases.any()
    w = model.rnn.weight_hh_l0  # (3H, H) orthogonal columns
    torch.testing.assert_close(w.T @ w, torch.eye(16), atol=1e-5, rtol=0)


def test_patch_feature_orders():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # (B, T, C)
    tm = GRUDecoder(_cfg("b2t25", n_features=3, patch_size=4, patch_stride=2)).patch(x)
    cm = GRUDecoder(_cfg("b2t24", n_features=3, patch_size=4, patch_stride=2)).patch(x)
    assert tm.shape == cm.shape == (2, 2, 12)
    for n in range(2):
        for k in range(4):
            for c in range(3):
                assert tm[1, n, k * 3 + c] == x[1, n * 2 + k, c]   # time-major: k*C + c
                assert cm[1, n, c * 4 + k] == x[1, n * 2 + k, c]   # channel-major: c*K + k
    unf = nn.Unfold((4, 1), stride=2)(x.permute(0, 2, 1).unsqueeze(3)).permute(0, 2, 1)
    assert torch.equal(cm, unf)


def test_bad_input_named():
    model = GRUDecoder(_cfg("b2t25"))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(2, 30, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="day_idx"):
        model(torch.randn(2, 30, 12), torch.tensor([0]))
    with pytest.raises(ValueError, match="fewer than one patch"):
        model(torch.randn(2, 10, 12), torch.tensor([0, 1]))


# ---- reference forwards, written from the published code's description --------------------------------------------
def _cffan_taps(size=20, sd=2.0):
    k = torch.arange(size, dtype=torch.float32)
    w = 1 / (sd * math.sqrt(2 * math.pi)) * torch.exp(-(((k - (size - 1) / 2) / sd) ** 2) / 2)
    return w / w.sum()


def cffan_forward(sd, x, day, kernel_len=32, stride=4, bidirectional=True):
    C = x.shape[2]
    xs = F.conv1d(x.permute(0, 2, 1), sd["gaussianSmoother.weight"], groups=C, padding="same").permute(0, 2, 1)
    y = torch.einsum("btd,bdk->btk", xs, sd["dayWeights"][day]) + sd["dayBias"][day]
    y = F.softsign(y)
    strided = nn.Unfold((kernel_len, 1), stride=(stride, 1))(y.permute(0, 2, 1).unsqueeze(3)).permute(0, 2, 1)
    H = sd["gru_decoder.weight_hh_l0"].shape[1]
    layers = sum(1 for k in sd if k.startswith("gru_decoder.weight_ih_l") and not k.endswith("_reverse"))
    gru = nn.GRU(strided.shape[2], H, layers, batch_first=True, bidirectional=bidirectional)
    gru.load_state_dict({k[len("gru_decoder."):]: v for k, v in sd.items() if k.startswith("gru_decoder.")})
    h0 = torch.zeros(layers * (2 if bidirectional else 1), x.shape[0], H)
    hid, _ = gru(strided, h0)
    return F.linear(hid, sd["fc_decoder_out.weight"], sd["fc_decoder_out.bias"])


def nejm_forward(sd, x, day, patch_size=14, patch_stride=4):
    sd = {k.replace("_orig_mod.", ""): v for k, v in sd["model_state_dict"].items()}
    w = torch.stack([sd[f"day_weights.{int(i)}"] for i in day])
    b = torch.cat([sd[f"day_biases.{int(i)}"] for i in day]).unsqueeze(1)
    y = F.softsign(torch.einsum("btd,bdk->btk", x, w) + b)
    y = y.unsqueeze(1).permute(0, 3, 1, 2).unfold(3, patch_size, patch_stride).squeeze(2).permute(0, 2, 3, 1)
    y = y.reshape(x.shape[0], y.shape[1], -1)
    H = sd["gru.weight_hh_l0"].shape[1]
    layers = sum(1 for k in sd if k.startswith("gru.weight_ih_l"))
    gru = nn.GRU(y.shape[2], H, layers, batch_first=True)
    gru.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("gru.")})
    out, _ = gru(y, sd["h0"].expand(layers, x.shape[0], H).contiguous())
    return F.linear(out, sd["out.weight"], sd["out.bias"])


def _random_gru(prefix, in_size, H, layers, bidirectional):
    g = nn.GRU(in_size, H, layers, bidirectional=bidirectional)
    return {f"{prefix}.{k}": v.detach().clone() for k, v in g.state_dict().items()}


@pytest.mark.parametrize("as_file", [False, True])
def test_load_cffan_checkpoint_same_logits(tmp_path, as_file):
    torch.manual_seed(1)
    C, D, H, L = 6, 3, 10, 2
    sd = {"dayWeights": torch.randn(D, C, C) * 0.3 + torch.eye(C), "dayBias": torch.randn(D, 1, C) * 0.1,
          "gaussianSmoother.weight": _cffan_taps().view(1, 1, 20).repeat(C, 1, 1),
          "fc_decoder_out.weight": torch.randn(41, 2 * H), "fc_decoder_out.bias": torch.randn(41),
          "inpLayer0.weight": torch.randn(C, C), "inpLayer0.bias": torch.randn(C)}
    sd.update(_random_gru("gru_decoder", 32 * C, H, L, True))
    src = sd
    if as_file:
        src = tmp_path / "modelWeights"
        torch.save(sd, src)
    model = load_reference_checkpoint(src, preset="b2t24")
    assert model.cfg.n_days == D and model.cfg.n_features == C and model.cfg.bidirectional
    x = torch.randn(3, 75, C)
    day = torch.tensor([2, 0, 1])
    torch.testing.assert_close(model(x, day), cffan_forward(sd, x, day), rtol=1e-5, atol=1e-5)


def test_load_nejm_checkpoint_same_logits(tmp_path):
    torch.manual_seed(2)
    C, D, H, L = 5, 4, 12, 3
    msd = {f"day_weights.{i}": torch.eye(C) + 0.2 * torch.randn(C, C) for i in range(D)}
    msd.update({f"day_biases.{i}": 0.1 * torch.randn(1, C) for i in range(D)})
    msd.update(_random_gru("gru", 14 * C, H, L, False))
    msd.update({"out.weight": torch.randn(41, H), "out.bias": torch.randn(41), "h0": torch.randn(1, 1, H)})
    ckpt = {"model_state_dict": {f"_orig_mod.{k}": v for k, v in msd.items()}, "val_PER": 0.1, "val_loss": 1.0,
            "optimizer_state_dict": {}}
    path = tmp_path / "best_checkpoint"
    torch.save(ckpt, path)
    model = load_reference_checkpoint(path, preset="b2t25")
    assert (model.cfg.n_days, model.cfg.num_layers, model.cfg.hidden_size) == (D, L, H)
    x = torch.randn(2, 60, C)
    day = torch.tensor([3, 1])
    torch.testing.assert_close(model(x, day), nejm_forward(ckpt, x, day), rtol=1e-5, atol=1e-5)


def test_load_reference_rejects_foreign(tmp_path):
    with pytest.raises(ValueError, match="not a cffan"):
        load_reference_checkpoint({"foo": torch.zeros(1)}, preset="b2t24")
    with pytest.raises(ValueError, match="not a NEJM"):
        load_reference_checkpoint({"foo": torch.zeros(1)}, preset="b2t25")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_reference_checkpoint(bad, preset="b2t25")
    with pytest.raises(FileNotFoundError):
        load_reference_checkpoint(tmp_path / "missing", preset="b2t25")
