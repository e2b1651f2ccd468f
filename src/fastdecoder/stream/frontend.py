"""The eval-time front end of a causal GRUDecoder, run incrementally: bins in, per-frame log-probabilities out.

A thin wrapper over the model's streaming API (``GRUDecoder.init_state`` / ``forward_chunk``: smoothing with its
lookahead, day layer, patching, the GRU carried from push to push, the head), which adds the native GRU step as the
model's chunk recurrence: on the CPU an nn.GRU runs through ``ops.gru.native_step`` (same math, fp32 round-off) when a
push yields at most ``NATIVE_MAX_FRAMES`` frames (the per-hop case), and as nn.GRU on longer pushes; both update the
same state.

Output frame j (bins [j S, j S + K) of the trial) is ready once bin j S + K - 1 + n // 2 has arrived (n smoothing
taps, K patch_size, S patch_stride).
"""
from __future__ import annotations

import torch

from fastdecoder.errors import UserError
from fastdecoder.ops.gru.native_step import ISAS, NativeGRUStep, StepAhead, unsupported_reason

__all__ = ["IncrementalFrontend", "NativeRecurrence", "NATIVE_MAX_FRAMES"]

# Pushes of up to this many output frames run the native GRU step frame by frame; longer ones run nn.GRU, whose time
# per push is nearly flat from 4 frames on (the input projection of all frames as one product: W_ih read once per
# push, not once per frame), while the native step reads every weight once per frame.
# Measured at b2t25 size (input 7168, 5 x 768), one thread, interleaved medians: 1 / 2 / 3 / 4 / 8 frames took
# 8.1 / 17.1 / 26.2 / 33.5 / 64.0 ms native, 11.5 / 21.3 / 30.2 / 27.3 / 30.9 ms through nn.GRU.
NATIVE_MAX_FRAMES = 3


class NativeRecurrence:
    """A ``GRUDecoder.forward_chunk`` recurrence backend: chunks of at most ``max_frames`` frames of a float32 CPU
    ``nn.GRU`` through :class:`NativeGRUStep` (made for the model's GRU at its first chunk, again if the model's GRU
    is replaced); it declines (None) every other chunk. ``isa``: "auto" or one of ``ops.gru.native_step.ISAS``.

    With time-major patches (b2t25), ``absorb(model, state)`` between chunks computes ahead the parts of the next
    step that do not need the frame's last bin (``StepAhead``: layer 0's input product bin by bin, every layer's
    hidden product), so that the push of the bin completing a frame reads about a quarter of the GRU's weights.
    ``ahead`` is that object (None before the first chunk); ``reset()`` forgets what it holds (a new trial)."""

    def __init__(self, isa: str = "auto", max_frames: int = NATIVE_MAX_FRAMES):
        if isa != "auto" and isa not in ISAS:
            raise ValueError(f"gru_isa must be 'auto' or one of {', '.join(ISAS)} (this CPU's), got {isa!r}")
        self.isa, self.max_frames = isa, max_frames
        self._step: NativeGRUStep | None = None
        self.ahead: StepAhead | None = None

    def _native(self, rnn) -> NativeGRUStep:
        step = self._step
        if step is None or step.rnn is not rnn:
            step = self._step = NativeGRUStep(rnn, self.isa)
            self.ahead = None
        return step

    def reset(self) -> None:
        if self.ahead is not None:
            self.ahead.reset()

    def absorb(self, model, state) -> None:
        """Between chunks (no frame pending): compute ahead what the next step can from ``state``'s features."""
        cfg, rnn = model.cfg, model.rnn
        if unsupported_reason(rnn) is not None or not (cfg.patch_order == "time_major" or cfg.patch_size == 1):
            return
        step = self._native(rnn)
        if self.ahead is None:
            self.ahead = StepAhead(step, cfg.patch_size, cfg.patch_stride, cfg.n_features)
        L, _, H = state.h.shape
        self.ahead.absorb(state.features, state.h.view(L, H))

    def __call__(self, rnn, windows: torch.Tensor, h: torch.Tensor) -> torch.Tensor | None:
        if windows.shape[0] > self.max_frames or unsupported_reason(rnn) is not None:
            self.reset()  # the model's GRU runs these frames: nothing computed ahead stays valid
            return None
        step = self._native(rnn)
        if self.ahead is not None:
            return self.ahead.run(windows, h)
        return step.run(windows, h)  # the weights as they are now, read for this call only


class IncrementalFrontend:
    """Streaming forward of a unidirectional GRUDecoder in eval mode (one trial at a time: ``reset(day)``), through
    the model's own streaming API.

    ``gru_isa``: the native GRU step's path for an nn.GRU model on the CPU ("auto", or one of
    ``ops.gru.native_step.ISAS``; None: always the model's own GRU). Every push reads the model's current weights (the
    native step takes them per call, see ``NativeGRUStep``); a push whose GRU is not a float32 CPU ``nn.GRU`` runs
    through the model's own ``rnn``. ``gru_frames`` counts the output frames each path ran in this object's lifetime
    ({"native": n, "torch": n}).
    """

    def __init__(self, model, device="cpu", gru_isa: str | None = "auto"):
        from fastdecoder.model import GRUDecoder

        if not isinstance(model, GRUDecoder):
            raise UserError(f"model must be a fastdecoder.model.GRUDecoder, got {type(model).__name__}")
        cfg = model.cfg
        if cfg.bidirectional:
            model.init_state(0)  # refused: the model says why streaming needs a causal model
        self.device = torch.device(device)
        # Moving a module re-flattens nn.GRU's weights, which races with another stream's forward on the same model:
        # move only when needed, so that streams sharing a model can be built in any thread.
        if any(p.device != self.device for p in model.parameters()):
            model = model.to(self.device)
        self.model = model  # its training mode is left as the caller sets it (forward_chunk runs in eval mode)
        self.n_features = cfg.n_features
        self.recurrence = (NativeRecurrence(gru_isa) if gru_isa is not None and self.device.type == "cpu"
                           else None)
        self.state = None
        self._past = {"native": 0, "torch": 0}  # frames of the trials before the current one

    @property
    def gru_frames(self) -> dict[str, int]:
        s = self.state
        if s is None:
            return dict(self._past)
        return {"native": self._past["native"] + s.backend_frames, "torch": self._past["torch"] + s.module_frames}

    @property
    def ahead(self):
        """The native recurrence's ``StepAhead`` (what it computed ahead: ``.counts``), or None."""
        return None if self.recurrence is None else self.recurrence.ahead

    @property
    def lookahead(self) -> int:
        """Bins of future input the smoothing holds back (the current trial's; before one, the model's now)."""
        return self.model.stream_lookahead() if self.state is None else self.state.lookahead

    @property
    def bins_received(self) -> int:
        """Input bins pushed in this trial so far."""
        return 0 if self.state is None else self.state.bins

    def reset(self, day: int) -> None:
        """Start a trial of day ``day`` (the model checks it; a refused day leaves the stream as it was)."""
        state = self.model.init_state(day)
        self._past, self.state = self.gru_frames, state
        if self.recurrence is not None:
            self.recurrence.reset()

    def push(self, bins: torch.Tensor) -> torch.Tensor:
        """bins (n, C) float32 on the device -> (m, V) float32 log-probabilities (CPU) of the frames now complete."""
        if self.state is None:
            raise RuntimeError("push before reset(day): start a trial first")
        lp = self.model.forward_chunk(bins, self.state, recurrence=self.recurrence)[0]
        if self.recurrence is not None and lp.shape[0] == 0 and not self.state.finished:
            self.recurrence.absorb(self.model, self.state)  # the idle time before the next frame's last bin
        return lp.cpu()

    def finish(self) -> torch.Tensor:
        """The trial ends: the last bins are smoothed against zero padding; returns the remaining frames' log-probs."""
        if self.state is None:
            raise RuntimeError("finish before reset(day): start a trial first")
        empty = torch.zeros(0, self.n_features, device=self.device)
        return self.model.forward_chunk(empty, self.state, final=True, recurrence=self.recurrence)[0].cpu()
