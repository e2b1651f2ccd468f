"""The fused Triton kernel of fastdecoder.ops.augment against the reference backend.

On the CPU the kernel runs through Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py before triton is
imported), in float32, on small shapes; small tile sizes force several time and channel tiles so the halos are
exercised. bfloat16 output and large shapes are checked under the ``gpu`` marker.
"""
import pytest
import torch

from fastdecoder.ops import FastPathUnavailable, augment, gaussian_taps, sample_masks, triton_usable
from fastdecoder.ops.augment import normals

DEV = "cuda" if torch.cuda.is_available() else "cpu"
if not triton_usable(DEV):
    pytest.skip("needs CUDA or TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from fastdecoder.ops.augment import launcher as K  # noqa: E402  (imports triton)

@pytest.fixture
def small_blocks(monkeypatch):
    """Tiles of 16 (32 for > 17 taps) rows x 16 channels, 2 time tiles per program: several tiles in both
    directions and several chunks along time (each later chunk regenerates its previous tile) on small shapes."""
    monkeypatch.setattr(K, "pick_blocks", lambda n: (16 if n <= 17 else 32, 16, 4))
    monkeypatch.setattr(K, "pick_chunks", lambda programs, n_iters, device: 2)


def _batch(B=3, T=40, C=22, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g)
    lengths = torch.tensor([T, T - 9, 6][:B])
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.8, time_max_width=6, time_max_count=2,
                          freq_prob=0.8, freq_max_width=4, freq_max_count=2, generator=g)
    return x, lengths, tm, fm


TAPS = {
    "none": None,
    "b2t25": "b2t25",
    "b2t24": "b2t24",
    "odd3": [0.25, 0.5, 0.25],
    "even2": [0.3, 0.7],
    "even4": [0.1, -0.2, 0.6, 0.5],
    "odd7": [0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05],
    "one": [2.0],
}


@pytest.mark.parametrize("taps", list(TAPS))
def test_parity_noise_off(small_blocks, taps):
    x, lengths, tm, fm = _batch()
    kw = dict(smooth_taps=TAPS[taps], time_masks=tm, freq_masks=fm)
    ref = augment(x, lengths, backend="reference", **kw)
    out = augment(x, lengths, backend="triton", **kw)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, equal_nan=False)


@pytest.mark.parametrize("taps", ["none", "b2t25", "b2t24", "even2", "odd7"])
def test_parity_noise_on(small_blocks, taps):
    x, lengths, tm, fm = _batch(seed=1)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps=TAPS[taps], time_masks=tm, freq_masks=fm,
              seed=99)
    ref = augment(x, lengths, backend="reference", **kw)
    out = augment(x, lengths, backend="triton", **kw)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=False)
    assert (out - augment(x, lengths, backend="triton", smooth_taps=TAPS[taps], time_masks=tm,
                          freq_masks=fm)).abs().max() > 0.1  # the noise is there


@pytest.mark.parametrize("noise", [False, True])
def test_parity_default_blocks(noise):
    # the GPU tile sizes (64 x 32, one chunk of two time tiles here) through the interpreter
    x, lengths, tm, fm = _batch(B=2, T=70, C=36, seed=2)
    kw = dict(white_noise_std=0.8 * noise, constant_offset_std=0.2 * noise, smooth_taps="b2t24", time_masks=tm,
              freq_masks=fm, seed=5)
    ref = augment(x, lengths, backend="reference", **kw)
    out = augment(x, lengths, backend="triton", **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_parity_each_noise_alone_and_no_lengths(small_blocks):
    x = torch.randn(2, 24, 12)
    for kw in (dict(white_noise_std=0.5), dict(constant_offset_std=0.7)):
        ref = augment(x, smooth_taps="b2t25", seed=3, backend="reference", **kw)
        out = augment(x, smooth_taps="b2t25", seed=3, backend="triton", **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_noncontiguous_and_low_precision_inputs(small_blocks):
    base = torch.randn(2, 12, 30)
    x = base.transpose(1, 2)  # (2, 30, 12), strides (360, 1, 30)
    lengths = torch.tensor([30, 17])
    for inp in (x, x.bfloat16(), x.half()):  # read as float32 in the kernel (output float32: see the gpu tests)
        kw = dict(smooth_taps="b2t25", white_noise_std=1.0, seed=4, out_dtype=torch.float32)
        ref = augment(inp, lengths, backend="reference", **kw)
        out = augment(inp, lengths, backend="triton", **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_ragged_edges_and_padding(small_blocks):
    x = torch.randn(3, 33, 9)
    x[1, 20:] = float("nan")  # padding is never read
    lengths = torch.tensor([33, 20, 0])
    out = augment(x, lengths, smooth_taps="b2t24", white_noise_std=1.0, constant_offset_std=0.3, seed=8,
                  backend="triton")
    ref = augment(x, lengths, smooth_taps="b2t24", white_noise_std=1.0, constant_offset_std=0.3, seed=8,
                  backend="reference")
    assert torch.isfinite(out).all()
    assert (out[1, 20:] == 0).all() and (out[2] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_same_seed_same_output_different_seed_different(small_blocks):
    x, lengths, tm, fm = _batch(B=2, T=20, C=8)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25", backend="triton")
    a = augment(x, lengths, seed=10, **kw)
    assert torch.equal(a, augment(x, lengths, seed=10, **kw))
    b = augment(x, lengths, seed=11, **kw)
    assert (a - b).abs().mean() > 0.1
    big = augment(x, lengths, seed=2 ** 64 - 1, **kw)
    torch.testing.assert_close(big, augment(x, lengths, seed=2 ** 64 - 1, **{**kw, "backend": "reference"}),
                               rtol=1e-5, atol=1e-5)


def test_generator_is_tl_randint4x_philox_and_matches_pytorch():
    ctr = torch.cat([torch.arange(257), torch.tensor([2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5])])
    for seed in (0, 1, 2 ** 31 + 7, 2 ** 40 + 3, 2 ** 64 - 1):
        ours, ref = K.philox_words_triton(ctr.to(DEV), seed)
        assert torch.equal(ours, ref), "the kernel's Philox differs from tl.randint4x"
        from fastdecoder.ops.augment import philox4x32_10

        c0, c1 = ctr & 0xFFFFFFFF, ctr >> 32
        zero = torch.zeros_like(c0)
        words = torch.stack(philox4x32_10(c0, c1, zero, zero, seed & 0xFFFFFFFF, seed >> 32), dim=-1)
        assert torch.equal(ours.cpu(), words), "the PyTorch port of Philox differs from the kernel's"
        for stream in (0, 1):
            torch.testing.assert_close(K.normals_triton(ctr.to(DEV), seed, stream).cpu(), normals(ctr, seed, stream),
                                       rtol=1e-6, atol=2e-6)


def test_triton_noise_statistics():
    # the kernel's own noise (x = 0, no smoothing): the numbers the reference's statistics tests check
    z = augment(torch.zeros(2, 64, 64, device=DEV), white_noise_std=1.0, seed=1, backend="triton").double()
    assert abs(float(z.mean())) < 0.03 and abs(float(z.var()) - 1.0) < 0.04
    o = augment(torch.zeros(2, 16, 64, device=DEV), constant_offset_std=1.0, seed=1, backend="triton")
    assert torch.equal(o, o[:, :1].expand_as(o))


def test_triton_refuses_grad_and_missing_interpreter(monkeypatch):
    x = torch.randn(1, 8, 4, device=DEV, requires_grad=True)
    with pytest.raises(ValueError, match="x requires grad"):
        augment(x, backend="triton")
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # the rule reads the variable at call time
        with pytest.raises(FastPathUnavailable, match=r"augment\(backend='triton'\).*TRITON_INTERPRET"):
            augment(torch.randn(1, 8, 4), backend="triton")
    with pytest.raises(ValueError, match="noise='torch'"):
        augment(torch.randn(1, 8, 4, device=DEV), white_noise_std=1.0, noise="torch", backend="triton")


def test_auto_backend_on_cpu_is_reference():
    x = torch.randn(2, 10, 8)
    a = augment(x, smooth_taps="b2t25", white_noise_std=1.0, seed=1)
    assert torch.equal(a, augment(x, smooth_taps="b2t25", white_noise_std=1.0, seed=1, backend="reference"))


# ------------------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("preset,shape,ws,os_", [("b2t25", (64, 600, 512), 1.0, 0.2),
                                                 ("b2t24", (64, 500, 256), 0.8, 0.2)])
def test_gpu_parity_large_bf16(preset, shape, ws, os_):
    B, T, C = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).cuda()
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.5, time_max_width=20, time_max_count=2,
                          freq_prob=0.5, freq_max_width=16, freq_max_count=2, generator=g, device="cuda")
    kw = dict(white_noise_std=ws, constant_offset_std=os_, smooth_taps=preset, time_masks=tm, freq_masks=fm, seed=3)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # an fp32 reference
    try:
        ref = augment(x, lengths, backend="reference", **kw)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    out32 = augment(x, lengths, backend="triton", **kw)
    torch.testing.assert_close(out32, ref, rtol=1e-5, atol=2e-5, equal_nan=False)
    out16 = augment(x, lengths, backend="triton", out_dtype=torch.bfloat16, **kw)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref, rtol=8e-3, atol=8e-3, equal_nan=False)
    assert torch.equal(augment(x, lengths, **kw), out32)  # auto = triton on CUDA
    assert torch.equal(augment(x, lengths, backend="triton", **kw), out32)  # deterministic


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_gpu_fast_paths_match_exact_settings(out_dtype):
    # the defaults (tf32x3/tf32 products, MUFU sin/cos/log2) against exact fp32 products and libdevice math
    B, T, C = 4, 300, 128
    x = torch.randn(B, T, C, device="cuda")
    lens = torch.tensor([300, 250, 99, 1], device="cuda", dtype=torch.int32)
    taps = gaussian_taps("b2t25").cuda()
    empty = torch.zeros((B, 0, 2), dtype=torch.int32, device="cuda")
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, seed=1)
    exact = K.augment_triton(x, lens, taps, empty, empty, out_dtype=torch.float32, dot_precision="ieee",
                             fast_math=0, **kw)
    fast = K.augment_triton(x, lens, taps, empty, empty, out_dtype=out_dtype, **kw)
    tol = 2e-5 if out_dtype == torch.float32 else 8e-3
    torch.testing.assert_close(fast.float(), exact, rtol=tol, atol=tol)
    ctr = torch.arange(1 << 16, device="cuda")
    torch.testing.assert_close(K.normals_triton(ctr, 3, 0, fast_math=1), K.normals_triton(ctr, 3, 0, fast_math=0),
                               rtol=0, atol=3e-5)
    torch.testing.assert_close(K.normals_triton(ctr, 3, 0, fast_math=2), normals(ctr, 3, 0), rtol=0, atol=1e-3)
