"""Training throughput on the CPU: the demo model on 512-channel synthetic data, fast path vs reference path.

The ``demo`` preset (b2t25 family: input 14 x 512 = 7168, 2 x 192 GRU units, batch 32 of 4 days x 8 trials, noise
and offset augmentation, random cut) on synthetic data in the b2t25 HDF5 format with 512 features. The reference path
(host batches, torch's ``nn.GRU``, the published augmentation recipe) and the fast path (resident batches,
ops.gru_cpu's recurrence, fused optimizer) are two trainers built from the same seed, so both draw the same batches
and noise; their losses agree to fp32 round-off growing over the steps. On a shared machine the load drifts, so the
two trainers step in turn (reference step, fast step, ...), each step timed alone, and each path's rate is 1 / its
median step time: a load spike slows one step of each, not one path (each trainer keeps
its own state of the global generator that dropout draws from).
Both run the grouped day layer (ops.day_affine). Target on 2 cores: fast >= 1.5x reference.

``test_zz`` prints the table (and appends it as markdown to ``$FASTDECODER_BENCH_TABLE`` when set), for
bench/RESULTS.md. Set ``FASTDECODER_BENCH_TRAIN_STEPS`` for more timed steps (default 8, after 2 warm-up).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import replace

import pytest
import torch

from fastdecoder.config import load_config

STEPS = int(os.environ.get("FASTDECODER_BENCH_TRAIN_STEPS", "8"))
WARMUP = 2
_RESULT: dict = {}


def demo_512_config():
    cfg = load_config("demo")
    synthetic = dict(cfg.data.synthetic, n_features=512)
    return replace(cfg, data=replace(cfg.data, synthetic=synthetic))


def _interleaved(cfg) -> dict:
    """Both trainers step in turn; per path the step times, losses and the rate 1 / median step time."""
    from fastdecoder.train.trainer import Trainer

    never = 10**9
    paths = {}
    for name, fast in (("reference", False), ("fast", True)):
        c = replace(cfg, train=replace(cfg.train, fast=fast, eval_every=never, log_every=never,
                                       checkpoint_every=never, beam_width=0, plot=False))
        paths[name] = {"trainer": Trainer(c, None, progress=False), "seconds": [], "losses": []}
        paths[name]["rng"] = torch.get_rng_state()  # dropout's global generator as this trainer left it
    for step in range(WARMUP + STEPS):
        for p in paths.values():
            torch.set_rng_state(p["rng"])
            t0 = time.perf_counter()
            out = p["trainer"].train_step(p["trainer"].next_batch())
            p["rng"] = torch.get_rng_state()
            if step >= WARMUP:
                p["seconds"].append(time.perf_counter() - t0)
            if out.get("deferred"):  # the fast step leaves its loss on the device until a read (untimed here)
                out = p["trainer"].read_steps()[-1]
            p["losses"].append(out["loss"])
    for p in paths.values():
        del p["trainer"], p["rng"]
        p["batches_per_second"] = 1.0 / statistics.median(p["seconds"])
    a, b = torch.tensor(paths["reference"]["losses"]), torch.tensor(paths["fast"]["losses"])
    return {**paths, "speedup": paths["fast"]["batches_per_second"] / paths["reference"]["batches_per_second"],
            "loss_max_rel_diff": float(((a - b).abs() / a.abs().clamp(min=1e-12)).max()), "compared_steps": len(a)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU benchmark; the GPU check measures the GPU")
def test_train_fast_vs_reference_cpu(benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic data goes to ./runs/synthetic
    load_before = os.getloadavg()
    r = benchmark.pedantic(_interleaved, args=(demo_512_config(),), rounds=1, iterations=1)
    r["load_before"], r["load_after"] = load_before, os.getloadavg()
    _RESULT.update(r)
    losses = torch.tensor([r["reference"]["losses"], r["fast"]["losses"]])
    assert torch.isfinite(losses).all()
    assert r["loss_max_rel_diff"] <= 1e-3, losses
    benchmark.extra_info.update(speedup=r["speedup"], loss_max_rel_diff=r["loss_max_rel_diff"])


def test_zz_train_cpu_table():
    if not _RESULT:
        pytest.skip("the benchmark above did not run")
    r = _RESULT
    lb, la = r["load_before"], r["load_after"]
    lines = [f"demo model, 512 features, batch 32, {platform.machine()} {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads, {STEPS} timed steps after {WARMUP} warm-up per path; "
             f"1-min load average {lb[0]:.2f} before, {la[0]:.2f} after",
             "", "| path | median s/step | min s/step | max s/step | batches/s |", "|---|---|---|---|---|"]
    for name in ("reference", "fast"):
        t = r[name]["seconds"]
        lines.append(f"| {name} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} | "
                     f"{r[name]['batches_per_second']:.3f} |")
    lines += ["", f"speed-up fast / reference: {r['speedup']:.2f}x (ratio of the medians); losses over the first "
              f"{r['compared_steps']} steps: max relative difference {r['loss_max_rel_diff']:.2e}"]
    table = "\n".join(lines)
    print("\n" + table)
    out = os.environ.get("FASTDECODER_BENCH_TABLE")
    if out:
        with open(out, "a") as f:
            f.write(table + "\n")
