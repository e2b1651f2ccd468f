"""Fused augmentation (noise + offset + smoothing [+ masks]) at the presets' batch sizes: Triton vs the reference.

Sizes (fp32 in, bf16 out, every trial full length):

- b2t25: B=64, T=600, C=512, white noise 1.0, offset 0.2, the 9 b2t25 taps
- b2t24: B=64, T=500, C=256, white noise 0.8, offset 0.2, the 20 b2t24 taps

Cases: ``copy`` (``out.copy_(x)``, fp32 -> bf16: the same bytes as the op, the device's copy bandwidth for this
traffic), ``reference`` (``augment(backend="reference")``, the definition: Philox noise in PyTorch, conv1d),
``torch_recipe`` (``augment(backend="reference", noise="torch")``: what the published code does, ``torch.randn``
noise and offsets, depthwise conv1d; the trainer's reference path; not bit-compatible), ``triton`` (``augment(backend="triton")``, the whole op with its Python-side checks) and
``kernel`` (the launch helper with prepared arguments: the kernel alone). Achieved bandwidth = (bytes of x read
once + bytes of the output written once) / time. Targets on a CUDA GPU: triton >= 80 % of the copy bandwidth and
>= 5x the reference. ``test_zz_augment_table`` prints the table with the device's name (and appends it as markdown
to ``$FASTDECODER_BENCH_TABLE`` when set), for bench/RESULTS.md.

Without CUDA the Triton cases skip (the interpreter is no benchmark); copy, reference and torch_recipe run on the
CPU at the same sizes, so the suite stays runnable.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastdecoder.ops import augment, gaussian_taps

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
SIZES = {
    "b2t25": dict(B=64, T=600, C=512, taps="b2t25", ws=1.0, os=0.2),
    "b2t24": dict(B=64, T=500, C=256, taps="b2t24", ws=0.8, os=0.2),
}
CASES = ("copy", "reference", "torch_recipe", "triton", "kernel")
_RESULTS: dict[tuple[str, str], float] = {}  # (size, case) -> seconds per op (median round)
_INNER = 20 if HAS_CUDA else 1  # ops per timed round (amortises the synchronize on CUDA)


def _device_name() -> str:
    if HAS_CUDA:
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def _make_case(case, s):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["B"], s["T"], s["C"], generator=g).to(DEV)
    taps = gaussian_taps(s["taps"]).to(DEV)
    kw = dict(white_noise_std=s["ws"], constant_offset_std=s["os"], smooth_taps=taps, seed=1,
              out_dtype=torch.bfloat16)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=DEV)
    if case == "copy":
        return x, lambda: out.copy_(x)
    if case == "reference":
        return x, lambda: augment(x, backend="reference", **kw)
    if case == "torch_recipe":
        return x, lambda: augment(x, backend="reference", noise="torch", **kw)
    if case == "triton":
        return x, lambda: augment(x, backend="triton", **kw)
    from fastdecoder.ops.augment.launcher import augment_triton

    B = x.shape[0]
    lens = torch.full((B,), x.shape[1], dtype=torch.int32, device=DEV)
    empty = torch.zeros((B, 0, 2), dtype=torch.int32, device=DEV)
    return x, lambda: augment_triton(x, lens, taps, empty, empty, white_noise_std=s["ws"],
                                     constant_offset_std=s["os"], seed=1, out_dtype=torch.bfloat16)


def _bench(benchmark, size, case):
    s = SIZES[size]
    x, op = _make_case(case, s)

    def run():
        for _ in range(_INNER):
            op()
        if HAS_CUDA:
            torch.cuda.synchronize()

    nbytes = x.numel() * (4 + 2)
    benchmark.group = f"augment {size}"
    benchmark.extra_info.update(case=case, device=_device_name(), bytes_per_op=nbytes, ops_per_round=_INNER,
                                **{k: v for k, v in s.items()})
    slow = case in ("reference", "torch_recipe") and not HAS_CUDA
    benchmark.pedantic(run, rounds=3 if slow else 10, warmup_rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        per_op = benchmark.stats.stats.median / _INNER
        benchmark.extra_info["GB_per_s"] = nbytes / per_op / 1e9
        _RESULTS[(size, case)] = per_op
    del x, op
    if HAS_CUDA:
        torch.cuda.empty_cache()


@pytest.mark.parametrize("case", ["copy", "reference", "torch_recipe"])
@pytest.mark.parametrize("size", list(SIZES))
def test_bench_augment(benchmark, size, case):
    _bench(benchmark, size, case)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the Triton interpreter on CPU is no benchmark)")
@pytest.mark.parametrize("case", ["triton", "kernel"])
@pytest.mark.parametrize("size", list(SIZES))
def test_bench_augment_triton(benchmark, size, case):
    _bench(benchmark, size, case)


def test_zz_augment_table(capsys):
    """Summary of the cases above (same session): time per op, achieved GB/s, % of copy bandwidth, speed-up."""
    if not _RESULTS:
        pytest.skip("no augment benchmark ran in this session")
    lines = [f"Fused augmentation (fp32 in, bf16 out), median per op, on {_device_name()} "
             f"(torch {torch.__version__}, triton {_triton_version()})", "",
             "| size | case | time per op | achieved GB/s | % of copy bandwidth (target >= 80 %) | "
             "speed-up vs reference (target >= 5x) |",
             "|---|---|---|---|---|---|"]
    for size, s in SIZES.items():
        nbytes = s["B"] * s["T"] * s["C"] * 6
        copy = _RESULTS.get((size, "copy"))
        ref = _RESULTS.get((size, "reference"))
        for case in CASES:
            t = _RESULTS.get((size, case))
            if t is None:
                lines.append(f"| {size} | {case} | skipped (no CUDA) | | | |" if case in ("triton", "kernel")
                             else f"| {size} | {case} | not run | | | |")
                continue
            pct = f"{100 * copy / t:.0f} %" if copy else ""
            speed = f"{ref / t:.1f}x" if ref else ""
            lines.append(f"| {size} | {case} | {_fmt_time(t)} | {nbytes / t / 1e9:.1f} | {pct} | {speed} |")
    table = "\n".join(lines)
    with capsys.disabled():
        print("\n" + table)
    path = os.environ.get("FASTDECODER_BENCH_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(table + "\n\n")


def _fmt_time(t: float) -> str:
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "n/a"
