"""fastdecoder.ops.augment, reference backend: exact taps, semantics against a naive loop, the noise generator's
statistics, the mask sampler, and input validation. The Triton kernel's parity is in test_augment_triton.py."""
import math

import numpy as np
import pytest
import torch

from fastdecoder.ops import FastPathUnavailable, augment, gaussian_taps, sample_masks
from fastdecoder.ops.augment import normals, offset_noise, white_noise

# ------------------------------------------------------------------------------------------------ taps


def test_b2t25_taps_exact():
    taps = gaussian_taps("b2t25")
    # Independently: scipy's gaussian_filter1d weights for sd 2 (radius int(4 * 2 + 0.5) = 8) applied to a unit
    # impulse far from the edges of the 100-point array are the weights themselves; keep > 0.01, renormalise.
    x = np.arange(-8, 9, dtype=np.float64)
    w = np.exp(-(x ** 2) / (2 * 2.0 ** 2))
    w /= w.sum()
    kept = w[w > 0.01]
    expected = kept / kept.sum()
    assert taps.dtype == torch.float32 and taps.shape == (9,)
    assert np.array_equal(x[w > 0.01], np.arange(-4, 5))  # taps -4..+4
    torch.testing.assert_close(taps, torch.from_numpy(expected).float(), rtol=0, atol=1e-8)
    assert torch.equal(taps, taps.flip(0))
    assert abs(float(taps.double().sum()) - 1.0) < 1e-6
    # a few values by hand: the centre tap is 1 / sum_{|k|<=4} exp(-k^2 / 8)
    centre = 1.0 / sum(math.exp(-k * k / 8.0) for k in range(-4, 5))
    assert abs(float(taps[4]) - centre) < 1e-7
    assert abs(float(taps[0]) - math.exp(-2.0) * centre) < 1e-7


def test_b2t24_taps_exact():
    taps = gaussian_taps("b2t24")
    k = np.arange(20, dtype=np.float64)
    w = 1.0 / (2.0 * math.sqrt(2 * math.pi)) * np.exp(-(((k - 9.5) / 2.0) ** 2) / 2)
    w /= w.sum()
    assert taps.dtype == torch.float32 and taps.shape == (20,)
    torch.testing.assert_close(taps, torch.from_numpy(w).float(), rtol=1e-6, atol=1e-9)
    assert torch.equal(taps, taps.flip(0))  # symmetric about 9.5
    assert abs(float(taps.double().sum()) - 1.0) < 1e-6
    assert int(taps.argmax()) in (9, 10)
    # the float32 torch ops of cffan's GaussianSmoothing, bit for bit
    mgrid = torch.arange(20, dtype=torch.float32)
    ref = 1 * (1 / (2.0 * math.sqrt(2 * math.pi)) * torch.exp(-(((mgrid - 9.5) / 2.0) ** 2) / 2))
    assert torch.equal(taps, ref / torch.sum(ref))


def test_generic_taps_are_the_b2t24_formula():
    assert torch.equal(gaussian_taps(std=2.0, size=20), gaussian_taps("b2t24"))
    t = gaussian_taps(std=1.5, size=7)
    k = np.arange(7.0)
    w = np.exp(-(((k - 3.0) / 1.5) ** 2) / 2)
    torch.testing.assert_close(t, torch.from_numpy(w / w.sum()).float(), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="std"):
        gaussian_taps()
    with pytest.raises(ValueError, match="preset"):
        gaussian_taps("nope")
    with pytest.raises(ValueError, match="std"):
        gaussian_taps(std=-1.0, size=5)


def test_b2t25_small_array_reflects_like_scipy():
    # size 9 < 2 r + 1: scipy's 'reflect' boundary folds the weights back; the kept taps still sum to 1
    t = gaussian_taps("b2t25", size=9)
    assert abs(float(t.double().sum()) - 1.0) < 1e-6 and t.numel() == 9


# ------------------------------------------------------------------------------------------------ semantics


def _naive(x, lengths, taps, tm, fm, ws, os_, seed):
    """Loops over (b, t, c) in float64, written from the docstring, independent of the reference code."""
    x = x.double().numpy()
    B, T, C = x.shape
    n1 = white_noise(seed, B, T, C).double().numpy()
    n2 = offset_noise(seed, B, C).double().numpy()
    w = np.ones(1) if taps is None else np.asarray(taps, dtype=np.float64)
    n = len(w)
    left = (n - 1) // 2
    out = np.zeros_like(x)
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        v = x[b] + ws * n1[b] + os_ * n2[b][None, :]
        for t in range(L):
            acc = np.zeros(C)
            for k in range(n):
                s = t + k - left
                if 0 <= s < L:
                    acc += w[k] * v[s]
            out[b, t] = acc
        if tm is not None:
            for start, width in tm[b].tolist():
                out[b, start:start + width] = 0
        if fm is not None:
            for start, width in fm[b].tolist():
                out[b, :, start:start + width] = 0
    return torch.from_numpy(out)


@pytest.mark.parametrize("taps", [None, "b2t25", "b2t24", [0.2, 0.8], [0.1, 0.2, 0.3, 0.4, 0.5], [2.0]])
@pytest.mark.parametrize("noise", [False, True])
def test_reference_matches_naive_definition(taps, noise):
    g = torch.Generator().manual_seed(3)
    B, T, C = 3, 30, 10
    x = torch.randn(B, T, C, generator=g)
    lengths = torch.tensor([30, 17, 4])
    tm = torch.tensor([[[3, 4], [0, 0]], [[15, 2], [16, 1]], [[0, 1], [4, 0]]])
    fm = torch.tensor([[[2, 3]], [[0, 0]], [[9, 1]]])
    ws, os_ = (0.7, 0.3) if noise else (0.0, 0.0)
    out = augment(x, lengths, white_noise_std=ws, constant_offset_std=os_, smooth_taps=taps, time_masks=tm,
                  freq_masks=fm, seed=11, backend="reference")
    t = gaussian_taps(taps).tolist() if isinstance(taps, str) else taps
    exp = _naive(x, lengths, t, tm, fm, ws, os_, 11)
    assert out.dtype == torch.float32 and out.shape == (B, T, C)
    torch.testing.assert_close(out.double(), exp, rtol=1e-5, atol=1e-5, equal_nan=False)


def test_reference_defaults_and_dtypes():
    x = torch.randn(2, 12, 8)
    assert torch.equal(augment(x), x)  # nothing to do: a float32 copy
    assert augment(x, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert augment(x.bfloat16()).dtype == torch.bfloat16
    assert augment(x.half()).dtype == torch.float32
    out = augment(x, smooth_taps="b2t25", out_dtype=torch.bfloat16)
    torch.testing.assert_close(out.float(), augment(x, smooth_taps="b2t25"), rtol=1e-2, atol=1e-2)


def test_padding_never_leaks():
    x = torch.randn(2, 20, 6)
    x[0, 12:] = float("nan")
    x[1, 5:] = float("inf")
    lengths = torch.tensor([12, 5])
    out = augment(x, lengths, white_noise_std=1.0, constant_offset_std=0.5, smooth_taps="b2t24", seed=1,
                  backend="reference")
    assert torch.isfinite(out).all()
    assert (out[0, 12:] == 0).all() and (out[1, 5:] == 0).all()


def test_lengths_none_is_full_length():
    x = torch.randn(2, 15, 5)
    a = augment(x, None, white_noise_std=1.0, smooth_taps="b2t25", seed=4)
    b = augment(x, torch.tensor([15, 15]), white_noise_std=1.0, smooth_taps="b2t25", seed=4)
    assert torch.equal(a, b)


def test_reference_is_differentiable():
    x = torch.randn(1, 10, 4, requires_grad=True)
    augment(x, smooth_taps="b2t25", backend="reference").sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------------ the generator


def test_noise_layout_and_streams():
    B, T, C = 2, 3, 10
    n1 = white_noise(5, B, T, C)
    n2 = offset_noise(5, B, C)
    c4 = 3
    for b, t, c in [(0, 0, 0), (1, 2, 9), (1, 0, 5), (0, 2, 3)]:
        z = normals(torch.tensor([(b * T + t) * c4 + c // 4]), 5, stream=0)[0, c % 4]
        assert n1[b, t, c] == z
    for b, c in [(0, 0), (1, 7)]:
        assert n2[b, c] == normals(torch.tensor([b * c4 + c // 4]), 5, stream=1)[0, c % 4]
    assert torch.equal(offset_noise(5, B, C), offset_noise(5, B, C))  # independent of T
    assert not torch.equal(white_noise(5, B, T, C), white_noise(6, B, T, C))


def test_seed_reproduces_and_differs():
    x = torch.zeros(2, 16, 8)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25", backend="reference")
    a = augment(x, seed=123, **kw)
    assert torch.equal(a, augment(x, seed=123, **kw))
    b = augment(x, seed=124, **kw)
    assert not torch.allclose(a, b)
    assert (a - b).abs().mean() > 0.1
    big = augment(x, seed=2 ** 63 + 5, **kw)
    assert torch.isfinite(big).all() and not torch.allclose(big, a)


def _corr(a, b):
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_white_noise_is_standard_normal_and_independent():
    B, T, C = 32, 128, 64  # 262k values
    z = augment(torch.zeros(B, T, C), white_noise_std=1.0, seed=7)
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
    a = z.abs()
    assert abs(float((a < 1).double().mean()) - 0.682689) < 0.005
    assert abs(float((a < 2).double().mean()) - 0.954500) < 0.003
    assert abs(float((a < 3).double().mean()) - 0.997300) < 0.001
    kurt = float((z.double() ** 4).mean() / z.double().var() ** 2)
    assert abs(kurt - 3.0) < 0.05
    tol = 5 / math.sqrt(n)
    assert abs(_corr(z[:, 1:], z[:, :-1])) < tol  # over time
    for d in (1, 2, 3, 4):  # neighbouring channels, within and across Philox groups
        assert abs(_corr(z[..., d:], z[..., :-d])) < tol
    assert abs(_corr(z[1:], z[:-1])) < tol  # across samples
    z2 = augment(torch.zeros(B, T, C), white_noise_std=1.0, seed=8)
    assert abs(_corr(z, z2)) < tol  # across seeds
    z3 = augment(torch.zeros(B, T, C), white_noise_std=1.0, seed=7 + 2 ** 32)  # high seed word matters
    assert abs(_corr(z, z3)) < tol
    # the offset stream is independent of the white stream
    o = offset_noise(7, B, C)
    assert abs(_corr(o, z[:, 0, :])) < 5 / math.sqrt(o.numel())


def test_offset_is_constant_over_time_per_trial_and_channel():
    B, T, C = 64, 20, 64
    lengths = torch.randint(5, T + 1, (B,), generator=torch.Generator().manual_seed(0))
    out = augment(torch.zeros(B, T, C), lengths, constant_offset_std=0.5, seed=3)
    for b in range(B):
        L = int(lengths[b])
        assert torch.equal(out[b, :L], out[b, :1].expand(L, C))
        assert (out[b, L:] == 0).all()
    off = out[:, 0, :]
    assert abs(float(off.std()) - 0.5) < 0.5 * 5 * math.sqrt(1 / (2 * off.numel()))
    assert abs(float(off.mean())) < 5 * 0.5 / math.sqrt(off.numel())
    assert abs(_corr(off[1:], off[:-1])) < 5 / math.sqrt(off.numel())


@pytest.mark.parametrize("preset,ws,os_", [("b2t25", 1.0, 0.2), ("b2t24", 0.8, 0.2)])
def test_variance_after_smoothing(preset, ws, os_):
    taps = gaussian_taps(preset).double()
    n = taps.numel()
    B, T, C = 64, 160, 64
    out = augment(torch.zeros(B, T, C), white_noise_std=ws, constant_offset_std=os_, smooth_taps=preset, seed=21)
    inner = out[:, (n - 1) // 2: T - n // 2].double()  # every tap inside [0, T)
    expected = ws ** 2 * float((taps ** 2).sum()) + os_ ** 2 * float(taps.sum()) ** 2
    assert abs(float(inner.mean())) < 0.02
    assert abs(float(inner.var()) / expected - 1.0) < 0.03
    # lag-k autocovariance of the smoothed white part: ws^2 sum_i w_i w_{i+k} (+ the offset's os^2)
    for lag in (1, 3):
        cov = float((inner[:, lag:] * inner[:, :-lag]).mean())
        exp_cov = ws ** 2 * float((taps[lag:] * taps[:-lag]).sum()) + os_ ** 2
        assert abs(cov - exp_cov) < 0.03 * expected


def test_edge_rows_use_only_valid_taps():
    # with zeros outside [0, length) the offset's contribution at the edges is offset * (sum of valid taps)
    B, T, C = 1, 12, 4
    out = augment(torch.zeros(B, T, C), torch.tensor([10]), constant_offset_std=1.0, smooth_taps="b2t25", seed=2)
    off = offset_noise(2, B, C)[0]
    taps = gaussian_taps("b2t25")
    for t in range(10):
        valid = sum(float(taps[k]) for k in range(9) if 0 <= t + k - 4 < 10)
        torch.testing.assert_close(out[0, t], off * valid, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ masks sampler


def test_sample_masks_shapes_ranges_and_probabilities():
    g = torch.Generator().manual_seed(0)
    B, T, C = 400, 50, 32
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.5, time_max_width=8, time_max_count=3,
                          freq_prob=1.0, freq_max_width=40, freq_max_count=2, generator=g)
    assert tm.shape == (B, 3, 2) and fm.shape == (B, 2, 2) and tm.dtype == torch.int64
    s, w = tm[..., 0], tm[..., 1]
    assert (s >= 0).all() and (w >= 0).all() and (w <= 8).all() and (s + w <= lengths[:, None]).all()
    assert (fm[..., 0] + fm[..., 1] <= C).all() and (fm[..., 1] <= C).all()
    active = w > 0
    assert 0.35 < float(active.double().mean()) < 0.5  # p = 0.5 times P(width > 0 | active) ~ 8 / 9
    # widths are uniform on 0..max_width, clipped to the span: E = (sum_{w<=32} w + 8 * 32) / 41
    expected = (sum(range(33)) + 8 * 32) / 41
    assert abs(float(fm[..., 1].double().mean()) - expected) < 1.5
    x = torch.randn(B, T, C)
    out = augment(x, lengths, time_masks=tm, freq_masks=fm)  # accepted by the op
    assert out.shape == x.shape
    none_t, none_f = sample_masks(2, 5, 3)
    assert none_t.shape == (2, 0, 2) and none_f.shape == (2, 0, 2)
    assert torch.equal(augment(x[:2, :5, :3], time_masks=none_t, freq_masks=none_f), x[:2, :5, :3])


def test_sample_masks_reproducible_and_validated():
    a = sample_masks(4, 20, 8, time_prob=1.0, time_max_width=5, time_max_count=2,
                     generator=torch.Generator().manual_seed(5))
    b = sample_masks(4, 20, 8, time_prob=1.0, time_max_width=5, time_max_count=2,
                     generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="time_prob"):
        sample_masks(2, 5, 3, time_prob=1.5)
    with pytest.raises(ValueError, match="freq_max_width"):
        sample_masks(2, 5, 3, freq_max_width=-1)
    with pytest.raises(ValueError, match="lengths"):
        sample_masks(2, 5, 3, lengths=torch.tensor([6, 1]))


def test_masks_zero_exactly_their_span():
    x = torch.randn(1, 10, 6) + 5.0
    out = augment(x, time_masks=torch.tensor([[[2, 3], [9, 1]]]), freq_masks=torch.tensor([[[0, 1], [4, 0]]]))
    dropped_t = {2, 3, 4, 9}
    for t in range(10):
        for c in range(6):
            assert (out[0, t, c] == 0) == (t in dropped_t or c == 0)


# ------------------------------------------------------------------------------------------------ validation


def _x():
    return torch.randn(2, 10, 4)


@pytest.mark.parametrize("kwargs,name", [
    (dict(x=torch.randn(10, 4)), "x"),
    (dict(x=torch.randn(2, 10, 4).double()), "x"),
    (dict(x=torch.ones(2, 10, 4, dtype=torch.int32)), "x"),
    (dict(x=[[[1.0]]]), "x"),
    (dict(lengths=torch.tensor([10])), "lengths"),
    (dict(lengths=torch.tensor([10, 11])), "lengths"),
    (dict(lengths=torch.tensor([10, -1])), "lengths"),
    (dict(lengths=torch.tensor([10.0, 3.0])), "lengths"),
    (dict(lengths=torch.tensor([10, 3], device="meta")), "lengths"),
    (dict(white_noise_std=-0.1), "white_noise_std"),
    (dict(white_noise_std=float("nan")), "white_noise_std"),
    (dict(constant_offset_std=-1.0), "constant_offset_std"),
    (dict(constant_offset_std="0.2"), "constant_offset_std"),
    (dict(smooth_taps="b2t26"), "smooth_taps"),
    (dict(smooth_taps=torch.ones(2, 3)), "smooth_taps"),
    (dict(smooth_taps=[]), "smooth_taps"),
    (dict(smooth_taps=[1.0, float("inf")]), "smooth_taps"),
    (dict(smooth_taps=torch.ones(200)), "smooth_taps"),
    (dict(time_masks=torch.tensor([[[8, 3]], [[0, 1]]])), "time_masks"),
    (dict(time_masks=torch.tensor([[[-1, 1]], [[0, 1]]])), "time_masks"),
    (dict(time_masks=torch.tensor([[[1, -1]], [[0, 1]]])), "time_masks"),
    (dict(time_masks=torch.tensor([[[1, 1]]])), "time_masks"),
    (dict(time_masks=torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])), "time_masks"),
    (dict(time_masks=torch.tensor([[1, 1], [0, 1]])), "time_masks"),
    (dict(freq_masks=torch.tensor([[[3, 2]], [[0, 1]]])), "freq_masks"),
    (dict(freq_masks=torch.tensor([[[0, 5]], [[0, 1]]])), "freq_masks"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(out_dtype=torch.float16), "out_dtype"),
    (dict(backend="cuda"), "backend"),
    (dict(noise="numpy"), "noise"),
])
def test_bad_input_raises_value_error_naming_argument(kwargs, name):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", None)
    x = _x() if x is None else x
    with pytest.raises(ValueError, match=name):
        augment(x, **kwargs)


def test_masks_at_the_edges_are_accepted():
    x = _x()
    out = augment(x, time_masks=torch.tensor([[[7, 3]], [[10, 0]]]), freq_masks=torch.tensor([[[0, 4]], [[4, 0]]]))
    assert (out[0] == 0).all() and torch.equal(out[1], x[1])


def test_triton_where_it_cannot_run_is_fast_path_unavailable():
    with pytest.raises(FastPathUnavailable, match="meta"):
        augment(torch.empty(2, 10, 4, device="meta"), backend="triton")


# ------------------------------------------------------------------------------------------------ no host reads


_HOST_READS = ("__bool__", "item", "tolist", "cpu", "numpy", "__int__", "__float__", "__index__")


@pytest.fixture
def no_device_reads(monkeypatch):
    """Any read of a non-CPU tensor's values on the host raises (meta tensors stand for a device: no values)."""
    for name in _HOST_READS:
        orig = getattr(torch.Tensor, name)

        def guarded(self, *a, _orig=orig, _name=name, **k):
            if self.device.type != "cpu":
                raise AssertionError(f"host read of a {self.device.type} tensor: Tensor.{_name}")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, guarded)


def test_no_host_reads_of_device_tensors_per_call(no_device_reads):
    dev = "meta"
    B, T, C = 3, 40, 16
    x = torch.empty(B, T, C, device=dev)
    lengths = torch.empty(B, dtype=torch.int64, device=dev)
    masks = torch.empty(B, 2, 2, dtype=torch.int64, device=dev)
    for taps in ("b2t25", "b2t24", None):
        out = augment(x, lengths, white_noise_std=1.0, constant_offset_std=0.2, smooth_taps=taps, time_masks=masks,
                      freq_masks=masks, seed=3, out_dtype=torch.bfloat16, backend="reference")
        assert out.shape == (B, T, C) and out.dtype == torch.bfloat16 and out.device.type == dev
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.5, time_max_width=5, time_max_count=2,
                          freq_prob=0.5, freq_max_width=3, freq_max_count=1, device=dev)
    assert tm.shape == (B, 2, 2) and fm.shape == (B, 1, 2) and tm.device.type == dev
    with pytest.raises(AssertionError, match="host read"):  # the guard works
        bool(lengths.any())


def test_cpu_values_are_still_checked_on_the_host(no_device_reads):
    with pytest.raises(ValueError, match="lengths"):
        augment(_x(), torch.tensor([10, 11]))


# ------------------------------------------------------------------------------------------------ published recipe


def test_torch_noise_statistics_and_seeding():
    # noise="torch": the published trainers' torch.randn noise; the same moments as the Philox oracle
    B, T, C, ws, os_ = 16, 200, 64, 0.8, 0.5
    z = augment(torch.zeros(B, T, C), white_noise_std=ws, seed=7, noise="torch").double()
    n = z.numel()
    assert abs(float(z.mean())) < 5 * ws / math.sqrt(n)
    assert abs(float(z.std()) / ws - 1.0) < 5 * math.sqrt(1 / (2 * n))
    assert abs(_corr(z[:, 1:], z[:, :-1])) < 5 / math.sqrt(n)  # white over time
    assert abs(_corr(z[..., 1:], z[..., :-1])) < 5 / math.sqrt(n)  # and over channels
    o = augment(torch.zeros(B, T, C), constant_offset_std=os_, seed=7, noise="torch").double()
    assert torch.equal(o, o[:, :1].expand_as(o))  # constant over time per trial and channel
    off = o[:, 0]
    assert abs(float(off.std()) / os_ - 1.0) < 5 * math.sqrt(1 / (2 * off.numel()))
    both = augment(torch.zeros(B, T, C), white_noise_std=ws, constant_offset_std=os_, seed=7, noise="torch")
    assert abs(float(both.double().var()) / (ws ** 2 + os_ ** 2) - 1.0) < 0.05
    again = augment(torch.zeros(B, T, C), white_noise_std=ws, constant_offset_std=os_, seed=7, noise="torch")
    assert torch.equal(both, again)  # a seed reproduces a batch
    other = augment(torch.zeros(B, T, C), white_noise_std=ws, constant_offset_std=os_, seed=8, noise="torch")
    assert (both - other).abs().mean() > 0.1
    philox = augment(torch.zeros(B, T, C), white_noise_std=ws, constant_offset_std=os_, seed=7, noise="philox")
    assert (both - philox).abs().mean() > 0.1  # another generator


@pytest.mark.parametrize("taps", ["b2t25", "b2t24", [0.2, 0.5, 0.3]])
def test_torch_noise_smooths_and_masks_like_the_oracle(taps):
    g = torch.Generator().manual_seed(5)
    B, T, C = 3, 50, 12
    x = torch.randn(B, T, C, generator=g)
    lengths = torch.tensor([50, 31, 7])
    tm, fm = sample_masks(B, T, C, lengths=lengths, time_prob=0.9, time_max_width=6, time_max_count=2,
                          freq_prob=0.9, freq_max_width=3, freq_max_count=1, generator=g)
    kw = dict(smooth_taps=taps, time_masks=tm, freq_masks=fm, seed=4)
    oracle = augment(x, lengths, noise="philox", **kw)
    assert torch.equal(augment(x, lengths, noise="torch", **kw), oracle)  # noise off: the same op, bit for bit
    # noise on: out - (the noise-free output) is the smoothed noise alone, zero where padded or masked
    noisy = augment(x, lengths, white_noise_std=1.0, constant_offset_std=0.2, noise="torch", **kw)
    assert torch.isfinite(noisy).all()
    assert torch.equal(noisy == 0, (oracle == 0) | (noisy == 0)) and ((noisy - oracle).abs() > 0).any()
    dropped = augment(torch.ones(B, T, C), lengths, noise="torch", **kw) == 0
    assert (noisy[dropped] == 0).all()


@pytest.mark.parametrize("preset,ws,os_", [("b2t25", 1.0, 0.2), ("b2t24", 0.8, 0.2)])
def test_torch_noise_variance_after_smoothing(preset, ws, os_):
    taps = gaussian_taps(preset).double()
    n = taps.numel()
    out = augment(torch.zeros(64, 160, 64), white_noise_std=ws, constant_offset_std=os_, smooth_taps=preset, seed=21,
                  noise="torch")
    inner = out[:, (n - 1) // 2: 160 - n // 2].double()
    expected = ws ** 2 * float((taps ** 2).sum()) + os_ ** 2 * float(taps.sum()) ** 2
    assert abs(float(inner.var()) / expected - 1.0) < 0.03


def test_auto_noise_is_torch_on_the_reference_backend():
    x = torch.randn(2, 20, 8)
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25", seed=3, backend="reference")
    assert torch.equal(augment(x, noise="auto", **kw), augment(x, noise="torch", **kw))


# ------------------------------------------------------------------------------------------------ output dtype


@pytest.mark.parametrize("noise", ["philox", "torch"])
def test_reference_bf16_output_is_the_fp32_result_rounded_once(noise):
    x = torch.randn(3, 40, 16)
    lengths = torch.tensor([40, 33, 9])
    kw = dict(white_noise_std=1.0, constant_offset_std=0.2, smooth_taps="b2t25", seed=9, noise=noise,
              backend="reference")
    out32 = augment(x, lengths, **kw)
    out16 = augment(x, lengths, out_dtype=torch.bfloat16, **kw)
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    assert torch.equal(out16, out32.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast does not reach inside the definition
        assert torch.equal(augment(x, lengths, **kw), out32)
        assert torch.equal(augment(x, lengths, out_dtype=torch.bfloat16, **kw), out16)
    assert torch.equal(augment(x.bfloat16(), lengths, **kw), augment(x.bfloat16().float(), lengths, **kw).bfloat16())
