"""GRUDecoder: the reference model of both presets, and loaders for the reference checkpoints.

Forward: x (B, T, C) float32 neural features in 20 ms bins, day_idx (B,) int64 -> logits (B, N, 41), with
N = (T - patch_size) // patch_stride + 1.

    [smoothing, b2t24 only] -> day layer: softsign(x W_day + b_day) -> dropout -> patching -> GRU -> Linear head

The b2t25 model takes features already smoothed by its data transform (``input_transform``, the one eval-time
transform: evaluation and training call it). ``infer`` is the one inference path (eval transform, forward under the
run's autocast, valid output lengths): ``predict`` and ``fastdecoder.evaluation`` both run it.

Streaming (causal models): ``init_state(day)`` starts a trial, ``forward_chunk(bins, state)`` advances it by any
number of bins and returns the log-probabilities of the frames now complete; the frames of all chunks equal
``predict`` on the whole trial to fp32 round-off.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdecoder.config import ModelConfig
from fastdecoder.errors import UserError
from fastdecoder.losses import output_lengths as _output_lengths
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

    def input_taps(self) -> torch.Tensor | None:
        """(n,) float32 taps of the eval-time input smoothing on the model's device (b2t25, ``smoothing: input``);
        None where the preset smooths inside the model (b2t24) or not at all."""
        if self.cfg.smoothing != "input":
            return None
        return _smooth_taps(self.cfg.smooth_taps).to(self.head.weight.device)

    def input_transform(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                        taps: torch.Tensor | None = None) -> torch.Tensor:
        """The eval-time data transform of the preset, x (B, T, C) -> (B, T, C): Gaussian smoothing over time when it
        smooths in the data transform (b2t25, ``smoothing: input``; 'same' padding, zeros outside the trial or the
        batch); identity otherwise (b2t24 smooths inside ``forward``). ``taps``: ``input_taps()`` made once by a
        caller that runs it per batch (default: made here). Evaluation, ``predict`` and the training runs' eval
        transform all run this one."""
        if self.cfg.smoothing != "input":
            return x
        from fastdecoder.ops import augment

        return augment(x, self.padding_lengths(lengths), smooth_taps=self.cfg.smooth_taps if taps is None else taps,
                       backend=self.smoothing_backend)

    def infer(self, x: torch.Tensor, day_idx: torch.Tensor, lengths: torch.Tensor, *,
              autocast_dtype: torch.dtype | None = None, day_groups=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The one inference path (``predict`` and ``fastdecoder.evaluation``): the eval transform, the forward under
        autocast to ``autocast_dtype`` (None: fp32) and the valid output frames.

        x: (B, T, C) raw features on the model's device; day_idx: (B,) int64; lengths: (B,) int64 valid bins.
        Returns (logits (B, N, n_classes) float32, out_lengths (B,) int64 as ``ctc.output_lengths`` counts them).
        Runs in the model's current mode and grad mode: callers switch to eval mode and no_grad.
        """
        x = self.input_transform(x, lengths)
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = self(x, day_idx, lengths, day_groups)
        logits = logits.float()
        n = _output_lengths(lengths, self.cfg.patch_size, self.cfg.patch_stride, self.output_lengths,
                            logits.shape[1])
        return logits, n

    @torch.no_grad()
    def predict(self, x: torch.Tensor, day_idx: torch.Tensor, lengths: torch.Tensor | None = None, *,
                autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities from raw features, for either preset: ``infer`` in eval mode.

        x: (B, T, C) raw (unsmoothed) features, zero padded; day_idx: (B,) int64; lengths: (B,) valid bins (None:
        all T); autocast_dtype: as the run evaluates (None: fp32). Returns (log_probs (B, N, n_classes) float32
        natural-log, out_lengths (B,) int64 valid frames as ``ctc.output_lengths`` counts them). The training mode is
        restored afterwards.
        """
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
            logits, n = self.infer(x, day_idx, lengths, autocast_dtype=autocast_dtype)
        finally:
            self.train(was_training)
        return logits.log_softmax(-1), n

    def day_layer(self, x: torch.Tensor, day_idx, day_groups=None) -> torch.Tensor:
        """softsign(x W[day] + b[day]): x (B, T, C) -> (B, T, C). Trials are grouped by day (no (B, C, C) gather;
        see ops.day_affine) where ``day_idx`` is on the CPU or ``day_groups`` (ops.day_affine.plan_day_groups of the
        batch's host day indices) is given; else the gather. Both paths run this.

        ``day_idx`` a Python int: all of x (any leading shape, e.g. (n, C) bins of one trial) is of that day, one
        ``addmm`` on views of the day's weights (the streaming per-hop case: no grouping, no gather)."""
        if isinstance(day_idx, int):
            b, w = self.day_biases[day_idx, 0], self.day_weights[day_idx]
            y = (torch.addmm(b, x, w) if x.dim() == 2
                 else torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(x.shape))
        else:
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
        backend, an ``nn.GRU`` runs as ops.gru.cpu (same weights and math, one-GEMM-per-weight backward)."""
        from fastdecoder.ops.gru import cpu as gru_cpu

        h0 = self.initial_state(x.shape[0])
        if (self.rnn_backend != "reference" and x.device.type == "cpu" and torch.is_grad_enabled()
                and gru_cpu.supports(self.rnn)):
            return gru_cpu.gru_forward(self.rnn, x, h0)
        return self.rnn(x, h0)[0]

    # -- streaming: one trial, chunk by chunk ---------------------------------------------------------------------
    def stream_lookahead(self) -> int:
        """Bins of future input the smoothing needs before it can emit a bin (b2t25: 9 taps -> 4 bins = 80 ms)."""
        taps = self._stream_taps()
        return 0 if taps is None else taps.numel() // 2

    def _stream_taps(self) -> torch.Tensor | None:
        """The taps of the eval-time smoothing, in the data transform or in the model (None: no smoothing)."""
        if self.cfg.smoothing == "model":  # the buffer as it is now (a checkpoint may replace it)
            return self.smooth_taps.detach().to(self.head.weight.device, torch.float32)
        return self.input_taps()

    def init_state(self, day: int) -> "StreamState":
        """The state before the first bin of a trial recorded on day ``day`` (0 <= day < n_days), for
        ``forward_chunk``. A causal (unidirectional) model only: ValueError for a bidirectional one."""
        cfg = self.cfg
        if cfg.bidirectional:
            raise UserError(
                "streaming needs a causal model: this GRUDecoder is bidirectional (e.g. the b2t24 preset), so every "
                "output frame depends on the whole trial through the backward GRU and nothing can be decoded before "
                "the trial ends; train a unidirectional model (model.bidirectional: false, the b2t25 family)")
        if isinstance(day, bool) or not isinstance(day, int):
            raise UserError(f"day must be an integer day index, got {day!r}")
        if not 0 <= day < cfg.n_days:
            raise UserError(f"unknown day {day}: the model has day layers for days 0..{cfg.n_days - 1}")
        device = self.head.weight.device
        taps = self._stream_taps()
        n = 0 if taps is None else taps.numel()
        h = self.initial_state(1)  # (L, 1, H); a copy: a recurrence backend may write it in place
        h = (torch.zeros(cfg.num_layers, 1, cfg.hidden_size, device=device) if h is None
             else h.detach().float().clone())
        return StreamState(day=day, taps=taps, lookahead=n // 2,
                           raw=torch.zeros((n - 1) // 2 if n else 0, cfg.n_features, device=device),
                           features=torch.zeros(0, cfg.n_features, device=device), h=h)

    @torch.no_grad()
    def forward_chunk(self, bins: torch.Tensor, state: "StreamState", *, final: bool = False,
                      recurrence: Optional["ChunkRecurrence"] = None) -> tuple[torch.Tensor, "StreamState"]:
        """Advance a trial by ``bins`` (n, C) float32 on the model's device (n >= 0; finite: not checked here):
        returns (log_probs (m, n_classes) float32 of the m frames now complete, ``state`` updated in place).

        In the order of ``predict``: the smoothing (its lookahead held back until ``final``), the day layer, the
        patching (windows of patch_size bins every patch_stride bins), the GRU carried in ``state.h``, the head;
        always the eval-mode forward (no dropout), whatever mode the model is in, and the weights as they are now.
        ``final``: the trial ends after ``bins``; the last bins are smoothed against the zero padding ``predict``
        uses and the remaining frames returned; the state takes no more chunks.
        ``recurrence``: an optional backend for the GRU step (``ChunkRecurrence``); where it declines a chunk,
        the model's own GRU runs it. Both carry the same state.
        """
        if state.finished:
            raise ValueError("this stream state has finished its trial; start the next one with init_state(day)")
        if bins.dim() != 2 or bins.shape[1] != self.cfg.n_features or bins.dtype != torch.float32:
            raise ValueError(f"bins must be (n, {self.cfg.n_features}) float32, got shape {tuple(bins.shape)} "
                             f"{bins.dtype}")
        if bins.shape[0]:
            state.raw = torch.cat([state.raw, bins])
            state.bins += bins.shape[0]
        if final:
            state.raw = torch.cat([state.raw, state.raw.new_zeros(state.lookahead, self.cfg.n_features)])
            state.finished = True
            ready = state.bins - state.smoothed
        else:
            ready = state.bins - state.lookahead - state.smoothed
        return self._advance(state, ready, recurrence), state

    def _advance(self, state: "StreamState", ready: int, recurrence) -> torch.Tensor:
        """Smooth the next ``ready`` bins, run them through the day layer, and every window now complete through the
        GRU and the head: (m, V) log-probabilities."""
        if ready <= 0:
            return state.h.new_zeros(0, self.cfg.n_classes)
        taps = state.taps
        if self.cfg.smoothing == "model":  # the buffer as it is now
            taps = self._stream_taps()
            if taps.numel() != state.taps.numel():
                raise ValueError(f"the model's smooth_taps now hold {taps.numel()} taps, not the "
                                 f"{state.taps.numel()} this stream's lookahead was built for; start a new stream")
        raw = state.raw
        if taps is None:
            x = raw[:ready]
        else:  # out[t] = sum_k w[k] raw[t + k]: raw[0] is input bin (smoothed - left)
            x = taps[0] * raw[:ready]
            for k in range(1, taps.numel()):
                x = x + taps[k] * raw[k:k + ready]
        state.raw = raw[ready:]
        state.smoothed += ready
        if state.skip:  # bins between the last window's end and the next window's start: no window reads them
            drop = min(state.skip, x.shape[0])
            x, state.skip = x[drop:], state.skip - drop
        state.features = torch.cat([state.features, self.day_layer(x, state.day)])
        K, S = self.cfg.patch_size, self.cfg.patch_stride
        if state.features.shape[0] < K:
            return state.h.new_zeros(0, self.cfg.n_classes)
        windows = self.patch(state.features[None])  # (1, N, K*C)
        used = windows.shape[1] * S  # the next window starts this many bins after the first one
        state.skip = max(0, used - state.features.shape[0])
        state.features = state.features[used:]
        state.frames += windows.shape[1]
        return self.head(self._recurrence_chunk(windows, state, recurrence))[0].float().log_softmax(-1)

    def _recurrence_chunk(self, windows: torch.Tensor, state: "StreamState", recurrence) -> torch.Tensor:
        """(1, N, K*C) windows -> (1, N, H) GRU outputs, advancing ``state.h`` (L, 1, H)."""
        N = windows.shape[1]
        if recurrence is not None:
            L, _, H = state.h.shape
            out = recurrence(self.rnn, windows[0], state.h.view(L, H))
            if out is not None:
                state.backend_frames += N
                return out[None]
        out, h = _eval_view(self.rnn)(windows, state.h)
        state.h = h.contiguous()
        state.module_frames += N
        return out


#: ``recurrence(rnn, windows (N, K*C), h (L, H)) -> (N, H) | None``: a GRU step backend for ``forward_chunk``; it
#: runs ``rnn``'s layers over the N windows from the state ``h`` (overwritten in place with the state after the last
#: window) and returns the last layer's output per window, or None to leave the chunk to ``rnn`` itself.
ChunkRecurrence = Callable[[nn.Module, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


@dataclass(eq=False)
class StreamState:
    """One trial's streaming state of a GRUDecoder (``init_state`` / ``forward_chunk``); tensors on its device."""
    day: int                        # the trial's day (session) index
    taps: torch.Tensor | None       # (n,) smoothing taps at the start (n fixes the lookahead); None: no smoothing
    lookahead: int                  # n // 2 bins the smoothing holds back until the trial ends
    raw: torch.Tensor               # (left + pending, C) unsmoothed bins; the first ``(n - 1) // 2`` are left context
    features: torch.Tensor          # (f, C) day-layer outputs from the next window's first bin on
    h: torch.Tensor                 # (L, 1, H) float32 GRU state after the last frame
    bins: int = 0                   # input bins received
    smoothed: int = 0               # input bins smoothed
    skip: int = 0                   # smoothed bins to drop before the next window (patch_stride > patch_size)
    frames: int = 0                 # output frames returned
    backend_frames: int = 0         # frames the ``recurrence`` backend ran
    module_frames: int = 0          # frames the model's own GRU ran
    finished: bool = False          # ``final`` was given: the trial is over


def _eval_view(module: nn.Module) -> nn.Module:
    """``module`` when it is in eval mode; else a shallow copy of it in eval mode: a new object sharing the module's
    parameters, buffers, submodules and hooks (its ``__dict__`` entries), with its own ``training`` flag. Made per
    call, so it reads the weights as they are now, and the caller's module keeps its mode (no switch back and forth
    that another thread could observe). For modules whose own forward reads ``self.training`` (``nn.GRU`` and
    ``LayerNormGRU``: their between-layer dropout; their submodules have no mode-dependent behaviour)."""
    if not module.training:
        return module
    view = object.__new__(type(module))
    view.__dict__.update(module.__dict__)
    view.training = False
    return view


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
