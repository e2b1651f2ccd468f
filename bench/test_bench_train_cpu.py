"""Training throughput on the CPU: the demo model on 512-channel synthetic data, fast path vs reference path.

The ``demo`` preset (b2t25 family: input 14 x 512 = 7168, 2 x 192 GRU units, batch 32 of 4 days x 8 trials, noise
and offset augmentation, random cut) on synthetic data in the b2t25 HDF5 format with 512 features. One call of
``fastdecoder.train.bench.bench_train``: the reference path (host batches, torch's ``nn.GRU``, the published
augmentation recipe), then the fast path (resident batches, ops.gru_cpu's recurrence, fused optimizer) from the
same seed, so both draw the same batches and noise; their losses agree to fp32 round-off growing over the steps.
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
from fastdecoder.train.bench import bench_train, format_report

STEPS = int(os.environ.get("FASTDECODER_BENCH_TRAIN_STEPS", "8"))
WARMUP = 2
_RESULT: dict = {}


def demo_512_config():
    cfg = load_config("demo")
    synthetic = dict(cfg.data.synthetic, n_features=512)
    return replace(cfg, data=replace(cfg.data, synthetic=synthetic))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU benchmark; the GPU check measures the GPU")
def test_train_fast_vs_reference_cpu(benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic data goes to ./runs/synthetic
    cfg = demo_512_config()
    r = benchmark.pedantic(bench_train, args=(cfg,), kwargs=dict(steps=STEPS, warmup=WARMUP,
                                                                 compare_steps=STEPS + WARMUP),
                           rounds=1, iterations=1)
    _RESULT.update(r)
    losses = torch.tensor([r["reference"]["losses"], r["fast"]["losses"]])
    assert torch.isfinite(losses).all()
    assert r["loss_max_rel_diff"] <= 1e-3, (r["reference"]["losses"], r["fast"]["losses"])
    benchmark.extra_info.update(speedup=r["speedup"], loss_max_rel_diff=r["loss_max_rel_diff"])


def test_zz_train_cpu_table():
    if not _RESULT:
        pytest.skip("the benchmark above did not run")
    r = _RESULT
    load = os.getloadavg()
    head = (f"demo model, 512 features, batch 32, {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads; load average before the end "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    table = head + "\n\n" + format_report(r)
    print("\n" + table)
    out = os.environ.get("FASTDECODER_BENCH_TABLE")
    if out:
        with open(out, "a") as f:
            f.write(table + "\n")
