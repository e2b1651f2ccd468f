"""Training throughput on the CPU: the demo model on 512-channel synthetic data, reference path vs fast path in fp32
and in bf16.

The ``demo`` preset (b2t25 family: input 14 x 512 = 7168, 2 x 192 GRU units, batch 32 of 4 days x 8 trials, noise
and offset augmentation, random cut) on synthetic data in the b2t25 HDF5 format with 512 features. Three trainers
built from the same seed, so all draw the same batches, noise and dropout masks:

* ``reference``: host batches, torch's ``nn.GRU``, the published augmentation recipe, fp32 (the reference trainers
  autocast with ``device_type="cuda"``, inert on a CPU: this is what users run there);
* ``fast fp32`` (``train.amp: none``): resident batches, ops.gru.cpu's recurrence, fused AdamW; the same function
  as the reference to fp32 round-off;
* ``fast bf16`` (``train.amp: bf16``): the same under CPU bf16 autocast (the input projections, day layer and head
  in bf16, the recurrence and the loss in fp32), only where the CPU has native bf16 GEMMs (else the row is skipped
  with the reason).

On a shared machine the load drifts, so the trainers step in turn (reference, fast fp32, fast bf16, reference, ...),
each step timed alone, and each path's rate is 1 / its median step time: a load spike slows one step of each, not
one path (each trainer keeps its own state of the global generator that dropout draws from). Target on 2 cores:
fast >= 1.5x reference.

Losses: fast fp32 vs reference, max relative difference over all steps (round-off); fast bf16 vs reference, max
relative difference over the first ``EARLY`` steps (bf16 rounding) and the mean of the last losses (``LATE``, at
most half the steps) against the noise of the reference curve there (the scatter of its losses around their trend
line: the batch-to-batch noise).

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
from fastdecoder.device import cpu_bf16_gemms

STEPS = int(os.environ.get("FASTDECODER_BENCH_TRAIN_STEPS", "8"))
WARMUP = 2
_RESULT: dict = {}


def demo_512_config():
    cfg = load_config("demo")
    synthetic = dict(cfg.data.synthetic, n_features=512)
    return replace(cfg, data=replace(cfg.data, synthetic=synthetic))


EARLY = 4  # steps over which fast bf16 must match the reference to bf16 rounding
LATE = 10  # at most this many last losses (and at most half the steps) whose mean must agree within the noise
BF16_EARLY_REL = 2e-2


def _paths() -> list[tuple[str, bool, str]]:
    """(row name, train.fast, train.amp) of the rows this CPU can run."""
    rows = [("reference", False, "none"), ("fast fp32", True, "none")]
    return rows + [("fast bf16", True, "bf16")] if cpu_bf16_gemms()[0] else rows


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-12)).max())


def _scatter(losses: torch.Tensor) -> float:
    """The batch-to-batch noise of a loss curve: std of its residuals around the least-squares line (the trend of
    early training removed)."""
    t = torch.arange(len(losses), dtype=losses.dtype)
    design = torch.stack([t, torch.ones_like(t)], 1)
    fit = torch.linalg.lstsq(design, losses[:, None]).solution
    return float((losses - (design @ fit)[:, 0]).std())


def _interleaved(cfg) -> dict:
    """The trainers step in turn; per path the step times, losses and the rate 1 / median step time."""
    from fastdecoder.train.trainer import Trainer

    never = 10**9
    steps = WARMUP + STEPS  # log_every sizes the fast step's buffer of pending losses: a bound, not "never"
    paths = {}
    for name, fast, amp in _paths():
        c = replace(cfg, train=replace(cfg.train, fast=fast, amp=amp, eval_every=never, log_every=steps + 1,
                                       checkpoint_every=never, beam_width=0, plot=False))
        paths[name] = {"trainer": Trainer(c, None, progress=False), "seconds": [], "losses": []}
        paths[name]["rng"] = torch.get_rng_state()  # dropout's global generator as this trainer left it
    for step in range(steps):
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
        p["dtype"] = str(p["trainer"].amp_dtype or torch.float32).replace("torch.", "")
        del p["trainer"], p["rng"]
        p["batches_per_second"] = 1.0 / statistics.median(p["seconds"])
    ref = torch.tensor(paths["reference"]["losses"], dtype=torch.float64)
    late = max(3, min(LATE, len(ref) // 2))
    noise = _scatter(ref[-late:])
    for name, p in paths.items():
        p["speedup"] = p["batches_per_second"] / paths["reference"]["batches_per_second"]
        got = torch.tensor(p["losses"], dtype=torch.float64)
        p["max_rel_diff"], p["early_max_rel_diff"] = _rel(got, ref), _rel(got[:EARLY], ref[:EARLY])
        p["late_mean_diff"] = float(got[-late:].mean() - ref[-late:].mean())
    return {"paths": paths, "compared_steps": len(ref), "late": late, "late_noise": noise}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU benchmark; the GPU check measures the GPU")
def test_train_fast_vs_reference_cpu(benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the synthetic data goes to ./runs/synthetic
    load_before = os.getloadavg()
    r = benchmark.pedantic(_interleaved, args=(demo_512_config(),), rounds=1, iterations=1)
    r["load_before"], r["load_after"] = load_before, os.getloadavg()
    _RESULT.update(r)
    paths = r["paths"]
    losses = torch.tensor([p["losses"] for p in paths.values()])
    assert torch.isfinite(losses).all(), losses
    assert paths["fast fp32"]["max_rel_diff"] <= 1e-3, losses  # the same function: round-off only
    if "fast bf16" in paths:
        bf = paths["fast bf16"]
        assert bf["early_max_rel_diff"] <= BF16_EARLY_REL, losses
        assert abs(bf["late_mean_diff"]) <= max(r["late_noise"], 1e-3), (bf["late_mean_diff"], r["late_noise"])
    benchmark.extra_info.update({f"speedup {n}": p["speedup"] for n, p in paths.items() if n != "reference"})


def test_zz_train_cpu_table():
    if not _RESULT:
        pytest.skip("the benchmark above did not run")
    r = _RESULT
    lb, la = r["load_before"], r["load_after"]
    paths, late = r["paths"], r["late"]
    lines = [f"demo model, 512 features, batch 32, {platform.machine()} {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads, {STEPS} timed steps after {WARMUP} warm-up per path, "
             f"{len(paths)} paths interleaved; 1-min load average {lb[0]:.2f} before, {la[0]:.2f} after", "",
             f"| path | compute | median s/step | min s/step | max s/step | batches/s | vs reference | "
             f"loss vs reference: max rel. diff (all {r['compared_steps']} steps) | first {EARLY} steps | "
             f"mean of last {late} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in paths.items():
        t = p["seconds"]
        lines.append(f"| {name} | {p['dtype']} | {statistics.median(t):.3f} | {min(t):.3f} | {max(t):.3f} | "
                     f"{p['batches_per_second']:.3f} | {p['speedup']:.2f}x | {p['max_rel_diff']:.2e} | "
                     f"{p['early_max_rel_diff']:.2e} | {p['late_mean_diff']:+.4f} |")
    ok, why = cpu_bf16_gemms()
    lines += ["", "speed-ups: ratio of the median step times; 'mean of last' = mean loss of the path minus the "
              f"reference's over the last {late} steps; the reference's batch-to-batch noise there (std of its "
              f"losses around their trend line): {r['late_noise']:.4f}"]
    if not ok:
        lines.append(f"fast bf16 skipped: {why}")
    table = "\n".join(lines)
    print("\n" + table)
    out = os.environ.get("FASTDECODER_BENCH_TABLE")
    if out:
        with open(out, "a") as f:
            f.write(table + "\n")
