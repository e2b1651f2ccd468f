"""Stability guards: non-finite updates are skipped (or abort the run), repeated instability lowers the LR.

The failures these guard against are the ones hand-tuned trainings of these models hit: NaN/Inf gradients at high LR,
gradient norms growing step after step, and runs that had to be stopped by hand and restarted with a lower LR.

* A step whose loss or total gradient norm (before clipping) is NaN/Inf is *skipped*: no optimizer step, so neither
  the weights nor Adam's moments see it. It is counted (``skipped``), logged, and written to metrics.jsonl as an
  ``skipped_update`` event naming the first parameters with non-finite gradients. ``abort_on_nonfinite`` stops the
  run at the first one instead (like the NEJM trainer); ``max_consecutive_skips`` stops a run that only skips.
* Adaptive LR (``adaptive_lr``): an *instability event* is a skipped step or a pre-clip grad norm above
  ``grad_norm_threshold``. When ``instability_events`` of them fall within ``instability_window`` steps the LR is
  multiplied by ``lr_reduction_factor`` (at most ``max_lr_reductions`` times, never taking the peak LR below
  ``min_lr``), logged and recorded as an ``lr_reduction`` event; the window then starts afresh.
"""
from __future__ import annotations

import logging
import math

import torch

from fastdecoder.config import StabilityConfig

log = logging.getLogger("fastdecoder.train")

_SUGGEST = ("lower optim.lr (or a warmup / decaying schedule), clip gradients (optim.grad_clip, "
            "1.0-10 is a common range), keep Adam's optim.eps at 0.1 as both presets do, or set stability.adaptive_lr: true")


class NonFiniteError(RuntimeError):
    """The run stopped on non-finite losses/gradients (abort_on_nonfinite, or too many skipped updates in a row)."""


class InstabilityGuard:
    """Decides per step whether the update is applied, and lowers the LR through ``schedule`` when asked to."""

    def __init__(self, cfg: StabilityConfig, schedule=None):
        self.cfg = cfg
        self.schedule = schedule       # an optim.LRSchedule (reduce_adaptive); None disables reductions
        self.skipped = 0               # updates skipped because of a non-finite loss or gradient
        self.consecutive = 0           # ... in a row, up to now
        self.overflow_skips = 0        # fp16 GradScaler overflows (expected now and then; not instability)
        self.high_grad_norm_steps = 0  # steps whose pre-clip grad norm exceeded grad_norm_threshold
        self.window: list[int] = []    # steps of recent instability events
        self.limit_logged = False

    def observe(self, step: int, loss: float, grad_norm: float, *, loss_finite: bool, grad_finite: bool,
                bad_params=None, infeasible: bool = False) -> tuple[bool, list[dict]]:
        """Account step ``step`` (1-based); returns (apply the update?, events to record).

        ``bad_params()`` -> names of parameters with non-finite gradients (only called on the slow path).
        """
        c = self.cfg
        events: list[dict] = []
        finite = loss_finite and grad_finite
        if not finite:
            names = list(bad_params()) if bad_params is not None else []
            what = "loss" if not loss_finite else "gradient"
            detail = (f"step {step}: non-finite {what} (loss {loss}, grad norm {grad_norm})"
                      + (f"; non-finite gradients in {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")
                         if names else "")
                      + ("; the batch holds targets longer than their output frames (see the warning above)"
                         if infeasible and not loss_finite else ""))
            if c.abort_on_nonfinite:
                raise NonFiniteError(f"{detail}. Stopping because stability.abort_on_nonfinite is true. "
                                     f"Suggestions: {_SUGGEST}.")
            self.skipped += 1
            self.consecutive += 1
            events.append({"step": step, "event": "skipped_update", "loss": _num(loss),
                           "grad_norm": _num(grad_norm), "nonfinite_grads": names[:20], "skipped": self.skipped})
            if self.skipped <= 10 or self.skipped % 100 == 0:
                log.warning("%s: update skipped (%d skipped so far)%s", detail, self.skipped,
                            "" if self.skipped < 10 else "; further skips are logged every 100th")
            if c.max_consecutive_skips and self.consecutive >= c.max_consecutive_skips:
                raise NonFiniteError(f"{detail}. {self.consecutive} updates in a row were skipped "
                                     f"(stability.max_consecutive_skips = {c.max_consecutive_skips}): the run is not "
                                     f"training. Suggestions: {_SUGGEST}; check the data for NaN/Inf.")
        else:
            self.consecutive = 0
        high = finite and grad_norm > c.grad_norm_threshold
        if high:
            self.high_grad_norm_steps += 1
        if c.adaptive_lr and (high or not finite):
            self.window = [s for s in self.window if s > step - c.instability_window] + [step]
            if len(self.window) >= c.instability_events:
                ev = self._reduce(step)
                if ev is not None:
                    events.append(ev)
                self.window = []
        return finite, events

    def _reduce(self, step: int) -> dict | None:
        c, sch = self.cfg, self.schedule
        if sch is None:
            return None
        n = len(self.window)
        if sch.adaptive_reductions >= c.max_lr_reductions:
            if not self.limit_logged:
                self.limit_logged = True
                log.warning("step %d: instability repeats (%d events in %d steps) but the LR was already reduced "
                            "stability.max_lr_reductions = %d times; consider a lower optim.lr", step, n,
                            c.instability_window, c.max_lr_reductions)
            return None
        r = sch.reduce_adaptive(c.lr_reduction_factor, c.min_lr)
        if r is None:
            if not self.limit_logged:
                self.limit_logged = True
                log.warning("step %d: instability repeats (%d events in %d steps) but the LR is at "
                            "stability.min_lr = %.3g already", step, n, c.instability_window, c.min_lr)
            return None
        old, new = r
        log.warning("step %d: adaptive LR: %d instability events (non-finite or grad norm > %.3g) within %d steps; "
                    "LR reduced %.3g -> %.3g (reduction %d of at most %d)", step, n, c.grad_norm_threshold,
                    c.instability_window, old, new, sch.adaptive_reductions, c.max_lr_reductions)
        return {"step": step, "event": "lr_reduction", "lr_from": old, "lr_to": new, "events_in_window": n,
                "reductions": sch.adaptive_reductions}

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "overflow_skips": self.overflow_skips,
                "high_grad_norm_steps": self.high_grad_norm_steps, "window": list(self.window),
                "limit_logged": self.limit_logged}

    def load_state_dict(self, d: dict) -> None:
        self.skipped = int(d["skipped"])
        self.consecutive = int(d["consecutive"])
        self.overflow_skips = int(d["overflow_skips"])
        self.high_grad_norm_steps = int(d["high_grad_norm_steps"])
        self.window = [int(s) for s in d["window"]]
        self.limit_logged = bool(d["limit_logged"])


def _num(x: float):
    """A float for JSON: NaN/Inf as strings (JSON has no literals for them)."""
    return x if math.isfinite(x) else str(x)


class PendingSteps:
    """Loss and pre-clip grad norm of the steps since the last read, kept on the device (the deferred fast step).

    ``put`` writes one step's values with a device copy (no host read); ``read`` fetches every waiting step with one
    ``tolist()`` and returns (step, lr, infeasible, loss, grad_norm) tuples in order, for InstabilityGuard.observe.
    At most ``MAX_PENDING`` steps wait: a larger ``capacity`` (``train.log_every``, e.g. 10**9 to log never) does not
    allocate that many slots; the trainer reads when the buffer is full (one host read per ``MAX_PENDING`` steps).
    """

    MAX_PENDING = 1024

    def __init__(self, capacity: int, device):
        capacity = max(1, min(int(capacity), self.MAX_PENDING))
        self.values = torch.zeros(capacity, 2, dtype=torch.float32, device=device)  # (capacity, [loss, norm])
        self.host: list[tuple[int, float, bool]] = []  # (step, lr, infeasible) per waiting step

    @property
    def full(self) -> bool:
        return len(self.host) == self.values.shape[0]

    def __len__(self) -> int:
        return len(self.host)

    def put(self, step: int, lr: float, infeasible: bool, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.values[len(self.host)].copy_(torch.stack([loss.reshape(()), grad_norm.reshape(()).float()]))
        self.host.append((step, lr, infeasible))

    def read(self) -> list[tuple[int, float, bool, float, float]]:
        if not self.host:
            return []
        vals = self.values[: len(self.host)].tolist()  # the one host read of a log interval
        out = [(*h, loss, norm) for h, (loss, norm) in zip(self.host, vals)]
        self.host = []
        return out


def weights_finite(model: torch.nn.Module) -> bool:
    """True if every parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True
