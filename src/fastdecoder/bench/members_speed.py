"""``fastdecoder bench train --members K``: K members trained as one batched model against the K separate runs
they equal, on one machine in one call.

The compared paths are interleaved: ``blocks`` blocks of ``steps`` steps, each block timing the K-member step and
the K separate runs' steps (each run ``steps`` steps, one run after the other), the order alternating from block
to block, so a load that comes and goes on a shared machine falls on both. Reported: member-steps per second of
each (K * steps per second of the batched run; steps per second of the separate runs together), their ratio over
all blocks and its spread over the blocks (median, min, max), and the agreement of the members' losses with the
separate runs' (they draw the batches of their data seeds, and each separate run keeps its own dropout stream, as
it would alone).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from fastdecoder.config import Config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_members(cfg: Config, k: int, steps: int = 5, blocks: int = 6, warmup: int = 2) -> dict:
    """Time K members as one batched model against K separate runs (see the module docstring)."""
    from fastdecoder.config import member_configs
    from fastdecoder.train.members import MembersTrainer
    from fastdecoder.train.trainer import Trainer

    if k < 1 or steps < 1 or blocks < 1 or warmup < 0:
        raise ValueError("k, steps and blocks must be >= 1, warmup >= 0")
    never = 10**9
    base = replace(cfg, train=replace(cfg.train, members=k, member_overrides=None, steps=never, eval_every=never,
                                      log_every=never, checkpoint_every=never, beam_width=0, plot=False))
    batched = MembersTrainer(base, None, progress=False)
    separate, dropout = [], []  # each separate run's dropout stream (torch's global generator when it runs alone)
    for c in member_configs(batched.cfg):
        separate.append(Trainer(c, None, progress=False))
        dropout.append(torch.get_rng_state())
    dev = batched.device
    member_losses: list[list[float]] = []
    separate_losses: list[list[float]] = [[] for _ in range(k)]

    def run_batched(n: int) -> float:
        _sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            member_losses.append(batched.train_step(batched.next_batch())["loss"])
        _sync(dev)
        return time.perf_counter() - t

    def run_separate(n: int) -> float:
        _sync(dev)
        t = time.perf_counter()
        for i, tr in enumerate(separate):
            torch.set_rng_state(dropout[i])
            for _ in range(n):
                out = tr.train_step(tr.next_batch())
                separate_losses[i].append(out["loss"])
            dropout[i] = torch.get_rng_state()
        _sync(dev)
        return time.perf_counter() - t

    if warmup:
        run_batched(warmup)
        run_separate(warmup)
    t_batched, t_separate = [], []
    for b in range(blocks):
        if b % 2 == 0:
            t_batched.append(run_batched(steps))
            t_separate.append(run_separate(steps))
        else:
            t_separate.append(run_separate(steps))
            t_batched.append(run_batched(steps))
    ratios = [s / m for s, m in zip(t_separate, t_batched)]
    n = k * steps * blocks
    a = np.array(member_losses, dtype=np.float64)  # (steps, K)
    sep = np.array([ls if all(v is not None for v in ls) else [np.nan] * len(ls) for ls in separate_losses]).T
    rel = np.abs(a - sep) / np.maximum(np.abs(sep), 1e-12)
    return {"config": cfg.name, "device": str(dev), "path": "fast" if separate[0].backends.fast else "reference",
            "members": {"k": k, "steps_per_block": steps, "blocks": blocks, "warmup": warmup,
                        "member_steps_per_s": n / sum(t_batched), "separate_member_steps_per_s": n / sum(t_separate),
                        "ratio": sum(t_separate) / sum(t_batched),
                        "ratio_spread": {"median": statistics.median(ratios), "min": min(ratios),
                                         "max": max(ratios), "blocks": ratios},
                        "loss_max_rel_diff": float(np.nanmax(rel)) if np.isfinite(rel).any() else None}}


def format_members_report(r: dict) -> str:
    m = r["members"]
    s = m["ratio_spread"]
    lines = [f"bench train --members {m['k']}: {r['config']} on {r['device']} ({r['path']} path), {m['blocks']} "
             f"interleaved blocks of {m['steps_per_block']} steps after {m['warmup']} warm-up",
             "| path | member-steps/s |", "|---|---|",
             f"| {m['k']} members, one batched model | {m['member_steps_per_s']:.3f} |",
             f"| {m['k']} separate runs | {m['separate_member_steps_per_s']:.3f} |",
             f"ratio batched / separate: {m['ratio']:.2f}x (per block: median {s['median']:.2f}x, min {s['min']:.2f}x, "
             f"max {s['max']:.2f}x)"]
    if m["loss_max_rel_diff"] is not None:
        lines.append(f"members' losses vs the separate runs': max relative difference {m['loss_max_rel_diff']:.2e}")
    return "\n".join(lines)
