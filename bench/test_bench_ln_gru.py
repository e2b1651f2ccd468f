"""LayerNorm-GRU forward + backward: Triton vs the reference loop vs torch.nn.GRU (cuDNN, no layer norm).

Shapes of the presets (the GRU part of the model):

- b2t25: B=64, 150 steps, input 14*512 = 7168, H=768, 5 layers, unidirectional
- b2t24: B=64, 150 steps, input 32*256 = 8192, H=1024, 5 layers, bidirectional

Each case times one training step of the layer (forward, ``sum(out).backward()`` including dx, grads reset) in fp32
and under bf16 autocast (the presets train in bf16). Targets on a CUDA GPU: Triton >= 10x faster than the reference
loop and <= 1.5x the time of cuDNN's GRU. ``test_zz_ln_gru_table`` prints the table (and writes it as markdown to
``$FASTDECODER_BENCH_TABLE`` when set) with the device's name, for bench/RESULTS.md.

Without CUDA the GPU cases skip (the Triton interpreter is no benchmark); a tiny CPU case of the reference against
``torch.nn.GRU`` keeps the suite runnable.
"""
from __future__ import annotations

import os

import pytest
import torch

from fastdecoder.nn import LayerNormGRU

HAS_CUDA = torch.cuda.is_available()
SHAPES = {
    "b2t25": dict(B=64, T=150, I=7168, H=768, L=5, bidir=False),
    "b2t24": dict(B=64, T=150, I=8192, H=1024, L=5, bidir=True),
}
IMPLS = ("triton", "reference", "cudnn")
_RESULTS: dict[tuple[str, str, str], float] = {}   # (shape, dtype, impl) -> median seconds


def _make(impl: str, s: dict, device: str):
    if impl == "cudnn":
        m = torch.nn.GRU(s["I"], s["H"], num_layers=s["L"], batch_first=True, bidirectional=s["bidir"])
    else:
        m = LayerNormGRU(s["I"], s["H"], num_layers=s["L"], bidirectional=s["bidir"], backend=impl)
    return m.to(device).train()


def _step_fn(m, x, dtype: str, device: str):
    amp = dtype == "bf16"

    def step():
        m.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out, h_n = m(x)
        out.float().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _bench(benchmark, impl, shape, dtype, device, rounds):
    named = isinstance(shape, str)
    s = SHAPES[shape] if named else shape
    torch.manual_seed(0)
    m = _make(impl, s, device)
    x = torch.randn(s["B"], s["T"], s["I"], device=device, requires_grad=True)
    step = _step_fn(m, x, dtype, device)
    benchmark.group = f"ln_gru {shape if named else 'tiny-cpu'} {dtype}"
    benchmark.extra_info.update(impl=impl, dtype=dtype, device=_device_name(device), **s)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    if named:
        _RESULTS[(shape, dtype, impl)] = benchmark.stats.stats.median
    del m, x
    if device == "cuda":
        torch.cuda.empty_cache()


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the Triton interpreter on CPU is no benchmark)")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_bench_ln_gru_gpu(benchmark, shape, dtype, impl):
    _bench(benchmark, impl, shape, dtype, "cuda", rounds=3 if impl == "reference" else 10)


@pytest.mark.parametrize("impl", ["reference", "cudnn"])
def test_bench_ln_gru_tiny_cpu(benchmark, impl):
    """CPU smoke case: the reference loop against torch.nn.GRU at a tiny shape (keeps the suite runnable)."""
    tiny = dict(B=4, T=20, I=32, H=32, L=2, bidir=True)
    _bench(benchmark, impl, tiny, "fp32", "cpu", rounds=3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_zz_ln_gru_table(capsys):
    """Summary of the GPU cases above (run in the same session): median ms, speed-up, ratio to cuDNN."""
    if not _RESULTS:
        pytest.skip("no GPU benchmark ran in this session")
    lines = [f"LayerNorm-GRU forward+backward, median of the timed rounds, on {_device_name('cuda')} "
             f"(torch {torch.__version__}, triton {_triton_version()})", "",
             "| shapes | dtype | Triton ms | reference loop ms | cuDNN GRU ms | Triton speed-up vs loop "
             "(target >= 10x) | Triton / cuDNN (target <= 1.5x) |",
             "|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        for dtype in ("bf16", "fp32"):
            r = {impl: _RESULTS.get((shape, dtype, impl)) for impl in IMPLS}
            if None in r.values():
                continue
            ms = {k: v * 1e3 for k, v in r.items()}
            lines.append(f"| {shape} | {dtype} | {ms['triton']:.1f} | {ms['reference']:.1f} | {ms['cudnn']:.1f} | "
                         f"{r['reference'] / r['triton']:.1f}x | {r['triton'] / r['cudnn']:.2f}x |")
    table = "\n".join(lines)
    with capsys.disabled():
        print("\n" + table)
    path = os.environ.get("FASTDECODER_BENCH_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(table + "\n\n")


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "n/a"
