"""``fastdecoder bench train``: the fast path against the reference path, same data, same device, one call.

Both trainers start from the same seed, so they build the same model and draw the same batches; the loss curves of
their first steps must agree (exactly on the CPU, where both run the reference ops; to bf16/Triton rounding on a GPU).
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from fastdecoder.config import Config

#: synthetic stand-ins with the real feature widths, for ``--synthetic``
SYNTHETIC = {"b2t25": {"format": "b2t25", "n_features": 512, "n_days": 4, "trials_per_day": 64},
             "b2t24": {"format": "b2t24", "n_features": 256, "n_days": 4, "trials_per_day": 64}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_path(cfg: Config, fast: bool, steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` steps on one path (the trainer's own loop); time the last ``steps``. Returns losses of
    every step."""
    from fastdecoder.train.trainer import Trainer

    never = 10**9
    c = replace(cfg, train=replace(cfg.train, fast=fast, steps=warmup + steps, eval_every=never, log_every=never,
                                   checkpoint_every=never, beam_width=0, plot=False))
    tr = Trainer(c, None, progress=False)
    tr.val_split = None  # training speed only: no evaluation at the end
    dev = tr.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    losses: list[float] = []
    t0: list[float] = []

    def on_step(out: dict) -> None:
        losses.append(out["loss"])
        if tr.step == warmup:
            _sync(dev)
            t0.append(time.perf_counter())

    if warmup == 0:
        t0.append(time.perf_counter())
    tr.run(on_step=on_step)
    _sync(dev)
    seconds = time.perf_counter() - t0[0]
    return {"fast": fast, "device": str(dev), "batches_per_second": steps / seconds if seconds > 0 else float("nan"),
            "seconds": seconds, "losses": losses,
            "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
            "ops_backend": tr.ops_backend, "compiled": tr.forward is not tr.model and tr.ddp is None}


def bench_train(cfg: Config, steps: int = 50, warmup: int = 5, compare_steps: int = 10) -> dict:
    """Reference path, then fast path; batches/s of each, their ratio, peak memory, loss agreement."""
    ref = run_path(cfg, False, steps, warmup)
    fast = run_path(cfg, True, steps, warmup)
    k = min(compare_steps, len(ref["losses"]))
    a, b = np.array(ref["losses"][:k]), np.array(fast["losses"][:k])
    rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-12)
    return {"config": cfg.name, "device": fast["device"], "steps": steps, "warmup": warmup,
            "reference": ref, "fast": fast, "speedup": fast["batches_per_second"] / ref["batches_per_second"],
            "loss_max_rel_diff": float(rel.max()) if k else float("nan"), "compared_steps": k}


def format_report(r: dict) -> str:
    lines = [f"bench train: {r['config']} on {r['device']}, {r['steps']} timed steps after {r['warmup']} warm-up",
             "| path | ops | compiled | batches/s | peak GPU memory |", "|---|---|---|---|---|"]
    for name in ("reference", "fast"):
        p = r[name]
        mem = f"{p['peak_memory_gb']:.2f} GB" if p["peak_memory_gb"] is not None else "n/a (CPU)"
        lines.append(f"| {name} | {p['ops_backend']} | {p['compiled']} | {p['batches_per_second']:.2f} | {mem} |")
    lines.append(f"speed-up fast / reference: {r['speedup']:.2f}x")
    lines.append(f"loss agreement over the first {r['compared_steps']} steps: max relative difference "
                 f"{r['loss_max_rel_diff']:.2e}")
    return "\n".join(lines)
