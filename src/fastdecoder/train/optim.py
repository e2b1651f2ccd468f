"""Optimizer parameter groups and learning-rate schedules of the presets.

Groups: "main" (weights, with weight decay), "no_decay" (biases, norm gains, h0: no decay when
``no_decay_bias``), "day" (day layers: own LR ``day_lr`` and decay ``day_weight_decay``).
Schedules are functions of the step giving a multiplier of each group's base LR:

    constant:       1
    linear:         warmup (0 -> 1 over warmup_steps), then 1 -> lr_min/lr linearly until decay_steps, then flat
    warmup_cosine:  warmup (0 -> 1 over warmup_steps), then
                    r + (1 - r) * 0.5 * (1 + cos(pi * (step - warmup) / (decay_steps - warmup))), r = lr_min / lr,
                    flat at r after decay_steps  (the NEJM trainer's schedule)
"""
from __future__ import annotations

import math

import torch

from fastdecoder.config import OptimConfig


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    main, no_decay, day = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("day_"):
            day.append(p)
        elif cfg.no_decay_bias and (p.dim() < 2 or "bias" in name or name.startswith("ln_") or ".ln_" in name
                                    or name == "h0"):
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
    if cfg.fused and device.type == "cuda":
        kwargs["fused"] = True
    opt = cls(groups, lr=cfg.lr, **kwargs)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def lr_multiplier(step: int, cfg: OptimConfig) -> float:
    """LR multiplier applied at optimizer step ``step`` (0-based)."""
    if cfg.schedule == "constant":
        return 1.0
    w = cfg.warmup_steps if cfg.schedule in ("warmup_cosine", "linear") else 0
    if w > 0 and step < w:
        return step / w
    r = cfg.lr_min / cfg.lr
    progress = min(1.0, (step - w) / max(1, cfg.decay_steps - w))
    if cfg.schedule == "linear":
        return 1.0 + (r - 1.0) * progress
    if cfg.schedule == "warmup_cosine":
        return max(r, r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def set_lr(opt: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> float:
    """Set every group's LR for ``step``; returns the main group's LR."""
    m = lr_multiplier(step, cfg)
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * m
    return opt.param_groups[0]["lr"]
