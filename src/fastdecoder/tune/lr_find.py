"""The LR range test (``fastdecoder lr-find``): train with an exponentially growing LR and watch the loss.

Step i of n uses LR ``start * (end / start) ** (i / (n - 1))`` on the real training step (augmentation, CTC loss,
the config's optimizer and clipping; the day layers keep their LR ratio to the main group). The config's schedule
is ignored (the ramp sets the LR), and so is its Adam eps unless asked for (``eps``; default 1e-8, Adam's own, so
the suggestion does not depend on the preset's damping). The loss is smoothed with a bias-corrected exponential
moving average (``beta`` 0.9); the ramp stops when the smoothed loss exceeds ``diverge`` times its minimum or the
loss is NaN/Inf. Afterwards the model, optimizer and every counter are restored (bitwise).

Suggested LR (the steepest-descent rule): the LR where the smoothed loss falls fastest per decade of LR, i.e. the
most negative finite difference d(smoothed loss)/d(log10 LR), searched between the first tenth of the points and
the smoothed loss's minimum.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fastdecoder.config import Config
from fastdecoder.errors import UserError


@dataclass
class LRFindResult:
    lrs: list = field(default_factory=list)       # LR of each step
    losses: list = field(default_factory=list)    # raw training loss of each step
    smoothed: list = field(default_factory=list)  # bias-corrected EMA of the loss
    suggestion: float | None = None
    stopped: str = ""                              # why the ramp ended
    eps: float | None = None                      # Adam's eps during the ramp
    plot: str | None = None

    def describe(self) -> str:
        s = (f"lr-find: {len(self.lrs)} steps, LR {self.lrs[0]:.3g} .. {self.lrs[-1]:.3g}; {self.stopped}\n"
             if self.lrs else "lr-find: no step ran\n")
        if self.suggestion is None:
            s += "no suggestion: the smoothed loss never fell (try a lower --start or more --steps)"
        else:
            s += (f"suggested LR {self.suggestion:.3g} (steepest descent of the smoothed loss; found with Adam eps "
                  f"{self.eps:g}: train with --set optim.lr={self.suggestion:.3g} --set optim.eps={self.eps:g})")
        if self.plot:
            s += f"\nplot: {self.plot}"
        return s


class _RampLR:
    """Stands in for the trainer's LRSchedule during the ramp: ``apply`` sets the ramp's LR on every group."""

    def __init__(self, optimizer, base_lr: float):
        self.optimizer, self.base_lr, self.lr = optimizer, base_lr, base_lr
        self.scale, self.adaptive_reductions, self.plateau_reductions = 1.0, 0, 0

    @property
    def peak_lr(self) -> float:
        return self.lr

    def apply(self, step: int) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr * g["base_lr"] / self.base_lr
        return self.lr

    def current_lr(self) -> float:
        return self.lr

    def reduce_adaptive(self, factor: float, min_lr: float):
        return None

    def on_eval(self, step: int, per: float):
        return None


def suggest_lr(lrs, smoothed) -> float | None:
    """The steepest-descent rule (module docstring); None if the smoothed loss never falls."""
    lrs, sm = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    ok = np.isfinite(sm)
    lrs, sm = lrs[ok], sm[ok]
    if len(sm) < 5:
        return None
    lo = max(1, len(sm) // 10)
    hi = int(np.argmin(sm))
    if hi <= lo:
        return None
    slope = np.diff(sm[lo - 1: hi + 1]) / np.diff(np.log10(lrs[lo - 1: hi + 1]))
    i = int(np.argmin(slope))
    return float(lrs[lo + i]) if slope[i] < 0 else None


def lr_find(trainer, *, start: float = 1e-6, end: float = 10.0, steps: int = 100, diverge: float = 4.0,
            beta: float = 0.9) -> LRFindResult:
    """Run the ramp on ``trainer`` (a fastdecoder Trainer) and restore it; see the module docstring."""
    from fastdecoder.train.stability import NonFiniteError

    if not (0 < start < end) or not all(math.isfinite(v) for v in (start, end)):
        raise UserError(f"lr-find needs 0 < --start < --end, got start {start}, end {end}")
    if steps < 5:
        raise UserError(f"lr-find --steps must be >= 5, got {steps}")
    if not diverge > 1:
        raise UserError(f"lr-find --diverge must exceed 1, got {diverge}")
    saved = copy.deepcopy(trainer.state_dict())
    schedule, guard_schedule = trainer.schedule, trainer.guard.schedule
    ramp = _RampLR(trainer.optimizer, trainer.cfg.optim.lr)
    trainer.schedule = trainer.guard.schedule = ramp
    res = LRFindResult()
    avg, best = 0.0, math.inf
    try:
        for i in range(steps):
            ramp.lr = start * (end / start) ** (i / (steps - 1))
            try:
                out = trainer.train_step(trainer.next_batch())
                if out.get("deferred"):
                    out = trainer.read_steps()[-1]
                loss = float(out["loss"])
            except NonFiniteError:  # stability.abort_on_nonfinite: the guard stops at the first NaN/Inf
                loss = float("nan")
            res.lrs.append(ramp.lr)
            res.losses.append(loss)
            if not math.isfinite(loss):
                res.smoothed.append(float("nan"))
                res.stopped = f"stopped at LR {ramp.lr:.3g}: the loss is {loss}"
                break
            avg = beta * avg + (1 - beta) * loss
            sm = avg / (1 - beta ** (i + 1))
            res.smoothed.append(sm)
            best = min(best, sm)
            if i > 0 and sm > diverge * best:
                res.stopped = f"stopped at LR {ramp.lr:.3g}: the smoothed loss {sm:.3g} exceeds {diverge:g} x its " \
                              f"minimum {best:.3g}"
                break
        else:
            res.stopped = "reached the last LR without diverging"
    finally:
        trainer.schedule, trainer.guard.schedule = schedule, guard_schedule
        resumed_from = trainer.resumed_from
        trainer.load_state_dict(saved)
        trainer.resumed_from = resumed_from
    res.suggestion = suggest_lr(res.lrs, res.smoothed)
    res.eps = trainer.cfg.optim.eps
    return res


def plot_lr_find(res: LRFindResult, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(res.lrs, res.losses, alpha=0.35, label="loss")
    ax.plot(res.lrs, res.smoothed, label="smoothed loss")
    if res.suggestion is not None:
        ax.axvline(res.suggestion, color="red", linestyle="--", label=f"suggested LR {res.suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("CTC loss")
    finite = [v for v in res.smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.9, max(finite[0], min(finite)) * 1.5 + 1e-9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def lr_find_config(cfg: Config, out: Path, *, start: float = 1e-6, end: float = 10.0, steps: int = 100,
                   eps: float | None = 1e-8, diverge: float = 4.0) -> LRFindResult:
    """``fastdecoder lr-find``: a Trainer for ``cfg`` (eps replaced unless None; no schedule; no run folder beyond
    OUT/data for a synthetic set), the ramp, OUT/lr_find.png and OUT/lr_find.json."""
    from fastdecoder.train.trainer import Trainer

    if eps is not None and not (eps > 0 and math.isfinite(eps)):
        raise UserError(f"lr-find --eps must be a positive number, got {eps}")
    optim = replace(cfg.optim, schedule="constant", **({"eps": eps} if eps is not None else {}))
    cfg = replace(cfg, optim=optim, train=replace(cfg.train, plot=False))
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data.path is None and cfg.data.synthetic is not None:
        from fastdecoder.train.run_data import prepare_dataset

        _, path = prepare_dataset(cfg, out)
        cfg = replace(cfg, data=replace(cfg.data, path=str(path)))
    trainer = Trainer(cfg, None, progress=False)
    res = lr_find(trainer, start=start, end=end, steps=steps, diverge=diverge)
    res.plot = plot_lr_find(res, out / "lr_find.png")
    (out / "lr_find.json").write_text(json.dumps({"lrs": res.lrs, "losses": res.losses, "smoothed": res.smoothed,
                                                  "suggestion": res.suggestion, "stopped": res.stopped,
                                                  "eps": res.eps, "rule": "steepest descent of the smoothed loss"},
                                                 default=str))
    return res
