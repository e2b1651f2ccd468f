"""The presets against the reference code's published behaviour, and every key that turns a
fastdecoder fix back on changing exactly what it says.

Written from the references' documented behaviour, not from their code: checkpoints as the NEJM trainer writes
them, cffan's smoothing of the whole zero-padded batch, NEJM's smoothing in the data transform, ``predict``.
The independent forwards come from test_model.py (einsum day layers, F.conv1d smoothing, nn.Unfold, nn.GRU).
"""
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from fastdecoder.config import config_from_dict, load_config, save_config
from fastdecoder.model import GRUDecoder, load_reference_checkpoint
from fastdecoder.safe_torch_load import UnsafeFileError
from fastdecoder.checkpoint import FORMAT_TAG, CheckpointError, load_checkpoint

from test_model import _cffan_taps, _random_gru, cffan_forward, nejm_forward

SEED = 20261201


def _padded(lengths, C, gen):
    """A zero-padded batch (B, max(lengths), C) of standard normal features."""
    x = torch.zeros(len(lengths), max(lengths), C)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randn(n, C, generator=gen)
    return x, torch.tensor(lengths)


# ---- NEJM checkpoints ---------------------------------------------------------------------------------------------

def _nejm_checkpoint(gen, C=5, D=3, H=12, L=2):
    """A checkpoint dict as the NEJM trainer's save_model_checkpoint builds it: the compiled model's state dict
    (``_orig_mod.`` keys), AdamW state after one step over its bias / day / other groups, a LambdaLR's state, the
    PER as a float and the loss as ``np.mean`` of the validation losses (0-d float32 arrays and floats)."""
    msd = {f"day_weights.{i}": torch.eye(C) + 0.2 * torch.randn(C, C, generator=gen) for i in range(D)}
    msd.update({f"day_biases.{i}": 0.1 * torch.randn(1, C, generator=gen) for i in range(D)})
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    msd.update(_random_gru("gru", 14 * C, H, L, False))
    msd.update({"out.weight": torch.randn(41, H, generator=gen), "out.bias": torch.randn(41, generator=gen),
                "h0": torch.randn(1, 1, H, generator=gen)})
    params = {k: nn.Parameter(v.clone()) for k, v in msd.items()}
    bias = [p for k, p in params.items() if "gru.bias" in k or "out.bias" in k]
    day = [p for k, p in params.items() if "day_" in k]
    other = [p for k, p in params.items() if "day_" not in k and "gru.bias" not in k and "out.bias" not in k]
    opt = torch.optim.AdamW([{"params": bias, "weight_decay": 0, "group_type": "bias"},
                             {"params": day, "lr": 0.005, "weight_decay": 0, "group_type": "day_layer"},
                             {"params": other, "group_type": "other"}], lr=0.005, eps=0.1, weight_decay=0.001)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, lambda s: 1.0, lambda s: 0.5])
    sum((p ** 2).sum() for p in params.values()).backward()
    opt.step()
    sched.step()
    val_loss = np.mean([np.array(2.5, dtype=np.float32), 1.25, np.array(0.5, dtype=np.float32)])
    assert type(val_loss) is np.float64  # what makes a plain weights-only load refuse the file
    return {"model_state_dict": {f"_orig_mod.{k}": v for k, v in msd.items()},
            "optimizer_state_dict": opt.state_dict(), "scheduler_state_dict": sched.state_dict(),
            "val_PER": 0.1234, "val_loss": val_loss}


def _as_numpy1_file(src, dst):
    """Rewrite a torch zip file so its pickle names numpy 1.x's module path of the scalar reconstructor."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"cnumpy._core.multiarray\nscalar\n" in data
                data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
            zout.writestr(item.filename, data)


@pytest.mark.parametrize("numpy_path", ["numpy2", "numpy1"])
def test_nejm_trainer_checkpoint_loads_with_same_logits(tmp_path, numpy_path):
    gen = torch.Generator().manual_seed(SEED)
    ckpt = _nejm_checkpoint(gen)
    path = tmp_path / "best_checkpoint"
    torch.save(ckpt, path)
    if numpy_path == "numpy1":
        _as_numpy1_file(path, tmp_path / "best_checkpoint_np1")
        path = tmp_path / "best_checkpoint_np1"
    with pytest.raises(Exception, match="Unsupported global"):  # what the plain weights-only load says
        torch.load(path, weights_only=True)
    model = load_reference_checkpoint(path, preset="b2t25")
    x, lens = _padded([60, 43], 5, gen)
    day = torch.tensor([2, 0])
    torch.testing.assert_close(model(x, day, lens), nejm_forward(ckpt, x, day), rtol=1e-5, atol=1e-5,
                               msg=lambda m: f"seed {SEED}: {m}")


class _Payload:
    """Pickles to a call of ``_record`` (what a crafted checkpoint would make run on load)."""

    def __reduce__(self):
        return (_record, ("ran",))


CALLS = []


def _record(arg):
    CALLS.append(arg)
    return arg


@pytest.mark.parametrize("extra,named", [
    ("call", r"GLOBAL test_faithful\._record"),
    ("ndarray", r"GLOBAL numpy\._?core\.multiarray\._reconstruct"),  # arrays are not admitted either
    ("object_dtype", r"ObjectDType"),                                 # nor dtypes other than float32/float64
])
def test_crafted_pickle_in_a_nejm_checkpoint_is_refused(tmp_path, extra, named):
    gen = torch.Generator().manual_seed(SEED)
    ckpt = _nejm_checkpoint(gen)
    ckpt["extra"] = {"call": _Payload(), "ndarray": np.zeros(3), "object_dtype": np.dtype(object)}[extra]
    path = tmp_path / "crafted_checkpoint"
    torch.save(ckpt, path)
    CALLS.clear()
    with pytest.raises(UnsafeFileError, match=rf"crafted_checkpoint is refused: .*{named}.*could run code"):
        load_reference_checkpoint(path, preset="b2t25")
    assert CALLS == []


def test_own_checkpoints_read_numpy_scalars_and_refuse_code(tmp_path):
    good = tmp_path / "np.pt"
    torch.save({"format": FORMAT_TAG, "model": {"w": torch.ones(2)}, "step": 3, "config": {},
                "best_per": np.float64(0.25)}, good)
    assert load_checkpoint(good)["best_per"] == 0.25
    bad = tmp_path / "evil.pt"
    torch.save({"format": FORMAT_TAG, "model": {}, "step": 0, "config": {}, "x": _Payload()}, bad)
    CALLS.clear()
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a fastdecoder checkpoint: .*could run code"):
        load_checkpoint(bad)
    assert CALLS == []


# ---- b2t24: the whole padded batch, as cffan smooths it ----------------------------------------------------------

def _cffan_state(gen, C=6, D=3, H=10, L=2):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    sd = {"dayWeights": torch.randn(D, C, C, generator=gen) * 0.3 + torch.eye(C),
          "dayBias": torch.randn(D, 1, C, generator=gen) * 0.1,
          "gaussianSmoother.weight": _cffan_taps().view(1, 1, 20).repeat(C, 1, 1),
          "fc_decoder_out.weight": torch.randn(41, 2 * H, generator=gen), "fc_decoder_out.bias": torch.randn(41)}
    sd.update(_random_gru("gru_decoder", 32 * C, H, L, True))
    return sd


def _smooth_each_trial_alone(x, lens, taps):
    """Masked variant, independently: each trial smoothed over its own bins ('same', zeros outside), zero padding."""
    out = torch.zeros_like(x)
    for b, n in enumerate(lens.tolist()):
        xb = x[b:b + 1, :n].permute(0, 2, 1)
        w = taps.view(1, 1, -1).repeat(x.shape[2], 1, 1)
        out[b, :n] = F.conv1d(xb, w, groups=x.shape[2], padding="same")[0].T
    return out


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("lengths", [[75, 50, 41], [90, 88, 36, 64]])
def test_b2t24_logits_on_a_ragged_padded_batch(lengths):
    gen = torch.Generator().manual_seed(SEED + len(lengths))
    sd = _cffan_state(gen)
    model = load_reference_checkpoint(sd, preset="b2t24")
    assert model.cfg.mask_padding is False
    x, lens = _padded(lengths, 6, gen)
    day = torch.arange(len(lengths)) % 3
    shipped = model(x, day, lens)
    torch.testing.assert_close(shipped, cffan_forward(sd, x, day), rtol=1e-5, atol=1e-5,
                               msg=lambda m: f"seed {SEED}: {m}")

    # model.mask_padding: true smooths each trial alone and keeps the padding zero: exactly that changes
    model.cfg = replace(model.cfg, mask_padding=True)
    masked = model(x, day, lens)
    delta = dict(sd, **{"gaussianSmoother.weight": torch.eye(20)[9].view(1, 1, 20).repeat(6, 1, 1)})
    independent = cffan_forward(delta, _smooth_each_trial_alone(x, lens, _cffan_taps()), day)
    torch.testing.assert_close(masked, independent, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {SEED}: {m}")
    full = lens == x.shape[1]
    torch.testing.assert_close(masked[full], shipped[full], rtol=1e-5, atol=1e-5)  # unpadded trials: unchanged
    assert (masked[~full] - shipped[~full]).abs().max() > 1e-3  # padded ones: the backward GRU reads the padding


# ---- predict: raw features -> the preset's eval transform -> log-probs and output lengths -----------------------

def _nejm_smoothing_taps():
    """NEJM's kernel from its definition: a unit impulse filtered by a Gaussian of sd 2 (truncated at 4 sd + 0.5),
    taps above 0.01 kept, renormalised."""
    r = int(4 * 2.0 + 0.5)
    k = np.exp(-0.5 * np.arange(-r, r + 1) ** 2 / 4.0)
    k /= k.sum()
    k = k[k > 0.01]
    return torch.tensor(k / k.sum(), dtype=torch.float32)


def test_predict_b2t25_equals_smoothing_then_forward(tmp_path):
    gen = torch.Generator().manual_seed(SEED)
    ckpt = _nejm_checkpoint(gen)
    torch.save(ckpt, tmp_path / "best_checkpoint")
    model = load_reference_checkpoint(tmp_path / "best_checkpoint", preset="b2t25")
    x, lens = _padded([70, 51, 30], 5, gen)
    day = torch.tensor([0, 2, 1])
    taps = _nejm_smoothing_taps()
    assert taps.numel() == 9
    smoothed = F.conv1d(x.permute(0, 2, 1), taps.view(1, 1, 9).repeat(5, 1, 1), groups=5,
                        padding="same").permute(0, 2, 1)  # the whole padded batch, as NEJM's transform
    expected = nejm_forward(ckpt, smoothed, day).log_softmax(-1)
    model.train()
    log_probs, n = model.predict(x, day, lens)
    assert model.training  # restored
    torch.testing.assert_close(log_probs, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {SEED}: {m}")
    assert n.tolist() == [(t - 14) // 4 + 1 for t in [70, 51, 30]]
    assert (model(x, day, lens).log_softmax(-1) - expected).abs().max() > 1e-2  # raw features need the transform


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_predict_b2t24_smooths_in_the_model_and_counts_shipped_frames():
    gen = torch.Generator().manual_seed(SEED)
    sd = _cffan_state(gen)
    model = load_reference_checkpoint(sd, preset="b2t24")
    x, lens = _padded([77, 45, 33], 6, gen)
    day = torch.tensor([1, 0, 2])
    log_probs, n = model.predict(x, day, lens)
    torch.testing.assert_close(log_probs, cffan_forward(sd, x, day).log_softmax(-1), rtol=1e-5, atol=1e-5)
    assert n.tolist() == [int((t - 32) / 4) for t in [77, 45, 33]]  # the shipped floor((T - 32) / 4)
    model.output_lengths = "exact"
    assert model.predict(x, day, lens)[1].tolist() == [(t - 32) // 4 + 1 for t in [77, 45, 33]]


def test_predict_rejects_bad_lengths():
    model = GRUDecoder(replace(load_config("b2t25").model, n_features=4, n_days=1, hidden_size=8, num_layers=1))
    x = torch.randn(2, 30, 4)
    with pytest.raises(ValueError, match="lengths must lie in"):
        model.predict(x, torch.zeros(2, dtype=torch.int64), torch.tensor([31, 20]))
    with pytest.raises(ValueError, match=r"lengths must be \(2,\)"):
        model.predict(x, torch.zeros(2, dtype=torch.int64), torch.tensor([30]))


# ---- config: presets as shipped, old runs keep their values -------------------------------------------------------

def test_presets_hold_the_shipped_choices():
    for name in ("b2t24", "b2t25"):
        c = load_config(name)
        assert c.model.mask_padding is False and c.optim.no_decay_h0 is False, name
    b24 = load_config("b2t24")
    assert (b24.ctc.output_lengths, b24.data.batching, b24.train.amp) == ("shipped", "random", "none")
    assert load_config("b2t25").ctc.output_lengths == "exact"


def test_an_old_runs_config_keeps_its_values(tmp_path):
    """A config.yaml saved before these keys existed: exact output lengths as saved, the masked padding and the
    undecayed h0 it trained with."""
    path = tmp_path / "config.yaml"
    save_config(load_config("b2t24", ["ctc.output_lengths=exact"]), path)  # as save_config wrote it then ...
    raw = yaml.safe_load(path.read_text())
    del raw["model"]["mask_padding"], raw["optim"]["no_decay_h0"]  # ... before these keys existed
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    c = load_config(path)
    assert (c.ctc.output_lengths, c.model.mask_padding, c.optim.no_decay_h0) == ("exact", True, True)
    assert load_config("b2t24").ctc.output_lengths == "shipped"  # while the preset itself is as shipped


# ---- model.mask_padding in the trainer's augmentation -------------------------------------------------------------

def test_mask_padding_changes_only_the_padding_and_what_smoothing_reads_from_it():
    from fastdecoder.testing.tiny import DEFAULT, TRAIN_DEFAULTS, tiny_config, tiny_data

    from fastdecoder.train.trainer import Trainer

    out = {}
    for mask in (False, True):
        cfg = config_from_dict(tiny_config(
            "custom", data=tiny_data(5, trials_per_day=8, val_trials_per_day=2, test_trials_per_day=1, n_features=8),
            model={"hidden_size": 8, "rnn_dropout": DEFAULT, "input_dropout": DEFAULT, "mask_padding": mask},
            augment={"white_noise_std": 1.0, "constant_offset_std": 0.2, "random_cut": 0}, optim=None,
            train={**TRAIN_DEFAULTS, "batch_size": 8, "fast": False}))
        trainer = Trainer(cfg, None, progress=False)
        trainer.sampler = iter([np.arange(8)] * 2)
        batch = trainer.next_batch()
        out[mask], lens = trainer.augment(batch.x, batch.x_lens, trainer.step)[0], batch.x_lens
    T = out[True].shape[1]
    pad = torch.arange(T)[None, :] >= lens[:, None]
    assert pad.any(), "the batch needs padded trials"
    assert not out[True][pad].any()                  # masked: padding stays zero
    assert (out[False][pad] != 0).float().mean() > 0.99  # shipped: noise and offset in the padding too
    reach = torch.arange(T)[None, :] >= (lens[:, None] - 4)  # the b2t25 taps reach 4 bins ahead
    far = ~pad & ~reach
    torch.testing.assert_close(out[True][far], out[False][far], rtol=1e-6, atol=1e-6)
    padded_trials = lens < T
    near_end = (~pad & reach)[padded_trials]
    assert (out[True][padded_trials][near_end] - out[False][padded_trials][near_end]).abs().max() > 1e-3
