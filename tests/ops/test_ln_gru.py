"""LayerNorm-GRU: the reference against the definition, the Triton path against the reference.

On CPU the Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py before triton
is imported) at small shapes in fp32. Inputs and weights are fresh random draws every run; the seed is in every
failure message. The ``gpu``-marked tests repeat the parity at larger shapes on CUDA in fp32 and bf16 (autocast).
"""
from __future__ import annotations

import math

import pytest
import torch

from fastdecoder.nn import LayerNormGRU
from fastdecoder.ops import FastPathUnavailable, triton_usable
from fastdecoder.ops.ln_gru import ln_gru_reference
from fastdecoder.testing import seeding

HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not triton_usable("cuda" if HAS_CUDA else "cpu"),
                                  reason="Triton needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")


def _seed() -> int:
    seed = seeding.fresh_seed()
    torch.manual_seed(seed)
    return seed


def _randomize(m: LayerNormGRU) -> None:
    """Move the LN gains away from 1 (their init) so that the gain paths are exercised."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.uniform_(0.5, 1.5)


def _run(m, x, h0, wo, wh, use_out=True):
    """Forward + backward of ``sum(out * wo) + sum(h_n * wh)``; returns out, h_n and the grads of x, h0, params."""
    x = x.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    out, h_n = m(x, h0)
    loss = (h_n.float() * wh).sum()
    if use_out:
        loss = loss + (out.float() * wo).sum()
    leaves = [x] + ([h0] if h0 is not None else []) + list(m.parameters())
    grads = torch.autograd.grad(loss, leaves)
    names = ["x"] + (["h0"] if h0 is not None else []) + [n for n, _ in m.named_parameters()]
    return out.detach(), h_n.detach(), dict(zip(names, grads))


def _close(actual, expected, what, seed, rtol=1e-4):
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (seed {seed})"
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * 0.1 * max(scale, 1e-12),
                               msg=lambda m: f"{what} (seed {seed}): {m}")


# ----------------------------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------------------------
def _step_by_hand(x_t, h, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, eps=1e-5):
    """One step of the definition, written out (LN = (v - mean) / sqrt(biased var + eps))."""
    def ln(v, g, b):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + eps) * g + b

    H = h.shape[-1]
    a_x = ln(x_t @ w_ih.T, g_ih, b_ih)
    a_h = ln(h @ w_hh.T, g_hh, b_hh)
    r = 1 / (1 + torch.exp(-(a_x[:, :H] + a_h[:, :H])))
    z = 1 / (1 + torch.exp(-(a_x[:, H:2 * H] + a_h[:, H:2 * H])))
    n = torch.tanh(a_x[:, 2 * H:] + r * a_h[:, 2 * H:])
    return (1 - z) * n + z * h


def test_reference_matches_hand_written_definition():
    seed = _seed()
    B, T, I, H = 3, 4, 5, 6
    m = LayerNormGRU(I, H, bidirectional=True, backend="reference").double()
    _randomize(m)
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0 = torch.randn(2, B, H, dtype=torch.float64)
    out, h_n = m(x, h0)
    with torch.no_grad():
        for d, sfx in enumerate(["_l0", "_l0_reverse"]):
            p = [getattr(m, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                "ln_ih_weight", "ln_hh_weight")]
            h = h0[d]
            for t in (range(T) if d == 0 else reversed(range(T))):
                h = _step_by_hand(x[:, t], h, *p)
                _close(out[:, t, d * H:(d + 1) * H], h, f"dir {d} step {t}", seed, rtol=1e-12)
            _close(h_n[d], h, f"h_n dir {d}", seed, rtol=1e-12)


@pytest.mark.parametrize("layers,fast", [(1, False), (2, True)], ids=["l1-bi-full", "l2-bi-fast"])
def test_reference_gradcheck_float64(layers, fast):
    """Full gradcheck of one bidirectional layer; the 2-layer stack in gradcheck's fast mode (random projections)."""
    seed = _seed()
    m = LayerNormGRU(3, 2, num_layers=layers, bidirectional=True, backend="reference").double()
    _randomize(m)
    params = list(m.parameters())
    B = 1 if layers == 1 else 2
    x = torch.randn(B, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * layers, B, 2, dtype=torch.float64, requires_grad=True)

    def f(x, h0, *ps):
        return ln_gru_reference(x, h0, [list(ps[k * 12:(k + 1) * 12]) for k in range(layers)])

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast), \
        f"seed {seed}"


# ----------------------------------------------------------------------------------------------------------------
# Triton path vs reference (CPU: interpreter, fp32)
# ----------------------------------------------------------------------------------------------------------------
PARITY_CASES = [
    # layers, bidirectional, bias, batch_first, h0 given, loss uses out, (B, T, I, H)
    pytest.param(1, False, True, True, True, True, (3, 5, 6, 8), id="l1-uni"),
    pytest.param(1, True, True, True, True, True, (3, 6, 7, 12), id="l1-bi-H12"),
    pytest.param(2, False, True, True, True, True, (3, 7, 10, 16), id="l2-uni"),
    pytest.param(2, True, True, True, True, True, (3, 5, 9, 10), id="l2-bi-H10"),
    pytest.param(2, True, False, False, False, True, (2, 6, 6, 8), id="l2-bi-nobias-timemajor-noh0"),
    pytest.param(1, False, True, True, True, False, (3, 5, 8, 9), id="l1-only-hn"),
]


@needs_triton
@pytest.mark.parametrize("layers,bidir,bias,batch_first,give_h0,use_out,shape", PARITY_CASES)
def test_triton_matches_reference(layers, bidir, bias, batch_first, give_h0, use_out, shape):
    seed = _seed()
    B, T, I, H = shape
    D = 2 if bidir else 1
    m = LayerNormGRU(I, H, num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir,
                     backend="reference")
    _randomize(m)
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    h0 = torch.randn(layers * D, B, H) if give_h0 else None
    wo = torch.randn(*x.shape[:2], D * H)
    wh = torch.randn(layers * D, B, H)

    out_r, hn_r, g_r = _run(m, x, h0, wo, wh, use_out)
    m.backend = "triton"
    out_t, hn_t, g_t = _run(m, x, h0, wo, wh, use_out)

    assert out_t.shape == out_r.shape == (*x.shape[:2], D * H)
    assert hn_t.shape == hn_r.shape == (layers * D, B, H)
    _close(out_t, out_r, "output", seed)
    _close(hn_t, hn_r, "h_n", seed)
    assert g_t.keys() == g_r.keys()
    for name in g_r:
        _close(g_t[name], g_r[name], f"grad of {name}", seed)


@needs_triton
def test_triton_learnable_expanded_h0_and_frozen_parts():
    """As the b2t25 model uses it: a learnable (1, 1, H) h0 expanded to all layers, an input without grad, and
    (here) some frozen parameters."""
    seed = _seed()
    L, B, T, I, H = 2, 3, 5, 6, 8
    m = LayerNormGRU(I, H, num_layers=L, backend="reference")
    _randomize(m)
    m.weight_ih_l0.requires_grad_(False)
    m.ln_hh_weight_l1.requires_grad_(False)
    x = torch.randn(B, T, I)
    h0 = torch.randn(1, 1, H, requires_grad=True)
    wo = torch.randn(B, T, H)
    res = {}
    for backend in ("reference", "triton"):
        m.backend = backend
        m.zero_grad(set_to_none=True)
        h0.grad = None
        out, h_n = m(x, h0.expand(L, B, H))
        ((out * wo).sum() + h_n.sum()).backward()
        assert m.weight_ih_l0.grad is None and m.ln_hh_weight_l1.grad is None
        res[backend] = [out.detach(), h0.grad.clone()] + [p.grad.clone() for p in m.parameters() if p.requires_grad]
    for i, (a, b) in enumerate(zip(res["triton"], res["reference"])):
        _close(a, b, f"tensor {i} (output, dh0, param grads)", seed)


@needs_triton
def test_triton_unbatched_and_no_grad():
    seed = _seed()
    m = LayerNormGRU(5, 8, num_layers=2, bidirectional=True, backend="reference").eval()
    _randomize(m)
    x = torch.randn(6, 5)
    h0 = torch.randn(4, 8)
    with torch.no_grad():
        out_r, hn_r = m(x, h0)
        m.backend = "triton"
        out_t, hn_t = m(x, h0)
    assert out_t.shape == (6, 16) and hn_t.shape == (4, 8)
    _close(out_t, out_r, "unbatched output", seed)
    _close(hn_t, hn_r, "unbatched h_n", seed)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    m = LayerNormGRU(4, 8, backend="triton")
    with pytest.raises(FastPathUnavailable, match="TRITON_INTERPRET"):
        m(torch.randn(2, 3, 4))


def test_auto_backend_is_reference_on_cpu():
    m = LayerNormGRU(4, 8)
    assert m.backend == "auto" and m.resolved_backend(torch.device("cpu")) == "reference"


# ----------------------------------------------------------------------------------------------------------------
# module: names, shapes, init, semantics, errors
# ----------------------------------------------------------------------------------------------------------------
def test_parameter_names_shapes_and_init():
    I, H = 7, 16
    m = LayerNormGRU(I, H, num_layers=2, bidirectional=True)
    g = torch.nn.GRU(I, H, num_layers=2, bidirectional=True)
    ours = dict(m.named_parameters())
    for name, p in g.named_parameters():                       # every nn.GRU name, same shape
        assert ours[name].shape == p.shape, name
    extra = sorted(set(ours) - {n for n, _ in g.named_parameters()})
    assert extra == sorted(f"ln_{s}_weight_l{k}{r}" for s in ("ih", "hh") for k in range(2) for r in ("", "_reverse"))
    for name, p in ours.items():
        if name.startswith("ln_"):
            assert p.shape == (3 * H,) and torch.all(p == 1), name
        elif name.startswith("weight_hh"):
            torch.testing.assert_close(p.T @ p, torch.eye(H), atol=1e-5, rtol=0)    # orthogonal columns
        elif name.startswith("weight_ih"):
            fan_in, fan_out = p.shape[1], p.shape[0]
            bound = math.sqrt(6.0 / (fan_in + fan_out))                            # xavier_uniform
            assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound, name
        elif name.startswith("bias"):
            assert p.abs().max() <= 1 / math.sqrt(H), name
    # an nn.GRU state dict loads (the gains stay missing)
    missing, unexpected = m.load_state_dict(g.state_dict(), strict=False)
    assert sorted(missing) == extra and not unexpected
    assert not any("bias" in n for n, _ in LayerNormGRU(I, H, bias=False).named_parameters())


def test_shapes_batch_first_unbatched_and_dropout():
    _seed()
    B, T, I, H = 3, 5, 4, 6
    m = LayerNormGRU(I, H, num_layers=3, bidirectional=True, dropout=0.5, backend="reference")
    x = torch.randn(B, T, I)
    m.eval()
    out, h_n = m(x)
    assert out.shape == (B, T, 2 * H) and h_n.shape == (6, B, H)
    torch.testing.assert_close(m(x)[0], out)                                  # eval: no dropout
    # batch_first=False: the same numbers, time-major
    mt = LayerNormGRU(I, H, num_layers=3, bidirectional=True, batch_first=False, backend="reference").eval()
    mt.load_state_dict(m.state_dict())
    out_t, h_n_t = mt(x.transpose(0, 1))
    torch.testing.assert_close(out_t.transpose(0, 1), out)
    torch.testing.assert_close(h_n_t, h_n)
    # unbatched input = a batch of one
    out_u, h_n_u = m(x[1])
    torch.testing.assert_close(out_u, out[1])
    torch.testing.assert_close(h_n_u, h_n[:, 1])
    # h_n holds the last step of the forward direction and the first of the reverse one
    torch.testing.assert_close(h_n[-2], out[:, -1, :H])
    torch.testing.assert_close(h_n[-1], out[:, 0, H:])
    # training: dropout between layers changes the output, not the first layer's final state
    m.train()
    out_d, h_n_d = m(x)
    assert not torch.allclose(out_d, out)
    torch.testing.assert_close(h_n_d[:2], h_n[:2])


def test_bad_inputs_raise_value_errors():
    m = LayerNormGRU(4, 8, num_layers=2)
    with pytest.raises(ValueError, match="rank"):
        m(torch.randn(2, 3, 4, 1))
    with pytest.raises(ValueError, match="rank"):
        m(torch.randn(4))
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="h0"):
        m(torch.randn(2, 3, 4), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match="h0"):
        m(torch.randn(2, 3, 4), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="backend"):
        LayerNormGRU(4, 8, backend="cudnn")
    with pytest.raises(ValueError, match="dropout"):
        LayerNormGRU(4, 8, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size"):
        LayerNormGRU(4, 0)


# ----------------------------------------------------------------------------------------------------------------
# bf16 autocast (CPU: interpreter smoke test of the mixed-dtype path) and CUDA parity at larger shapes
# ----------------------------------------------------------------------------------------------------------------
def _rel_err(a, b):
    """Relative L2 error ||a - b|| / ||b|| (steadier than the max-normalised error for a ratio of two errors)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _bf16_errors(m, x, h0, wo, wh, device):
    """(what, error of the Triton path, error of the reference) under bf16 autocast, both against fp32 reference."""
    m.backend = "reference"
    ref32 = _run(m, x, h0, wo, wh)
    with torch.autocast(device, dtype=torch.bfloat16):
        ref16 = _run(m, x, h0, wo, wh)
        m.backend = "triton"
        tri16 = _run(m, x, h0, wo, wh)
    assert tri16[0].dtype == ref16[0].dtype and tri16[1].dtype == ref16[1].dtype
    rows = [("output", tri16[0], ref16[0], ref32[0]), ("h_n", tri16[1], ref16[1], ref32[1])]
    rows += [(f"grad of {n}", tri16[2][n], ref16[2][n], ref32[2][n]) for n in ref32[2]]
    out = []
    for what, t, r16, r32 in rows:
        assert torch.isfinite(t).all(), f"{what}: non-finite"
        out.append((what, _rel_err(t, r32), _rel_err(r16, r32)))
    return out


@needs_triton
def test_triton_bf16_autocast_path_on_cpu():
    """The mixed-dtype path (bf16 GEMM operands, fp32 state) through the interpreter. The kernels only load and
    store bf16 (all arithmetic is fp32), which the interpreter does right; the bound is looser than the GPU test's
    2x because errors of tiny tensors are noisy."""
    seed = _seed()
    B, T, I, H, L = 3, 6, 8, 8, 2
    m = LayerNormGRU(I, H, num_layers=L, bidirectional=True)
    _randomize(m)
    args = (torch.randn(B, T, I), torch.randn(2 * L, B, H), torch.randn(B, T, 2 * H), torch.randn(2 * L, B, H))
    for what, e_tri, e_ref in _bf16_errors(m, *args, "cpu"):
        assert e_tri <= 3 * e_ref + 1e-6, f"{what}: triton bf16 error {e_tri:.3g} vs torch bf16 {e_ref:.3g} (seed {seed})"


@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True), (3, False)])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_fp32_parity(layers, bidir):
    seed = _seed()
    B, T, I, H = 16, 48, 96, 80
    D = 2 if bidir else 1
    m = LayerNormGRU(I, H, num_layers=layers, bidirectional=bidir, backend="reference").cuda()
    _randomize(m)
    x = torch.randn(B, T, I, device="cuda")
    h0 = torch.randn(layers * D, B, H, device="cuda")
    wo = torch.randn(B, T, D * H, device="cuda")
    wh = torch.randn(layers * D, B, H, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = _run(m, x, h0, wo, wh)
        m.backend = "triton"
        tri = _run(m, x, h0, wo, wh)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    _close(tri[0], ref[0], "output", seed)
    _close(tri[1], ref[1], "h_n", seed)
    for name in ref[2]:
        _close(tri[2][name], ref[2][name], f"grad of {name}", seed)


@pytest.mark.parametrize("layers,bidir", [(2, False), (2, True)])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_bf16_autocast_error_within_2x_of_pytorch_bf16(layers, bidir):
    """bf16: err(triton_bf16) <= 2 err(torch_bf16), both relative L2 errors against the fp32 reference, for the
    output, h_n and every gradient."""
    seed = _seed()
    B, T, I, H = 16, 64, 128, 96
    D = 2 if bidir else 1
    m = LayerNormGRU(I, H, num_layers=layers, bidirectional=bidir, backend="reference").cuda()
    _randomize(m)
    x = torch.randn(B, T, I, device="cuda")
    h0 = torch.randn(layers * D, B, H, device="cuda")
    wo = torch.randn(B, T, D * H, device="cuda")
    wh = torch.randn(layers * D, B, H, device="cuda")
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        errors = _bf16_errors(m, x, h0, wo, wh, "cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    for what, e_tri, e_ref in errors:
        assert e_tri <= 2 * e_ref + 1e-6, \
            f"{what}: triton bf16 error {e_tri:.3g} > 2 x torch bf16 error {e_ref:.3g} (seed {seed})"
