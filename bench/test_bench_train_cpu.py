"""Training throughput on the CPU: the demo model on 512-channel synthetic data, fast path vs reference path.

The ``demo`` preset (b2t25 family: input 14 x 512 = 7168, 2 x 192 GRU units, batch 32 of 4 days x 8 trials, noise
and offset augmentation, random cut) on synthetic data in the b2t25 HDF5 format with 512 features. The reference path
(host batches, torch's ``nn.GRU``, the published augmentation recipe) and the fast path (resident batches,
ops.gru_cpu's recurrence, fused optimizer), each a ``fastdecoder.train.bench.run_path`` from the same seed, so both
draw the same batches and noise; their losses agree to fp32 round-off growing over the steps. On a shared machine
the load drifts, so the paths run in the order reference, fast, fast, reference and each path's faster round counts
(the table lists all four).
Both run the grouped day layer (ops.day_affine). Target on 2 cores: fast >= 1.5x reference.

``test_zz`` prints the table (and appends it as markdown to ``$FASTDECODER_BENCH_TABLE`` when set), for
bench/RESULTS.md. Set ``FASTDECODER_BENCH_TRAIN_STEPS`` for more timed steps (default 8, after 2 warm-up).
"""
from __future__ import annotations

import os
import platform
from dataclasses import replace

import pytest
import torch

from fastdecoder.config import load_config
from fastdecoder.train.bench import run_path

STEPS = int(os.environ.get("FASTDECODER_BENCH_TRAIN_STEPS", "8"))
WARMUP = 2
_RESULT: dict = {}


def demo_512_config():
    cfg = load_config("demo")
    synthetic = dict(cfg.data.synthetic, n_features=512)
    return replace(cfg, data=replace(cfg.data, synthetic=synthetic))


def _abba(cfg) -> dict:
    """Rounds in the order reference, fast, fast, reference; each path's best rate and the loss agreement."""
    rounds = [run_path(cfg, fast, STEPS, WARMUP) for fast in (False, True, True, False)]
    best = {name: max(r["batches_per_second"] for r in rounds if r["fast"] == fast)
            for name, fast in (("reference", False), ("fast", True))}
    a, b = torch.tensor(rounds[0]["losses"]), torch.tensor(rounds[1]["losses"])
    return {"rounds": rounds, "best": best, "speedup": best["fast"] / best["reference"],
            "loss_max_rel_diff": float(((a - b).abs() / a.abs().clamp(min=1e-12)).max()), "compared_steps": len(a)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU benchmark; the GPU check measures the GPU")
def test_train_fast_vs_reference_cpu(benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic data goes to ./runs/synthetic
    load_before = os.getloadavg()
    r = benchmark.pedantic(_abba, args=(demo_512_config(),), rounds=1, iterations=1)
    r["load_before"], r["load_after"] = load_before, os.getloadavg()
    _RESULT.update(r)
    losses = torch.tensor([p["losses"] for p in r["rounds"]])
    assert torch.isfinite(losses).all()
    assert torch.equal(losses[0], losses[3]) and torch.equal(losses[1], losses[2])  # each path is reproducible
    assert r["loss_max_rel_diff"] <= 1e-3, losses[:2]
    benchmark.extra_info.update(speedup=r["speedup"], loss_max_rel_diff=r["loss_max_rel_diff"])


def test_zz_train_cpu_table():
    if not _RESULT:
        pytest.skip("the benchmark above did not run")
    r = _RESULT
    lb, la = r["load_before"], r["load_after"]
    lines = [f"demo model, 512 features, batch 32, {platform.machine()} {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads, {STEPS} timed steps after {WARMUP} warm-up per round; "
             f"1-min load average {lb[0]:.2f} before, {la[0]:.2f} after",
             "", "| round | path | batches/s |", "|---|---|---|"]
    lines += [f"| {i + 1} | {'fast' if p['fast'] else 'reference'} | {p['batches_per_second']:.3f} |"
              for i, p in enumerate(r["rounds"])]
    lines += ["", f"best of each: reference {r['best']['reference']:.3f}, fast {r['best']['fast']:.3f} batches/s; "
              f"speed-up fast / reference {r['speedup']:.2f}x; losses over the first {r['compared_steps']} steps: "
              f"max relative difference {r['loss_max_rel_diff']:.2e}"]
    table = "\n".join(lines)
    print("\n" + table)
    out = os.environ.get("FASTDECODER_BENCH_TABLE")
    if out:
        with open(out, "a") as f:
            f.write(table + "\n")
