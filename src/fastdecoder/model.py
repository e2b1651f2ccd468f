"""GRUDecoder: the reference model of both presets, and loaders for the reference checkpoints.

Forward: x (B, T, C) float32 neural features in 20 ms bins, day_idx (B,) int64 -> logits (B, N, 41), with
N = (T - patch_size) // patch_stride + 1.

    [smoothing, b2t24 only] -> day layer: softsign(x W_day + b_day) -> dropout -> patching -> GRU -> Linear head

The b2t25 model takes features already smoothed by its data transform (``input_transform``); ``predict`` applies the
preset's eval transform to raw features and returns log-probabilities with their valid output lengths, for either
preset.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdecoder.config import ModelConfig
from fastdecoder.safe_torch_load import UnsafeFileError, load_weights_only


def state_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the state dict of ``GRUDecoder(cfg)``, computed without building it (nothing is
    allocated): what a checkpoint's tensors must match before a model of its config is built."""
    if cfg.n_features is None or cfg.n_days is None:
        raise ValueError("ModelConfig.n_features and n_days must be set (they come from the data)")
    C, H, D, L = cfg.n_features, cfg.hidden_size, cfg.n_days, cfg.num_layers
    dirs = 2 if cfg.bidirectional else 1
    taps = len(_smooth_taps(cfg.smooth_taps)) if cfg.smoothing == "model" else 0
    shapes: dict[str, tuple[int, ...]] = {"day_weights": (D, C, C), "day_biases": (D, 1, C)}
    if cfg.learn_h0:
        shapes["h0"] = (1, 1, H)
    shapes["smooth_taps"] = (taps,)
    for k in range(L):
        layer_in = C * cfg.patch_size if k == 0 else H * dirs
        for d in range(dirs):
            sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
            shapes.update({f"rnn.weight_ih{sfx}": (3 * H, layer_in), f"rnn.weight_hh{sfx}": (3 * H, H),
                           f"rnn.bias_ih{sfx}": (3 * H,), f"rnn.bias_hh{sfx}": (3 * H,)})
            if cfg.rnn == "ln_gru":
                shapes.update({f"rnn.ln_ih_weight{sfx}": (3 * H,), f"rnn.ln_hh_weight{sfx}": (3 * H,)})
    shapes.update({"head.weight": (cfg.n_classes, H * dirs), "head.bias": (cfg.n_classes,)})
    return shapes


def parameter_count(cfg: ModelConfig) -> int:
    """Number of values in the state dict of ``GRUDecoder(cfg)`` (parameters and buffers), without building it."""
    return sum(math.prod(s) for s in state_shapes(cfg).values())


def check_model_size(cfg: ModelConfig) -> None:
    """Refuse (LimitError naming the keys) a config whose model would exceed `limits.MAX_MODEL_PARAMETERS`."""
    from fastdecoder.limits import MAX_MODEL_PARAMETERS, LimitError

    n = parameter_count(cfg)
    if n > MAX_MODEL_PARAMETERS:
        raise LimitError(f"the model of this config would have {n:,} parameters ({n * 4 / 2**30:.1f} GiB of float32; "
                         f"model.n_days={cfg.n_days}, n_features={cfg.n_features}, hidden_size={cfg.hidden_size}, "
                         f"num_layers={cfg.num_layers}, patch_size={cfg.patch_size}), more than the limit of "
                         f"{MAX_MODEL_PARAMETERS:,}")


def _smooth_taps(name: str) -> torch.Tensor:
    from fastdecoder.ops import gaussian_taps

    return gaussian_taps(name).to(torch.float32)


class GRUDecoder(nn.Module):
    """Day layers + patching + (LayerNorm-)GRU + linear head.

    cfg.n_features (C) and cfg.n_days must be set (the trainer takes them from the data).
    """

    def __init__(self, cfg: ModelConfig, smoothing_backend: str = "auto", rnn_backend: str = "auto",
                 output_lengths: str = "exact"):
        super().__init__()
        if cfg.n_features is None or cfg.n_days is None:
            raise ValueError("ModelConfig.n_features and n_days must be set (they come from the data)")
        if output_lengths not in ("exact", "shipped"):
            raise ValueError(f"output_lengths (ctc.output_lengths) must be 'exact' or 'shipped', "
                             f"got {output_lengths!r}")
        check_model_size(cfg)  # before allocating anything
        self.cfg = cfg
        self.output_lengths = output_lengths  # ctc.output_lengths of the run: the valid frames ``predict`` reports
        C, H, D = cfg.n_features, cfg.hidden_size, cfg.n_days
        self.smoothing_backend = smoothing_backend
        self.rnn_backend = rnn_backend  # "reference": torch's own GRU everywhere; else the fast ops where they run
        # Day layers: identity init, zero bias (stacked: (days, C, C) and (days, 1, C)).
        self.day_weights = nn.Parameter(torch.eye(C).repeat(D, 1, 1))
        self.day_biases = nn.Parameter(torch.zeros(D, 1, C))
        self.input_dropout = nn.Dropout(cfg.input_dropout)
        # Smoothing taps of the in-model smoothing (b2t24); a buffer so loaded checkpoints keep their own kernel.
        taps = _smooth_taps(cfg.smooth_taps) if cfg.smoothing == "model" else torch.zeros(0)
        self.register_buffer("smooth_taps", taps)

        in_size = C * cfg.patch_size
        dirs = 2 if cfg.bidirectional else 1
        dropout = cfg.rnn_dropout if cfg.num_layers > 1 else 0.0
        if cfg.rnn == "gru":
            self.rnn = nn.GRU(in_size, H, cfg.num_layers, batch_first=True, dropout=dropout,
                              bidirectional=cfg.bidirectional)
            for name, p in self.rnn.named_parameters():
                if "weight_hh" in name:
                    nn.init.orthogonal_(p)
                elif "weight_ih" in name:
                    nn.init.xavier_uniform_(p)
        else:
            from fastdecoder.nn import LayerNormGRU  # inits weight_hh orthogonal, weight_ih xavier

            self.rnn = LayerNormGRU(in_size, H, cfg.num_layers, batch_first=True, dropout=dropout,
                                    bidirectional=cfg.bidirectional, backend=rnn_backend)
        if cfg.learn_h0:
            self.h0 = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(1, 1, H)))
        else:
            self.register_parameter("h0", None)
        self.head = nn.Linear(H * dirs, cfg.n_classes)
        if cfg.head_init == "xavier":
            nn.init.xavier_uniform_(self.head.weight)

    # -- pieces of the forward, usable on their own -------------------------------------------------------------
    def smooth(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """In-model Gaussian smoothing over time (b2t24); identity when the preset smooths outside the model.

        As shipped (``mask_padding`` false) it smooths the whole zero-padded batch: values spill into the padding,
        where the backward GRU reads them. With ``mask_padding`` only each trial's ``lengths`` bins are read and
        written (padding stays zero)."""
        if self.cfg.smoothing != "model":
            return x
        from fastdecoder.ops import augment

        return augment(x, self.padding_lengths(lengths), smooth_taps=self.smooth_taps, backend=self.smoothing_backend)

    def padding_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """The lengths the data transforms and smoothing respect: ``lengths`` with ``mask_padding``, else None (the
        whole padded batch, as both reference codes do)."""
        return lengths if self.cfg.mask_padding else None

    def input_transform(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The eval-time data transform of the preset: Gaussian smoothing over time when it smooths in the data
        transform (b2t25, ``smoothing: input``); identity otherwise (b2t24 smooths inside ``forward``)."""
        if self.cfg.smoothing != "input":
            return x
        from fastdecoder.ops import augment

        return augment(x, self.padding_lengths(lengths), smooth_taps=self.cfg.smooth_taps,
                       backend=self.smoothing_backend)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, day_idx: torch.Tensor,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities from raw features, for either preset: the eval transform, the forward in eval mode.

        x: (B, T, C) raw (unsmoothed) features, zero padded; day_idx: (B,) int64; lengths: (B,) valid bins (None:
        all T). Returns (log_probs (B, N, n_classes) float32 natural-log, out_lengths (B,) int64 valid frames as
        ``ctc.output_lengths`` counts them). The training mode is restored afterwards.
        """
        from fastdecoder.losses import output_lengths

        device = self.head.weight.device
        x = torch.as_tensor(x, dtype=torch.float32, device=device)
        day_idx = torch.as_tensor(day_idx, dtype=torch.int64, device=device)
        if x.dim() != 3:
            raise ValueError(f"x must be (batch, time, {self.cfg.n_features}), got {tuple(x.shape)}")
        B, T = x.shape[:2]
        lengths = (torch.full((B,), T, dtype=torch.int64, device=device) if lengths is None
                   else torch.as_tensor(lengths, device=device))
        if lengths.shape != (B,) or lengths.dtype.is_floating_point:
            raise ValueError(f"lengths must be ({B},) integers, got {tuple(lengths.shape)} {lengths.dtype}")
        if bool(((lengths < 1) | (lengths > T)).any()):
            raise ValueError(f"lengths must lie in [1, T={T}], got {lengths.tolist()}")
        was_training = self.training
        self.eval()
        try:
            logits = self(self.input_transform(x, lengths), day_idx, lengths)
        finally:
            self.train(was_training)
        n = output_lengths(lengths, self.cfg.patch_size, self.cfg.patch_stride, self.output_lengths, logits.shape[1])
        return logits.float().log_softmax(-1), n

    def day_layer(self, x: torch.Tensor, day_idx: torch.Tensor, day_groups=None) -> torch.Tensor:
        """softsign(x W[day] + b[day]): x (B, T, C) -> (B, T, C). Trials are grouped by day (no (B, C, C) gather;
        see ops.day_affine) where ``day_idx`` is on the CPU or ``day_groups`` (ops.day_affine.plan_day_groups of the
        batch's host day indices) is given; else the gather. Both paths run this."""
        from fastdecoder.ops.day_affine import day_affine

        y = day_affine(x, day_idx, self.day_weights, self.day_biases, day_groups)
        return F.softsign(y) if self.cfg.day_activation == "softsign" else y

    def patch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, N, K*C) windows of K bins every S bins, in the preset's feature order."""
        K, S = self.cfg.patch_size, self.cfg.patch_stride
        if x.shape[1] < K:
            raise ValueError(f"input has {x.shape[1]} time bins, fewer than one patch of {K}")
        w = x.unfold(1, K, S)  # (B, N, C, K)
        if self.cfg.patch_order == "time_major":  # index k*C + c (b2t25)
            w = w.transpose(2, 3)
        return w.reshape(x.shape[0], w.shape[1], -1)  # channel_major: index c*K + k (b2t24, nn.Unfold)

    def initial_state(self, batch: int) -> torch.Tensor | None:
        if self.h0 is None:
            return None
        dirs = 2 if self.cfg.bidirectional else 1
        return self.h0.expand(self.cfg.num_layers * dirs, batch, self.cfg.hidden_size).contiguous()

    def forward(self, x: torch.Tensor, day_idx: torch.Tensor, lengths: torch.Tensor | None = None,
                day_groups=None) -> torch.Tensor:
        """x: (B, T, C) float, day_idx: (B,) int64, lengths: optional (B,) valid bins, day_groups: optional
        ops.day_affine.DayGroups of ``day_idx`` planned on the host -> logits (B, N, n_classes)."""
        if x.dim() != 3 or x.shape[2] != self.cfg.n_features:
            raise ValueError(f"x must be (batch, time, {self.cfg.n_features}), got {tuple(x.shape)}")
        if day_idx.shape != (x.shape[0],):
            raise ValueError(f"day_idx must be ({x.shape[0]},), got {tuple(day_idx.shape)}")
        x = self.smooth(x, lengths)
        x = self.input_dropout(self.day_layer(x, day_idx, day_groups))
        x = self.patch(x)
        return self.head(self.recurrence(x))

    def recurrence(self, x: torch.Tensor) -> torch.Tensor:
        """The (LayerNorm-)GRU over patches: (B, N, K*C) -> (B, N, H*dirs). Training on the CPU off the reference
        backend, an ``nn.GRU`` runs as ops.gru_cpu (same weights and math, one-GEMM-per-weight backward)."""
        from fastdecoder.ops import gru_cpu

        h0 = self.initial_state(x.shape[0])
        if (self.rnn_backend != "reference" and x.device.type == "cpu" and torch.is_grad_enabled()
                and gru_cpu.supports(self.rnn)):
            return gru_cpu.gru_forward(self.rnn, x, h0)
        return self.rnn(x, h0)[0]


# ---------------------------------------------------------------------------------------------------------------
# Reference checkpoints (the layouts cffan/neural_seq_decoder and the NEJM trainer save)

_CFFAN_GRU = re.compile(r"^gru_decoder\.(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
_NEJM_GRU = re.compile(r"^gru\.(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def _read_state_dict(path_or_state_dict) -> dict:
    if isinstance(path_or_state_dict, Mapping):
        sd = dict(path_or_state_dict)
    else:
        path = Path(path_or_state_dict)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            sd = load_weights_only(path)  # tensors, plain containers and numpy float scalars (NEJM's val_loss)
        except UnsafeFileError:
            raise
        except Exception as e:  # noqa: BLE001 - any other failure means: not a readable PyTorch file
            raise ValueError(f"{path} is not a readable PyTorch checkpoint of tensors: {e}") from None
        if not isinstance(sd, Mapping):
            raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict or checkpoint dict")
        from fastdecoder.limits import EXPANSION_SLACK_BYTES, expanded_size

        # the model's sizes come from these tensors: their values (stride-0 views included) must be in the file
        expanded_size(sd, path.stat().st_size + EXPANSION_SLACK_BYTES, f"{path}")
    if "model_state_dict" in sd and isinstance(sd["model_state_dict"], Mapping):
        sd = dict(sd["model_state_dict"])
    return {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in sd.items()}


def _gru_layout(sd: dict, pattern: re.Pattern) -> tuple[int, int, bool]:
    layers, bidir, hidden = 0, False, None
    for k, v in sd.items():
        m = pattern.match(k)
        if m:
            layers = max(layers, int(m.group(3)) + 1)
            bidir |= m.group(4) is not None
            if m.group(1) == "weight" and m.group(2) == "hh":
                hidden = v.shape[1]
    if not layers or hidden is None:
        raise ValueError("the state dict has no GRU weights (expected gru_decoder.* or gru.* keys)")
    return layers, hidden, bidir


def load_reference_checkpoint(path_or_state_dict, preset: str = "b2t25", *, patch_stride: int = 4,
                              strict: bool = True) -> GRUDecoder:
    """Load a model trained by a reference repository into a GRUDecoder that gives the same logits.

    preset "b2t24": cffan/neural_seq_decoder's ``modelWeights`` (dayWeights, dayBias, gaussianSmoother.weight,
    gru_decoder.*, fc_decoder_out.*); "b2t25": the NEJM checkpoint dict (model_state_dict with day_weights.{i},
    day_biases.{i}, gru.*, out.*, h0; torch.compile's ``_orig_mod.`` prefix accepted; the NEJM trainer's numpy
    ``val_loss`` is admitted, any other Python object refused). Sizes come from the tensors; the stride (not stored
    in either layout) defaults to both presets' 4; the rest of the config (padding behaviour, output-length count
    used by ``predict``) is the preset's.
    """
    from fastdecoder.config import load_config

    sd = _read_state_dict(path_or_state_dict)
    preset_cfg = load_config(preset) if preset in ("b2t24", "b2t25") else None
    base = preset_cfg.model if preset_cfg is not None else None
    if preset == "b2t24":
        need = ("dayWeights", "dayBias", "fc_decoder_out.weight", "fc_decoder_out.bias")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"not a cffan/neural_seq_decoder state dict: missing {', '.join(missing)}")
        layers, hidden, bidir = _gru_layout(sd, _CFFAN_GRU)
        n_days, C, _ = sd["dayWeights"].shape
        in_size = sd["gru_decoder.weight_ih_l0"].shape[1]
        cfg = replace(base, n_features=C, n_days=n_days, hidden_size=hidden, num_layers=layers,
                      bidirectional=bidir, patch_size=in_size // C, patch_stride=patch_stride,
                      n_classes=sd["fc_decoder_out.weight"].shape[0])
        new = {"day_weights": sd["dayWeights"], "day_biases": sd["dayBias"],
               "head.weight": sd["fc_decoder_out.weight"], "head.bias": sd["fc_decoder_out.bias"]}
        if "gaussianSmoother.weight" in sd:
            new["smooth_taps"] = sd["gaussianSmoother.weight"][0, 0].float()
        for k, v in sd.items():
            if k.startswith("gru_decoder."):
                new["rnn." + k[len("gru_decoder."):]] = v
        ignored = [k for k in sd if k.startswith("inpLayer")]  # unused in the reference forward
    elif preset == "b2t25":
        day_keys = sorted((k for k in sd if k.startswith("day_weights.")), key=lambda k: int(k.split(".")[1]))
        if not day_keys or "out.weight" not in sd:
            raise ValueError("not a NEJM brain-to-text state dict: expected day_weights.{i}, gru.*, out.* keys")
        layers, hidden, _ = _gru_layout(sd, _NEJM_GRU)
        C = sd[day_keys[0]].shape[0]
        in_size = sd["gru.weight_ih_l0"].shape[1]
        n_days = len(day_keys)
        cfg = replace(base, n_features=C, n_days=n_days, hidden_size=hidden, num_layers=layers,
                      bidirectional=False, patch_size=in_size // C, patch_stride=patch_stride,
                      n_classes=sd["out.weight"].shape[0], learn_h0="h0" in sd)
        new = {"day_weights": torch.stack([sd[f"day_weights.{i}"] for i in range(n_days)]),
               "day_biases": torch.stack([sd[f"day_biases.{i}"].reshape(1, C) for i in range(n_days)]),
               "head.weight": sd["out.weight"], "head.bias": sd["out.bias"]}
        if "h0" in sd:
            new["h0"] = sd["h0"]
        for k, v in sd.items():
            if k.startswith("gru."):
                new["rnn." + k[len("gru."):]] = v
        ignored = []
    else:
        raise ValueError(f"preset must be 'b2t24' or 'b2t25', got {preset!r}")
    if in_size % C:
        raise ValueError(f"GRU input size {in_size} is not a multiple of the {C} features")
    model = GRUDecoder(cfg, output_lengths=preset_cfg.ctc.output_lengths)
    new.setdefault("smooth_taps", model.smooth_taps)  # the preset's taps unless the checkpoint stores its own
    model.load_state_dict(new, strict=strict)
    model.ignored_reference_keys = ignored
    return model.eval()
