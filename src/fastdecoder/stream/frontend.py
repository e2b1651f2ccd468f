"""The eval-time front end of a causal GRUDecoder, run incrementally: bins in, per-frame log-probabilities out.

Per pushed block of bins (20 ms each), in the order of the offline path (eval transform, then the model's forward):

* Gaussian smoothing over time ('same' padding, zeros outside the trial), the b2t25 data transform or the b2t24
  in-model smoothing: out[t] = sum_k w[k] x[t + k - (n - 1) // 2] needs n // 2 bins of lookahead, so smoothed bin t
  exists once bin t + n // 2 has arrived (b2t25: 9 taps -> 4 bins = 80 ms); at the end of the trial the missing
  right context is the zero padding the offline transform uses.
* the day layer per smoothed bin;
* patching: one window of patch_size bins every patch_stride bins, once patch_size bins exist (with patch_stride >
  patch_size the bins between windows are skipped, whichever push they arrive in);
* the GRU (nn.GRU or LayerNormGRU), its state carried from push to push, and the linear head. On the CPU an nn.GRU
  runs through the native fp32 step (stream.native_gru: same math, fp32 round-off) when a push yields at most
  ``NATIVE_MAX_FRAMES`` frames (the per-hop case), and as nn.GRU on longer pushes; both update the same state.

Always the eval-mode forward, whatever mode the caller puts the model in later: the frontend applies no input
dropout (its day layer is its own), and runs the GRU through an eval-mode view of it (``_eval_view``) whenever the
GRU is in training mode, so the between-layer dropout never acts and the caller's model keeps its mode.

So output frame j (bins [j S, j S + K) of the trial) is ready once bin j S + K - 1 + n // 2 has arrived.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdecoder.errors import UserError
from fastdecoder.stream.native_gru import NativeGRUStep, StepAhead, unsupported_reason

__all__ = ["IncrementalFrontend", "NATIVE_MAX_FRAMES"]

# Pushes of up to this many output frames run the native GRU step frame by frame; longer ones run nn.GRU, whose time
# per push is nearly flat from 4 frames on (the input projection of all frames as one product: W_ih read once per
# push, not once per frame), while the native step reads every weight once per frame.
# Measured at b2t25 size (input 7168, 5 x 768), one thread, AMD EPYC (2026-12-01, load average ~1.9, interleaved
# medians): 1 / 2 / 3 / 4 / 8 frames took 8.1 / 17.1 / 26.2 / 33.5 / 64.0 ms native, 11.5 / 21.3 / 30.2 / 27.3 /
# 30.9 ms through nn.GRU.
NATIVE_MAX_FRAMES = 3


class IncrementalFrontend:
    """Streaming forward of a unidirectional GRUDecoder in eval mode (one trial at a time: ``reset(day)``).

    ``gru_isa``: the native GRU step's path for an nn.GRU model on the CPU ("auto", or one of
    ``stream.native_gru.ISAS``; None: always nn.GRU). Every push reads the model's current weights (the native step
    takes them per call, see ``NativeGRUStep``); a push whose GRU is no longer a float32 CPU ``nn.GRU`` (or no
    longer the one of construction) runs through the model's own ``rnn``.
    Per-bin pushes on the native path compute most of each GRU step at the pushes before the bin that completes a
    frame (``ahead``: ``stream.native_gru.StepAhead``, time-major patches only).
    ``gru_frames`` counts the output frames each path ran in this object's lifetime ({"native": n, "torch": n}).
    """

    def __init__(self, model, device="cpu", gru_isa: str | None = "auto"):
        from fastdecoder.model import GRUDecoder

        if not isinstance(model, GRUDecoder):
            raise UserError(f"model must be a fastdecoder.model.GRUDecoder, got {type(model).__name__}")
        cfg = model.cfg
        if cfg.bidirectional:
            raise UserError(
                "streaming needs a causal model: this GRUDecoder is bidirectional (e.g. the b2t24 preset), so every "
                "output frame depends on the whole trial through the backward GRU and nothing can be decoded before "
                "the trial ends; train a unidirectional model (model.bidirectional: false, the b2t25 family)")
        self.device = torch.device(device)
        # Moving a module re-flattens nn.GRU's weights, which races with another stream's forward on the same model:
        # move only when needed, so that streams sharing a model can be built in any thread.
        if any(p.device != self.device for p in model.parameters()):
            model = model.to(self.device)
        self.model = model  # its training mode is left as the caller sets it (see _eval_view)
        self.n_features = cfg.n_features
        self.n_days = cfg.n_days
        self.patch_size, self.patch_stride = cfg.patch_size, cfg.patch_stride
        if cfg.smoothing == "input":
            from fastdecoder.ops import gaussian_taps

            taps = gaussian_taps(cfg.smooth_taps)
        elif cfg.smoothing == "model":
            taps = model.smooth_taps.detach().float().cpu()
        else:
            taps = None
        self.taps = None if taps is None else taps.to(self.device)  # the in-model taps: re-read at every push
        n = 0 if taps is None else int(taps.numel())
        self.left, self.lookahead = (n - 1) // 2 if n else 0, n // 2
        self.day = None
        self.native_gru = self.ahead = None
        if gru_isa is not None and self.device.type == "cpu" and unsupported_reason(model.rnn) is None:
            self.native_gru = NativeGRUStep(model.rnn, gru_isa)
            if cfg.patch_order == "time_major" or cfg.patch_size == 1:  # a bin's inputs are contiguous columns
                self.ahead = StepAhead(self.native_gru, cfg.patch_size, cfg.patch_stride, cfg.n_features)
        self.gru_frames = {"native": 0, "torch": 0}

    @property
    def bins_received(self) -> int:
        """Input bins pushed in this trial so far."""
        return self._received

    def reset(self, day: int) -> None:
        self.day = torch.tensor([day], dtype=torch.int64, device=self.device)
        C = self.n_features
        # raw[0] is input bin (smoothed - left); the bins before the trial are the zero padding.
        self._raw = torch.zeros(self.left, C, device=self.device)
        self._received = self._smoothed = 0
        self._skip = 0  # smoothed bins still to drop before the next window starts (patch_stride > patch_size)
        self._features = torch.zeros(0, C, device=self.device)  # day-layer outputs from the next window's start
        if self.ahead is not None:
            self.ahead.reset()
        h = self.model.initial_state(1)  # (L, 1, H) or None (zeros); a copy: the native step writes it in place
        if self.native_gru is not None:
            cfg = self.model.cfg
            h = (torch.zeros(cfg.num_layers, 1, cfg.hidden_size, dtype=torch.float32) if h is None
                 else h.detach().clone())
        self._h = h

    @torch.no_grad()
    def push(self, bins: torch.Tensor) -> torch.Tensor:
        """bins (n, C) float32 on the device -> (m, V) float32 log-probabilities of the frames now complete."""
        self._raw = torch.cat([self._raw, bins])
        self._received += bins.shape[0]
        return self._advance(self._received - self.lookahead - self._smoothed)

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The trial ends: the last bins are smoothed against zero padding; returns the remaining frames' log-probs."""
        self._raw = torch.cat([self._raw, torch.zeros(self.lookahead, self.n_features, device=self.device)])
        return self._advance(self._received - self._smoothed)

    def _advance(self, ready: int) -> torch.Tensor:
        V = self.model.cfg.n_classes
        if ready <= 0:
            return torch.zeros(0, V)
        taps = self.taps
        if self.model.cfg.smoothing == "model":  # the model's buffer as it is now (a checkpoint may replace it)
            taps = self.model.smooth_taps.detach().to(self.device, torch.float32)
            if taps.numel() != self.taps.numel():
                raise UserError(f"the model's smooth_taps now hold {taps.numel()} taps, not the {self.taps.numel()} "
                                "this stream's lookahead was built for; build a new StreamingDecoder")
        if taps is None:
            x = self._raw[:ready]
        else:
            x = taps[0] * self._raw[:ready]
            for k in range(1, taps.numel()):
                x = x + taps[k] * self._raw[k:k + ready]
        self._raw = self._raw[ready:]
        self._smoothed += ready
        if self._skip:  # bins between the last window's end and the next window's start: no window reads them
            drop = min(self._skip, x.shape[0])
            x, self._skip = x[drop:], self._skip - drop
        y = self._day_layer(x)
        self._features = torch.cat([self._features, y])
        if self._features.shape[0] < self.patch_size:
            if self.ahead is not None:  # no frame yet: what the next step can compute now (native_gru.StepAhead)
                self.ahead.absorb(self._features, self._h.view(self._h.shape[0], -1))
            return torch.zeros(0, V)
        windows = self.model.patch(self._features[None])  # (1, N, K*C)
        used = windows.shape[1] * self.patch_stride  # the next window starts this many bins after the first one
        self._skip = max(0, used - self._features.shape[0])
        self._features = self._features[used:]
        return self.model.head(self._recurrence(windows))[0].float().log_softmax(-1).cpu()

    def _day_layer(self, x: torch.Tensor) -> torch.Tensor:
        """model.day_layer for one trial: (n, C) -> (n, C), one ``x W[day] + b[day]`` on views of the day's weights
        (the batched op's grouping and weight gathers cost ~0.3 ms more a hop at b2t25 size, its weights out of cache
        after the GRU step; the same dot products, so equal to fp32 round-off)."""
        d = int(self.day[0])
        y = torch.addmm(self.model.day_biases[d, 0], x, self.model.day_weights[d])
        return F.softsign(y) if self.model.cfg.day_activation == "softsign" else y

    def _recurrence(self, windows: torch.Tensor) -> torch.Tensor:
        """(1, N, K*C) windows -> (1, N, H) GRU outputs, advancing the carried state ``_h`` (L, 1, H)."""
        N = windows.shape[1]
        rnn = self.model.rnn
        native = self.native_gru
        if native is None or N > NATIVE_MAX_FRAMES or native.rnn is not rnn or unsupported_reason(rnn) is not None:
            out, h = _eval_view(rnn)(windows, self._h)
            self._h = h if native is None else h.contiguous()
            if self.ahead is not None:
                self.ahead.reset()
            self.gru_frames["torch"] += N
            return out
        L, _, H = self._h.shape
        h = self._h.view(L, H)  # the weights as they are now, read for this call only
        out = native.run(windows[0], h) if self.ahead is None else self.ahead.run(windows[0], h)
        self.gru_frames["native"] += N
        return out[None]


def _eval_view(module: torch.nn.Module) -> torch.nn.Module:
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
