"""``fastdecoder bench train``: the fast path against the reference path, same data, same device, one call.

Both trainers start from the same seed, so they build the same model and draw the same batches; the loss curves of
their first steps must agree (to fused-vs-foreach Adam round-off on the CPU; to bf16/Triton rounding on a GPU).
Each path runs ``warmup`` steps, ``steps`` plainly timed steps (batches/s; host reads counted by host_reads.HostReads:
Python-level calls but the CPU-only checks marked ``cpu_host_read()``; on the reference path they include the
unfused Adam's step.item() of its step counters, which are host tensors on CUDA too; the deferred path's one read
comes at the end; on CUDA also
every synchronisation the device reports, C++ ones included, counted under ``torch.cuda.set_sync_debug_mode("warn")``),
then ``steps`` more with a synchronising phase timer (ms per step in data: the sampler, the batch gather and the LR
schedule; forward: augmentation, padding, model and loss; backward; optimizer: grad norm, clipping, the guard and the
update; the trainer itself never synchronises for timing). Compiles: dynamo's unique graphs during the run (0 where
nothing is compiled); graph captures: ``train.cuda_graphs``' captures (fast path only; give ``warmup`` enough steps
to meet every length bucket, or captures fall into the timed steps); peak memory: CUDA only (the allocator's peak after the trainer is built).
"""
from __future__ import annotations

import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastdecoder.config import Config

#: synthetic stand-ins with the real feature widths, for ``--synthetic``
SYNTHETIC = {"b2t25": {"format": "b2t25", "n_features": 512, "n_days": 4, "trials_per_day": 64},
             "b2t24": {"format": "b2t24", "n_features": 256, "n_days": 4, "trials_per_day": 64}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PHASES = ("data", "forward", "backward", "optimizer")


class PhaseTimer:
    """The trainer's ``on_phase``: synchronises the device at each phase boundary (in the bench only, never in
    training) and sums the seconds of data / forward / backward / optimizer."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.on = False
        self._t = 0.0

    def start(self) -> None:
        _sync(self.device)
        self._t = time.perf_counter()

    def phase(self, phase: str) -> None:
        """The trainer's ``on_phase``: the phase that just ended (timed only once ``on``)."""
        if not self.on:
            return
        _sync(self.device)
        now = time.perf_counter()
        self.seconds[phase] += now - self._t
        self._t = now


class DeviceSyncs:
    """Context manager: ``where`` counts every host-device synchronisation CUDA reports inside it (sync debug mode
    'warn'), by the innermost fastdecoder frame ('file.py:line `code`'); does nothing off CUDA (``total`` None)."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cuda"
        self.where: Counter = Counter()
        self._catch = None

    @property
    def total(self) -> int | None:
        return sum(self.where.values()) if self.on else None

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):  # raised while the calling Python frames are live (this one left out)
            self.where[where_in_package(traceback.extract_stack(sys._getframe(1)))] += 1

    def __enter__(self) -> "DeviceSyncs":
        if self.on:
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = self._record
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self._catch is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)
            self._catch = None


def where_in_package(frames) -> str:
    """The innermost frame of ``frames`` (a traceback.StackSummary) in the fastdecoder package: 'file.py:line
    `code`' ('outside fastdecoder' if none)."""
    import fastdecoder

    pkg = str(Path(fastdecoder.__file__).resolve().parent)
    ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(pkg)]
    return f"{Path(ours[-1].filename).name}:{ours[-1].lineno} `{ours[-1].line}`" if ours else "outside fastdecoder"


def run_path(cfg: Config, fast: bool, steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` steps on one path (the trainer's own loop); time the last ``steps``. Returns losses of
    every step, and of the timed steps: ms per step by phase (a second pass with synchronising phase timing), host
    reads per step (counted, see host_reads), dynamo compiles, peak memory."""
    from torch._dynamo.utils import counters

    from fastdecoder.bench.host_reads import HostReads
    from fastdecoder.train.trainer import Trainer

    never = 10**9
    c = replace(cfg, train=replace(cfg.train, fast=fast, steps=warmup + 2 * steps, eval_every=never,
                                   log_every=warmup + 2 * steps, checkpoint_every=never, beam_width=0, plot=False,
                                   cuda_graphs=cfg.train.cuda_graphs and fast))  # graphs: a fast-path option
    tr = Trainer(c, None, progress=False)
    dev = tr.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    losses: list[float] = []
    t0: list[float] = []
    graphs0 = counters["stats"]["unique_graphs"]
    timer = PhaseTimer(dev)
    reads = HostReads()
    syncs = DeviceSyncs(dev)

    def start_counting() -> None:
        t0.append(time.perf_counter())
        reads.__enter__()
        syncs.__enter__()

    def on_step(out: dict) -> None:
        if tr.step == warmup:
            _sync(dev)
            start_counting()
        elif tr.step == warmup + steps:  # the plain timing ends; the phase-timed pass begins
            _sync(dev)
            t0.append(time.perf_counter())
            syncs.__exit__()
            reads.__exit__()
            timer.on = True
        if timer.on:
            timer.start()

    if warmup == 0:
        start_counting()
    try:
        tr.run(on_step=on_step, on_read=lambda outs: losses.extend(o["loss"] for o in outs),
               on_phase=timer.phase, evaluate=False)  # training speed only: no evaluation
    finally:
        syncs.__exit__()
        if reads.active:
            reads.__exit__()
    seconds = t0[1] - t0[0]
    graphs = tr.step_fn.graphs
    return {"fast": fast, "device": str(dev), "batches_per_second": steps / seconds if seconds > 0 else float("nan"),
            "seconds": seconds, "losses": losses[: warmup + steps],
            "ms_per_step": {k: 1e3 * v / steps for k, v in timer.seconds.items()},
            "host_reads_per_step": sum(reads.disallowed.values()) / steps,
            "host_read_sites": sorted(f"{m} {s}" for m, s in reads.disallowed),
            "device_syncs_per_step": syncs.total / steps if syncs.on else None,
            "device_sync_sites": dict(syncs.where),
            "compiles": counters["stats"]["unique_graphs"] - graphs0, "deferred": tr.deferred,
            "graph_captures": graphs.captures if graphs is not None else 0,
            "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None,
            "ops_backend": tr.backends.ops, "compiled": tr.step_fn.compiled}


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
             "| path | ops | compiled | batches/s | ms/step data / forward / backward / optimizer | host reads/step "
             "(Python) | device syncs/step (CUDA) | compiles | graph captures | peak GPU memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("reference", "fast"):
        p = r[name]
        mem = f"{p['peak_memory_gb']:.2f} GB" if p["peak_memory_gb"] is not None else "n/a (CPU)"
        syncs = f"{p['device_syncs_per_step']:.2f}" if p["device_syncs_per_step"] is not None else "n/a (CPU)"
        ms = " / ".join(f"{p['ms_per_step'][k]:.1f}" for k in PHASES)
        lines.append(f"| {name} | {p['ops_backend']} | {p['compiled']} | {p['batches_per_second']:.2f} | {ms} "
                     f"| {p['host_reads_per_step']:.2f} | {syncs} | {p['compiles']} | {p['graph_captures']} "
                     f"| {mem} |")
    lines.append(f"speed-up fast / reference: {r['speedup']:.2f}x")
    lines.append(f"loss agreement over the first {r['compared_steps']} steps: max relative difference "
                 f"{r['loss_max_rel_diff']:.2e}")
    return "\n".join(lines)
