"""Streaming decoding latency at b2t25 size on one CPU core: time per 80 ms hop (4 bins of 512 features: smoothing,
day layer x4, one step of the 5 x 768 GRU, head, beam update), without and with the word decoder, and N concurrent
streams (one thread each).

Model: the b2t25 preset's GRUDecoder (512 features, patch 14 x 512, 5 layers x 768, nn.GRU) with random weights,
torch.set_num_threads(1). Input: N(0, 1) bins. Each row times ``ROUNDS`` consecutive pushes of one long trial after a
warm-up that fills the patch and the smoothing lookahead (so every timed push emits exactly one frame). Word decoder:
the 10,000-word 3-gram lexicon/LM of bench/test_bench_words.py (built once and cached), beam 64, lm_weight 0.5.
Random weights give near-uniform posteriors, the word decoder's hardest case (many words compete every frame).
The "GRU step alone" rows time one step of the 5 x 768 GRU on one frame: the native fp32 step the frontend runs per
hop on the CPU (csrc/gru_step.cpp, ops.gru.native_step; its default path, and the AVX-512 one forced) and nn.GRU, the
path it replaced.
Times are wall-clock per push (pytest-benchmark's rounds); the CPU column is the pushing thread's CPU time, which a
machine shared with other jobs inflates less than wall time (memory-bandwidth contention still shows in both).
The last test prints the table and appends it to $FASTDECODER_BENCH_TABLE when set (for bench/RESULTS.md).

    .venv/bin/python -m pytest -q bench/test_bench_stream.py
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdecoder.config import load_config
from fastdecoder.decode import WordDecoder, load_arpa
from fastdecoder.model import GRUDecoder
from fastdecoder.stream import StreamingDecoder
from fastdecoder.ops.gru.native_step import ISAS, NativeGRUStep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bench_words import BEAM as WORD_BEAM, LM_WEIGHT, load_setup, make_lexicon  # noqa: E402

SEED = 20261201
HOP = 4
ROUNDS = int(os.environ.get("FASTDECODER_STREAM_ROUNDS", "300"))
WARMUP_BINS = 14 + 4 + 3 * HOP
TARGETS = {"no LM": (8.0, 16.0), "10k-word 3-gram": (12.0, None)}
ROWS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    cfg = replace(load_config("b2t25").model, n_features=512, n_days=1)
    return GRUDecoder(cfg).eval()


@pytest.fixture(scope="module")
def word_decoder():
    setup = load_setup()
    return WordDecoder(make_lexicon(setup), load_arpa(setup["arpa"]), lm_weight=LM_WEIGHT, beam_width=WORD_BEAM,
                       num_threads=1)


def _bins(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)


def _started(dec, seed):
    dec.reset(0)
    dec.push(_bins(WARMUP_BINS, seed))
    return dec


def _cpu_timed(fn, cpu: list):
    """fn, wrapped to append the CPU time of its thread per call to ``cpu`` (a loaded machine inflates wall time)."""
    def run():
        t0 = time.thread_time()
        fn()
        cpu.append(time.thread_time() - t0)
    return run


def _row(name, seconds, cpu_seconds, extra=""):
    ms = np.asarray(seconds) * 1e3
    ROWS[name] = dict(median=float(np.median(ms)), p99=float(np.percentile(ms, 99)), max=float(ms.max()),
                      cpu=float(np.median(cpu_seconds)) * 1e3, n=len(ms), extra=extra)


@pytest.mark.parametrize("lm", ["no LM", "10k-word 3-gram"])
def test_hop_latency(benchmark, model, lm, request):
    wd = request.getfixturevalue("word_decoder") if lm != "no LM" else None
    dec = _started(StreamingDecoder(model, beam_width=20, word_decoder=wd), SEED)
    hops = iter(_bins(HOP * (ROUNDS + 10), SEED + 1).reshape(-1, HOP, 512))
    frames0 = dec.beam.frames
    cpu = []
    benchmark.pedantic(_cpu_timed(lambda: dec.push(next(hops)), cpu), rounds=ROUNDS, iterations=1, warmup_rounds=2)
    assert dec.beam.frames == frames0 + ROUNDS + 2  # one frame per hop
    _row(f"1 stream, {lm}", benchmark.stats.stats.data, cpu[2:])


@pytest.mark.parametrize("part", ["model (smoothing, day layer, GRU step, head)", "beam update",
                                  "word decoder update (model's posteriors)",
                                  "word decoder update (peaky posteriors of bench_words)",
                                  "GRU step alone: native (frontend's per-hop path)",
                                  "GRU step alone: native, AVX-512 path forced", "GRU step alone: nn.GRU",
                                  "floor: read the GRU's weights once (no math)"])
def test_hop_components(benchmark, model, part, request):
    """One hop's pieces on their own, to say where the time goes."""
    dec = _started(StreamingDecoder(model, beam_width=20), SEED)
    hops = iter(_bins(HOP * (ROUNDS + 10), SEED + 1).reshape(-1, HOP, 512))
    if part.startswith("floor"):
        weights = [p.detach() for p in model.rnn.parameters()]
        mb = sum(w.numel() for w in weights) * 4 / 2**20
        cpu = []
        benchmark.pedantic(_cpu_timed(lambda: [w.sum() for w in weights], cpu), rounds=ROUNDS, iterations=1,
                           warmup_rounds=2)
        _row(f"{part}", benchmark.stats.stats.data, cpu[2:], f"{mb:.0f} MiB of fp32 weights per step")
        return
    if part.startswith("GRU step"):
        x = torch.from_numpy(_bins(1, SEED + 2).repeat(14, axis=1))  # (1, 7168): one patch
        h = torch.zeros(model.cfg.num_layers, 1, model.cfg.hidden_size)
        native = dec.frontend.native_gru
        if "AVX-512" in part:
            if "avx512" not in ISAS:
                pytest.skip("this CPU has no AVX-512 path")
            native = NativeGRUStep(model.rnn, "avx512")
        if "native" in part:
            assert native is not None, "the frontend did not pick the native GRU step"
            step = lambda: native.step(x[0], h[:, 0])  # noqa: E731
        else:
            step = lambda: model.rnn(x[None], h)  # noqa: E731
        cpu = []
        with torch.no_grad():
            benchmark.pedantic(_cpu_timed(step, cpu), rounds=ROUNDS, iterations=1, warmup_rounds=2)
        _row(f"part: {part}", benchmark.stats.stats.data, cpu[2:], f"isa {native.isa}" if "native" in part else "")
        return
    if not part.startswith("model") and "peaky" not in part:
        lps = [dec.frontend.push(torch.from_numpy(next(hops))).numpy() for _ in range(ROUNDS + 10)]
    if part.startswith("model"):
        step = lambda: dec.frontend.push(torch.from_numpy(next(hops)))  # noqa: E731
    elif part == "beam update":
        frames = iter(lps)
        step = lambda: dec.beam.advance(next(frames))  # noqa: E731
    else:
        from fastdecoder.stream import WordStream

        ws = WordStream(request.getfixturevalue("word_decoder"))
        if "peaky" in part:
            setup = load_setup()
            x, n = setup["x"], setup["lengths"]
            lps = [x[b, t:t + 1] for b in range(x.shape[0]) for t in range(n[b])][: ROUNDS + 10]
        frames = iter(lps)
        step = lambda: ws.advance(next(frames))  # noqa: E731
    cpu = []
    benchmark.pedantic(_cpu_timed(step, cpu), rounds=ROUNDS, iterations=1, warmup_rounds=2)
    _row(f"part: {part}", benchmark.stats.stats.data, cpu[2:])


@pytest.mark.parametrize("n_streams", [2, 4])
def test_concurrent_streams(model, n_streams):
    """N streams, one thread each, pushing as fast as they can: per-hop latency under contention."""
    decs = [_started(StreamingDecoder(model, beam_width=20), SEED + i) for i in range(n_streams)]
    times, cpu = [[] for _ in decs], [[] for _ in decs]
    rounds = max(ROUNDS // n_streams, 20)

    def run(i):
        hops = _bins(HOP * rounds, SEED + 100 + i).reshape(-1, HOP, 512)
        for h in hops:
            t0 = time.perf_counter()
            _cpu_timed(lambda: decs[i].push(h), cpu[i])()
            times[i].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    hops_per_s = n_streams * rounds / wall
    _row(f"{n_streams} streams (threads), no LM", [x for ts in times for x in ts], [x for c in cpu for x in c],
         f"{hops_per_s:.0f} hops/s in all = {hops_per_s * HOP * 0.02:.1f} streams' worth of real time")


def test_print_table():
    if not ROWS:
        pytest.skip("no timings were taken (run the whole file)")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else "?"
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {cpu} ({os.cpu_count()} cores), torch {torch.__version__}, "
             f"torch.set_num_threads(1), load average {os.getloadavg()[0]:.1f} at the end; b2t25 size (512 features, "
             f"5 x 768 GRU, random weights), one 80 ms hop = {HOP} bins per push, beam 20.",
             "", "| row | pushes | median ms | p99 ms | max ms | CPU ms (median) | target | note |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for name, r in ROWS.items():
        tgt = next((t for k, t in TARGETS.items() if name == f"1 stream, {k}"), None)
        target = "" if tgt is None else f"median < {tgt[0]:g}" + (f", p99 < {tgt[1]:g}" if tgt[1] else "")
        lines.append(f"| {name} | {r['n']} | {r['median']:.3f} | {r['p99']:.3f} | {r['max']:.3f} | {r['cpu']:.3f} | "
                     f"{target} | "
                     f"{r['extra']} |")
    table = "\n".join(lines)
    print("\n" + table)
    if os.environ.get("FASTDECODER_BENCH_TABLE"):
        with open(os.environ["FASTDECODER_BENCH_TABLE"], "a") as f:
            f.write(table + "\n\n")
