"""Optimizer parameter groups and learning-rate schedules.

Groups: "main" (weights, with weight decay; the learnable h0 too, as the NEJM trainer has it), "no_decay" (biases
and norm gains when ``no_decay_bias``; h0 as well when ``no_decay_h0``), "day" (day layers: own LR ``day_lr`` and
decay ``day_weight_decay``).
Optimizers: ``adam`` (coupled L2 decay: torch.optim.Adam's weight_decay) or ``adamw`` (decoupled), with the
configured betas and eps, fused on CUDA when ``optim.fused``.

The LR of a group at optimizer step ``step`` (0-based) is ``base_lr(group) * lr_multiplier(step) * scale``, where
``scale`` is the product of the plateau reductions and the adaptive (instability) reductions (``LRSchedule``):

    constant:       1
    linear:         warmup (0 -> 1 over warmup_steps), then 1 -> r linearly until decay_steps, then flat at r
    warmup_cosine:  warmup (0 -> 1 over warmup_steps), then
                    r + (1 - r) * 0.5 * (1 + cos(pi * (step - warmup) / (decay_steps - warmup))),
                    flat at r after decay_steps  (the NEJM trainer's schedule)            r = lr_min / lr
    onecycle:       torch.optim.lr_scheduler.OneCycleLR(max_lr=lr, total_steps=decay_steps, pct_start, div_factor,
                    final_div_factor, anneal_strategy='cos', three_phase=False) divided by lr; flat at its final
                    value after decay_steps. Momentum is not cycled.
    plateau:        1; ``LRSchedule.on_eval`` multiplies the scale by plateau_factor when the validation PER has
                    not improved (relative threshold) for more than plateau_patience evaluations (the semantics of
                    torch's ReduceLROnPlateau, mode 'min'), never taking lr * scale below lr_min.
"""
from __future__ import annotations

import logging
import math

import torch

from fastdecoder.config import OptimConfig

log = logging.getLogger("fastdecoder.train")


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    main, no_decay, day = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("day_"):
            day.append(p)
        elif cfg.no_decay_bias and (p.dim() < 2 or "bias" in name or name.startswith("ln_") or ".ln_" in name
                                    or (name == "h0" and cfg.no_decay_h0)):
            no_decay.append(p)
        else:
            main.append(p)
    groups = [{"name": "main", "params": main, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "lr": cfg.lr, "weight_decay": 0.0})
    if day:
        groups.append({"name": "day", "params": day, "lr": cfg.day_lr if cfg.day_lr is not None else cfg.lr,
                       "weight_decay": cfg.day_weight_decay})
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam (coupled L2 decay, as torch.optim.Adam's weight_decay) or AdamW (decoupled)."""
    groups = param_groups(model, cfg)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    kwargs = dict(betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.fused and device.type in ("cuda", "cpu"):  # fused CPU Adam(W): torch >= 2.4
        kwargs["fused"] = True
    opt = cls(groups, lr=cfg.lr, **kwargs)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def onecycle_lr(step: int, max_lr: float, total_steps: int, pct_start: float, div_factor: float,
                final_div_factor: float) -> float:
    """torch's OneCycleLR (cos anneal, two phases) at scheduler step ``step``; after the cycle, its final LR."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    step = min(max(step, 0), total_steps - 1)
    end1 = float(pct_start * total_steps) - 1.0
    end2 = float(total_steps - 1)
    if step <= end1:
        return _cos_anneal(initial, max_lr, step / end1 if end1 > 0 else 1.0)
    return _cos_anneal(max_lr, final, (step - end1) / (end2 - end1))


def lr_multiplier(step: int, cfg: OptimConfig) -> float:
    """LR multiplier applied at optimizer step ``step`` (0-based), before plateau/adaptive reductions."""
    if cfg.schedule in ("constant", "plateau"):
        return 1.0
    if cfg.schedule == "onecycle":
        return onecycle_lr(step, cfg.lr, cfg.decay_steps, cfg.onecycle_pct_start, cfg.onecycle_div_factor,
                           cfg.onecycle_final_div_factor) / cfg.lr
    w = cfg.warmup_steps
    if w > 0 and step < w:
        return step / w
    r = cfg.lr_min / cfg.lr
    progress = min(1.0, (step - w) / max(1, cfg.decay_steps - w))
    if cfg.schedule == "linear":
        return 1.0 + (r - 1.0) * progress
    if cfg.schedule == "warmup_cosine":
        return max(r, r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def set_lr(opt: torch.optim.Optimizer, step: int, cfg: OptimConfig, scale: float = 1.0) -> float:
    """Set every group's LR for ``step`` (times ``scale``); returns the main group's LR."""
    m = lr_multiplier(step, cfg) * scale
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * m
    return opt.param_groups[0]["lr"]


class LRSchedule:
    """The LR of every group: the schedule's multiplier times the plateau and adaptive reduction scales.

    Its state (the scales, the plateau's best value and counters) is part of every checkpoint, so a resumed run
    continues the schedule where it stopped instead of restarting it.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.plateau_scale = 1.0
        self.adaptive_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad_evals = 0
        self.plateau_cooldown_left = 0
        self.plateau_reductions = 0
        self.adaptive_reductions = 0

    @property
    def scale(self) -> float:
        return self.plateau_scale * self.adaptive_scale

    @property
    def peak_lr(self) -> float:
        """The main group's base LR times the reductions so far (what the schedule peaks at now)."""
        return self.cfg.lr * self.scale

    def apply(self, step: int) -> float:
        """Set the groups' LRs for optimizer step ``step``; returns the main group's LR."""
        return set_lr(self.optimizer, step, self.cfg, self.scale)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def on_eval(self, step: int, per: float) -> dict | None:
        """Plateau schedule: account one evaluation; returns an event dict when it reduced the LR."""
        c = self.cfg
        if c.schedule != "plateau" or not math.isfinite(per):
            return None
        if per < self.plateau_best * (1.0 - c.plateau_threshold):
            self.plateau_best, self.plateau_bad_evals = per, 0
        else:
            self.plateau_bad_evals += 1
        if self.plateau_cooldown_left > 0:
            self.plateau_cooldown_left -= 1
            self.plateau_bad_evals = 0
        if self.plateau_bad_evals <= c.plateau_patience:
            return None
        self.plateau_bad_evals = 0
        self.plateau_cooldown_left = c.plateau_cooldown
        old = self.peak_lr
        new_scale = max(self.plateau_scale * c.plateau_factor, c.lr_min / (c.lr * self.adaptive_scale))
        if self.plateau_scale - new_scale <= 1e-12 * max(1.0, self.plateau_scale):
            return None  # already at lr_min
        self.plateau_scale = new_scale
        self.plateau_reductions += 1
        ev = {"step": step, "event": "plateau_reduction", "lr_from": old, "lr_to": self.peak_lr,
              "val_per": per, "best_val_per": self.plateau_best, "reductions": self.plateau_reductions}
        log.warning("step %d: plateau schedule: validation PER %.4f has not improved on %.4f for %d evaluations; "
                    "LR reduced %.3g -> %.3g (reduction %d)", step, per, self.plateau_best, c.plateau_patience + 1,
                    old, self.peak_lr, self.plateau_reductions)
        return ev

    def reduce_adaptive(self, factor: float, min_lr: float) -> tuple[float, float] | None:
        """Multiply the LR by ``factor`` without taking the peak LR below ``min_lr``; (old, new) or None."""
        old = self.peak_lr
        new_scale = max(self.adaptive_scale * factor, min_lr / (self.cfg.lr * self.plateau_scale))
        if self.adaptive_scale - new_scale <= 1e-12 * max(1.0, self.adaptive_scale):
            return None
        self.adaptive_scale = new_scale
        self.adaptive_reductions += 1
        return old, self.peak_lr

    def state_dict(self) -> dict:
        return {"schedule": self.cfg.schedule, "plateau_scale": self.plateau_scale,
                "adaptive_scale": self.adaptive_scale, "plateau_best": self.plateau_best,
                "plateau_bad_evals": self.plateau_bad_evals, "plateau_cooldown_left": self.plateau_cooldown_left,
                "plateau_reductions": self.plateau_reductions, "adaptive_reductions": self.adaptive_reductions}

    def load_state_dict(self, d: dict) -> None:
        self.plateau_scale = float(d["plateau_scale"])
        self.adaptive_scale = float(d["adaptive_scale"])
        self.plateau_best = float(d["plateau_best"])
        self.plateau_bad_evals = int(d["plateau_bad_evals"])
        self.plateau_cooldown_left = int(d["plateau_cooldown_left"])
        self.plateau_reductions = int(d["plateau_reductions"])
        self.adaptive_reductions = int(d["adaptive_reductions"])


def describe_schedule(cfg: OptimConfig, steps: int) -> tuple[str, str | None]:
    """(one line saying what the LR does over ``steps`` steps, a warning if the schedule does not fit the run)."""
    lr_at = lambda s: cfg.lr * lr_multiplier(s, cfg)  # noqa: E731
    last = max(0, steps - 1)
    s = cfg.schedule
    if s == "constant":
        text = f"LR constant at {cfg.lr:.3g}"
    elif s == "plateau":
        text = (f"LR {cfg.lr:.3g}, x{cfg.plateau_factor:g} after {cfg.plateau_patience + 1} evaluations without a "
                f"better validation PER, down to {cfg.lr_min:.3g}")
    elif s == "onecycle":
        peak = int(cfg.onecycle_pct_start * cfg.decay_steps)
        text = (f"LR one cycle: {lr_at(0):.3g} -> {cfg.lr:.3g} at step {peak} -> "
                f"{lr_at(cfg.decay_steps - 1):.3g} at step {cfg.decay_steps}")
    else:
        warm = f"warmup 0 -> {cfg.lr:.3g} over {cfg.warmup_steps} steps, then " if cfg.warmup_steps else ""
        kind = "cosine" if s == "warmup_cosine" else "linear"
        text = f"LR {warm}{kind} decay to {cfg.lr_min:.3g} at step {cfg.decay_steps}"
    text += f"; {lr_at(last):.3g} at the last step ({steps})"
    if cfg.day_lr is not None and cfg.day_lr != cfg.lr:
        text += f"; day layers x{cfg.day_lr / cfg.lr:g}"
    warn = None
    if s in ("linear", "warmup_cosine", "onecycle") and cfg.decay_steps > steps:
        warn = (f"optim.decay_steps ({cfg.decay_steps}) is beyond train.steps ({steps}): the {s} schedule will not "
                f"finish; the LR at the last step is {lr_at(last):.3g}, not {lr_at(cfg.decay_steps):.3g}")
    if s in ("linear", "warmup_cosine") and cfg.warmup_steps >= steps:
        warn = (f"optim.warmup_steps ({cfg.warmup_steps}) >= train.steps ({steps}): the run ends during warmup")
    return text, warn
