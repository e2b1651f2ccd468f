"""train.members: the batched GRU op and model against K solo models, the per-member AdamW against torch's, and a
K-member run against the solo runs of its members (losses, weights, NaN isolation, folders, resume)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from fastdecoder.config import ConfigError, config_from_dict, load_config
from fastdecoder.members.model import BatchedGRUDecoder
from fastdecoder.members.optim import MemberAdam
from fastdecoder.model import GRUDecoder
from fastdecoder.ops.gru.members import members_gru, members_gru_reference
from fastdecoder.testing.tiny import tiny_config, tiny_data
from fastdecoder.checkpoint import load_run
from fastdecoder.train.members import MembersTrainer
from fastdecoder.train.trainer import Trainer


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("K,B,N,I,H,L", [(1, 3, 5, 4, 6, 1), (3, 2, 7, 5, 8, 2), (4, 5, 3, 9, 4, 3)])
def test_members_gru_equals_torch_gru_per_member(rng, K, B, N, I, H, L):
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    weights = []
    for layer in range(L):
        i = I if layer == 0 else H
        weights.append(tuple((torch.randn(s, generator=g) * 0.5).requires_grad_()
                             for s in ((K, 3 * H, i), (K, 3 * H, H), (K, 3 * H), (K, 3 * H))))
    x = torch.randn(K, B, N, I, generator=g, requires_grad=True)
    h0 = torch.randn(L, K, B, H, generator=g, requires_grad=True)
    masks = [(torch.rand(N, K, B, H, generator=g) > 0.3).float() / 0.7 for _ in range(L - 1)]
    leaves = [x, h0] + [t for w in weights for t in w]
    w_out = torch.randn(K, B, N, H, generator=g)
    grads = []
    outs = []
    for fn in (lambda *a: members_gru(*a, batched_projection=True),
               lambda *a: members_gru(*a, batched_projection=False), members_gru_reference):
        y = fn(x, weights, h0, masks)
        outs.append(y)
        grads.append(torch.autograd.grad((y * w_out).sum(), leaves))
    assert outs[0].shape == (K, B, N, H)
    for y, g_ in zip(outs[:2], grads[:2]):
        assert _rel(y, outs[2]) < 1e-5
        for a, b in zip(g_, grads[2]):
            assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("K,B,T,C,P,S,L,own", [(1, 3, 9, 4, 1, 1, 1, False), (3, 4, 20, 5, 6, 2, 2, True),
                                                 (2, 5, 17, 3, 2, 5, 2, False), (4, 2, 14, 6, 14, 4, 1, True)])
def test_members_gru_over_the_loss_frames_equals_the_full_gru(rng, K, B, T, C, P, S, L, own):
    """``frames``: layer 0 projects only the steps a loss reads, gathered from the patch view; those steps' outputs
    and every gradient equal the full GRU's (patch size 1, stride > size, per-member and shared frames, 0 and all)."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    N = (T - P) // S + 1
    H = 5
    weights = []
    for layer in range(L):
        i = P * C if layer == 0 else H
        weights.append(tuple((torch.randn(s, generator=g) * 0.5).requires_grad_()
                             for s in ((K, 3 * H, i), (K, 3 * H, H), (K, 3 * H), (K, 3 * H))))
    feats = torch.randn(K, B, T, C, generator=g, requires_grad=True)
    h0 = torch.randn(L, K, B, H, generator=g, requires_grad=True)
    frames = torch.from_numpy(rng.integers(0, N + 1, size=(K, B) if own else (B,)))
    frames.view(-1)[0] = N  # one trial with every step, one with none
    frames.view(-1)[-1] = 0
    keep = (torch.arange(N) < frames.unsqueeze(-1)).expand(K, B, N).unsqueeze(-1)  # (K, B, N, 1)
    w_out = torch.randn(K, B, N, H, generator=g)
    leaves = [feats, h0] + [t for w in weights for t in w]
    results = []
    for kw in ({"frames": frames, "batched_projection": False}, {"batched_projection": False},
               {"frames": frames, "batched_projection": False, "patch": (P, S, True)},
               {"batched_projection": True, "patch": (P, S, True)}, None):
        x = feats.unfold(2, P, S).transpose(3, 4).reshape(K, B, N, P * C)  # the patches, as the model makes them
        if kw is None:
            y = members_gru_reference(x, weights, h0)
        else:
            y = members_gru(feats if "patch" in kw else x, weights, h0, **kw)
        y = y * keep
        results.append((y, torch.autograd.grad((y * w_out).sum(), leaves)))
    (y, grads), ref = results[0], results[-1]
    assert y.shape == (K, B, N, H)
    for y_, g_ in results[:-1]:
        assert _rel(y_, ref[0]) < 1e-5
        for i, (a, b) in enumerate(zip(g_, ref[1])):
            assert _rel(a, b) < 1e-5, i


@pytest.mark.parametrize("K,B,T,C,P,S,time_major,subset", [
    (1, 2, 6, 3, 1, 1, True, False), (3, 4, 20, 5, 6, 2, True, True), (2, 3, 17, 4, 2, 5, False, True),
    (2, 2, 30, 8, 14, 4, True, True), (3, 3, 12, 2, 4, 3, False, False)])
@pytest.mark.parametrize("block_rows", [None, 1, 2])
def test_patch_projection_equals_the_unfold_form(rng, monkeypatch, K, B, T, C, P, S, time_major, subset, block_rows):
    """members_patch_projection (no patch tensor) against unfold + linear, forward and every gradient, over all
    steps or a subset per member (the rest zero); patch size 1, stride > size, both patch orders; the rows in one
    block or in blocks of 1 or 2 rows; the members' features as one tensor (odd K) or K tensors (even K)."""
    from fastdecoder.ops.gru import patch_projection
    from fastdecoder.ops.gru.patch_projection import members_patch_projection, patch_view

    if block_rows is not None:
        monkeypatch.setattr(patch_projection, "BLOCK_BYTES", block_rows * P * C * 4)

    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    N, G = (T - P) // S + 1, 9
    feats = torch.randn(K, B, T, C, generator=g, requires_grad=True)
    w = torch.randn(K, G, P * C, generator=g, requires_grad=True)
    b = torch.randn(K, G, generator=g, requires_grad=True)
    rows = [torch.from_numpy(np.sort(rng.choice(B * N, size=int(rng.integers(0, B * N + 1)), replace=False)))
            if subset and k > 0 else None for k in range(K)]
    keep = torch.stack([torch.ones(B * N) if r is None else torch.zeros(B * N).index_fill(0, r, 1.0) for r in rows])
    w_out = torch.randn(K, B * N, G, generator=g)
    out = members_patch_projection(feats if K % 2 else list(feats.unbind(0)), w, b, rows, P, S, time_major)
    ref = (torch.baddbmm(b.unsqueeze(1), patch_view(feats, P, S, time_major).reshape(K, B * N, P * C),
                         w.transpose(1, 2)) * keep.unsqueeze(-1))
    assert out.shape == (K, B * N, G)
    assert _rel(out, ref) < 1e-5
    assert bool((out[keep == 0] == 0).all())
    for a, r in zip(torch.autograd.grad((out * w_out).sum(), (feats, w, b)),
                    torch.autograd.grad((ref * w_out).sum(), (feats, w, b))):
        assert _rel(a, r) < 1e-5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(K=st.integers(1, 3), B=st.integers(1, 4), C=st.integers(1, 5), P=st.integers(1, 6), S=st.integers(1, 7),
       extra=st.integers(0, 12), block_rows=st.integers(1, 9), time_major=st.booleans(), data=st.data())
def test_patch_projection_blocks_hypothesis(monkeypatch, K, B, C, P, S, extra, block_rows, time_major, data):
    """Any shape, any subset of rows per member (empty, all, or a random set), any block size: the blocked
    projection equals unfold + linear, forward and every gradient, and the rows left out are exactly zero."""
    from fastdecoder.ops.gru import patch_projection
    from fastdecoder.ops.gru.patch_projection import members_patch_projection, patch_view

    monkeypatch.setattr(patch_projection, "BLOCK_BYTES", block_rows * P * C * 4)
    T = P + extra
    N = (T - P) // S + 1
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(K):
        picked = data.draw(st.one_of(st.none(), st.sets(st.integers(0, B * N - 1))), label=f"rows{k}")
        rows.append(None if picked is None else torch.tensor(sorted(picked), dtype=torch.int64))
    feats = torch.randn(K, B, T, C, generator=g, requires_grad=True)
    w = torch.randn(K, 5, P * C, generator=g, requires_grad=True)
    b = torch.randn(K, 5, generator=g, requires_grad=True)
    keep = torch.stack([torch.ones(B * N) if r is None else torch.zeros(B * N).index_fill(0, r, 1.0) for r in rows])
    out = members_patch_projection(list(feats.unbind(0)), w, b, rows, P, S, time_major)
    ref = torch.baddbmm(b.unsqueeze(1), patch_view(feats, P, S, time_major).reshape(K, B * N, P * C),
                        w.transpose(1, 2)) * keep.unsqueeze(-1)
    assert bool((out[keep == 0] == 0).all())
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max().clamp(min=1.0)
    w_out = torch.randn(K, B * N, 5, generator=g)
    for a, r in zip(torch.autograd.grad((out * w_out).sum(), (feats, w, b)),
                    torch.autograd.grad((ref * w_out).sum(), (feats, w, b))):
        assert torch.isfinite(a).all()
        assert (a - r).abs().max() <= 1e-5 * r.abs().max().clamp(min=1.0)


def test_patch_projection_refuses_mismatched_members():
    from fastdecoder.ops.gru.patch_projection import members_patch_projection

    w, b = torch.zeros(2, 3, 4), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="2 members' weights, 1 feature tensors"):
        members_patch_projection([torch.zeros(1, 5, 2)], w, b, [None], 2, 1, True)
    with pytest.raises(ValueError, match="shapes"):
        members_patch_projection([torch.zeros(1, 5, 2), torch.zeros(1, 6, 2)], w, b, [None, None], 2, 1, True)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_fused_softsign_dropout_equals_f_softsign_then_the_dropout_product(rng, p):
    """softsign and the input-dropout product in one Function against F.softsign(y) * m, values and gradient (no
    mask, a mask, an all-zero mask)."""
    from fastdecoder.members.model import _activate

    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    y = (torch.randn(3, 50, 7, generator=g) * torch.logspace(-3, 3, 7)).requires_grad_()
    w = torch.randn(3, 50, 7, generator=g)
    m = None if p == 0 else torch.empty(3, 50, 7).bernoulli_(1 - p, generator=g).div_(1 - p) if p < 1 else \
        torch.zeros(3, 50, 7)
    out = _activate(y, "softsign", m)
    ref = F.softsign(y) if m is None else F.softsign(y) * m
    assert _rel(out, ref) < 1e-6
    assert _rel(torch.autograd.grad((out * w).sum(), y)[0], torch.autograd.grad((ref * w).sum(), y)[0]) < 1e-6


def _ln_params(g, K, I, H, L, bias=True):
    out = []
    for layer in range(L):
        i = I if layer == 0 else H
        ps = [torch.randn(K, 3 * H, i, generator=g) * 0.5, torch.randn(K, 3 * H, H, generator=g) * 0.5]
        ps += [torch.randn(K, 3 * H, generator=g) * 0.3 if bias else None for _ in range(2)]
        ps += [1 + 0.3 * torch.randn(K, 3 * H, generator=g) for _ in range(2)]
        out.append(tuple(p.requires_grad_() if p is not None else None for p in ps))
    return out


def _ln_members_case(rng, K, B, T, I, H, L, bias, backends, device="cpu", tol=1e-5, dtype=torch.float32):
    from fastdecoder.ops.ln_gru.members import members_ln_gru

    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    params = [tuple(p.detach().to(device, dtype).requires_grad_() if p is not None else None for p in ps)
              for ps in _ln_params(g, K, I, H, L, bias)]
    x = torch.randn(K, B, T, I, generator=g).to(device, dtype).requires_grad_()
    h0 = torch.randn(L, K, B, H, generator=g).to(device, dtype).requires_grad_()
    masks = [((torch.rand(K, B, T, H, generator=g) > 0.3).float() / 0.7).to(device, dtype) for _ in range(L - 1)]
    leaves = [x, h0] + [p for ps in params for p in ps if p is not None]
    w_out = torch.randn(K, B, T, H, generator=g).to(device, dtype)
    res = {}
    for backend in backends:
        y = members_ln_gru(x, params, h0, masks, backend=backend)
        res[backend] = (y, torch.autograd.grad((y * w_out).sum(), leaves))
    y_ref, g_ref = res.pop("per_member")
    for backend, (y, grads) in res.items():
        assert y.shape == (K, B, T, H)
        assert _rel(y, y_ref) < tol, backend
        for i, (a, b) in enumerate(zip(grads, g_ref)):
            assert _rel(a, b) < tol, (backend, i)


@pytest.mark.parametrize("K,B,T,I,H,L,bias", [(1, 3, 5, 4, 6, 1, True), (3, 2, 7, 5, 8, 2, True),
                                              (4, 5, 3, 9, 4, 3, False)])
def test_members_ln_gru_equals_solo_ln_gru_per_member(rng, K, B, T, I, H, L, bias):
    """The batched LayerNorm-GRU reference (member dimension) against K solo reference layers: in float64 the same
    math to 1e-10 (every case); in fp32 to 2e-5 where the problem is well conditioned. The 3-layer, 4-unit case is
    not: its gradients through three LayerNorms of 12 gates amplify round-off, so two fp32 orderings of the same
    math differ by up to 2e-3 there (400 seeds; 4e-13 in float64), while the 1- and 2-layer cases stay under 9e-6."""
    _ln_members_case(rng, K, B, T, I, H, L, bias, ["reference", "per_member"], tol=1e-10, dtype=torch.float64)
    if L < 3:
        _ln_members_case(rng, K, B, T, I, H, L, bias, ["reference", "per_member"], tol=2e-5)


@pytest.mark.parametrize("K,B,T,I,H,L,bias", [(2, 3, 4, 5, 8, 2, True), (3, 2, 3, 3, 6, 1, False)])
def test_members_ln_gru_triton_interpreter_equals_solo(rng, K, B, T, I, H, L, bias):
    """The Triton path with the member dimension in its kernels (CPU: Triton's interpreter, tiny shapes; 8 units in
    the 2-layer case, where two fp32 orderings of the same math stay under 7e-6 over 400 seeds, against 5.5e-5 with
    4 units)."""
    from fastdecoder.ops.triton_support import triton_usable

    if not triton_usable("cpu"):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    _ln_members_case(rng, K, B, T, I, H, L, bias, ["triton", "per_member"], tol=2e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_members_ln_gru_triton_on_gpu_equals_solo(rng):
    """The member-dimension kernels on CUDA at a larger shape, fp32 (TF32 off), against K solo reference layers."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _ln_members_case(rng, 4, 16, 40, 96, 80, 2, True, ["triton", "per_member"], device="cuda", tol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def _solo_cfg(**kw):
    cfg = load_config("demo").model
    base = dict(n_features=6, n_days=3, hidden_size=10, num_layers=2, rnn_dropout=0.3, input_dropout=0.2,
                patch_size=4, patch_stride=2)
    return replace(cfg, **(base | kw))


def _solos_and_members(cfg, K: int, seed: int):
    """K solo GRUDecoders (reference backends, seeds seed + k), one dropout generator per member (seeds
    seed + 100 + k) with its start state, and the BatchedGRUDecoder of the solos in training mode."""
    solos = []
    for k in range(K):
        torch.manual_seed(seed + k)
        solos.append(GRUDecoder(cfg, rnn_backend="reference", smoothing_backend="reference"))
    gens = [torch.Generator().manual_seed(seed + 100 + k) for k in range(K)]
    return solos, gens, [g.get_state() for g in gens], BatchedGRUDecoder(solos).train()


@pytest.mark.parametrize("kw", [{}, {"patch_order": "channel_major", "learn_h0": False, "num_layers": 3},
                                {"smoothing": "model", "smooth_taps": "b2t24", "day_activation": "none"},
                                {"rnn": "ln_gru"}, {"rnn": "ln_gru", "learn_h0": False, "num_layers": 3},
                                {"rnn_dropout": 1.0}, {"rnn": "ln_gru", "rnn_dropout": 1.0}])
def test_batched_decoder_equals_solo_models_with_their_dropout(test_seed, kw):
    """Member k: the solo GRUDecoder (torch's nn.GRU) with the dropout masks its own global RNG stream draws."""
    cfg = _solo_cfg(**kw)
    K, B, T = 3, 4, 17
    solos, gens, states, model = _solos_and_members(cfg, K, test_seed)
    g = torch.Generator().manual_seed(test_seed)
    x = torch.randn(K, B, T, cfg.n_features, generator=g)
    day = np.array([2, 0, 2, 1])
    out = model(x, day, None, gens)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    for k, solo in enumerate(solos):
        torch.set_rng_state(states[k])
        o = solo.train()(x[k], torch.from_numpy(day))
        (o * w[k]).sum().backward()
        assert _rel(out[k].detach(), o.detach()) < 1e-5
        for name, p in solo.named_parameters():
            assert _rel(model.solo_parameter(name).grad[k], p.grad) < 1e-5, name
        for name, t in model.member_state_dict(k).items():
            assert torch.equal(t, solo.state_dict()[name]), name


@pytest.mark.parametrize("kw", [{}, {"smoothing": "model", "smooth_taps": "b2t24", "mask_padding": True},
                                {"smoothing": "model", "smooth_taps": "b2t24"}, {"rnn": "ln_gru"}])
def test_batched_decoder_with_each_members_own_batch(test_seed, kw):
    """Own batch order: member k's own days and (trials, bins), padded to the largest; its outputs on its own
    batch and its gradients equal the solo model's on that batch alone, dropout masks drawn at its own shapes."""
    cfg = _solo_cfg(**kw)
    K, C = 3, cfg.n_features
    shapes = [(4, 17), (3, 12), (4, 9)]  # (trials, bins) per member
    B, T = 4, 17
    solos, gens, states, model = _solos_and_members(cfg, K, test_seed)
    g = torch.Generator().manual_seed(test_seed)
    days = np.array([[2, 0, 2, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    xs = [torch.randn(b, t, C, generator=g) for b, t in shapes]
    lens = [torch.tensor([t, t - 2, t, t - 3][:b]) for b, t in shapes]
    x = torch.zeros(K, B, T, C)
    lengths = torch.full((K, B), T)
    for k, (b, t) in enumerate(shapes):
        x[k, :b, :t] = xs[k]
        lengths[k, :b] = lens[k]
    out = model(x, days, lengths, gens, member_shapes=shapes)
    w = torch.randn(out.shape, generator=g)
    for k, (b, t) in enumerate(shapes):  # only each member's own outputs count
        n = (t - cfg.patch_size) // cfg.patch_stride + 1
        w[k, b:] = 0
        w[k, :, n:] = 0
    (out * w).sum().backward()
    for k, (b, t) in enumerate(shapes):
        torch.set_rng_state(states[k])
        o = solos[k].train()(xs[k], torch.from_numpy(days[k, :b]), lens[k])
        (o * w[k, :b, :o.shape[1]]).sum().backward()
        assert _rel(out[k, :b, :o.shape[1]].detach(), o.detach()) < 1e-5
        for name, p in solos[k].named_parameters():
            assert _rel(model.solo_parameter(name).grad[k], p.grad) < 1e-5, name


@pytest.mark.parametrize("day", [[2, 0, 2, 1], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 2],
                                 [[0, 0, 1, 1], [2, 2, 0, 0]], [[0, 1, 1, 1], [2, 2, 0, 0]],
                                 [[1, 1, 1, 1], [0, 0, 0, 0]]])
def test_day_layer_every_grouping_equals_per_trial(test_seed, day):
    """The batched day layer before its activation (one GEMM per member over equal day runs, else per distinct
    day) against x W_k[d] + b_k[d] trial by trial, values and gradients; x as one tensor and as K tensors."""
    cfg = _solo_cfg()
    K = 2
    solos = []
    for k in range(K):
        torch.manual_seed(test_seed + k)
        solos.append(GRUDecoder(cfg, rnn_backend="reference", smoothing_backend="reference"))
    model = BatchedGRUDecoder(solos)
    g = torch.Generator().manual_seed(test_seed)
    with torch.no_grad():
        model.solo_parameter("day_biases").normal_(generator=g)
    day = np.array(day)
    x = torch.randn(K, 4, 5, cfg.n_features, generator=g)
    y = torch.stack(model.day_layer(x if day.ndim == 1 else list(x.unbind(0)), day))
    w = torch.randn(y.shape, generator=g)
    (y * w).sum().backward()
    W, b = model.solo_parameter("day_weights"), model.solo_parameter("day_biases")
    d2 = np.broadcast_to(day, (K, 4))
    ref = torch.stack([torch.stack([x[k, i] @ W[k, d2[k, i]] + b[k, d2[k, i]] for i in range(4)])
                       for k in range(K)])
    gW, gb = torch.autograd.grad((ref * w).sum(), [W, b])
    assert _rel(y, ref) < 1e-5 and _rel(W.grad, gW) < 1e-5 and _rel(b.grad, gb) < 1e-5


def test_member_adam_equals_torch_adamw_and_lr_zero_or_skip_leaves_a_member(test_seed):
    g = torch.Generator().manual_seed(test_seed)
    K = 3
    init = torch.randn(K, 5, 4, generator=g)
    lr, eps, wd = [0.01, 0.0, 0.003], [0.1, 1e-8, 0.01], [0.001, 0.1, 0.0]
    stacked = torch.nn.Parameter(init.clone())
    opt = MemberAdam([stacked], [0], K, (0.9, 0.999))
    solos = [torch.nn.Parameter(init[k].clone()) for k in range(K)]
    torch_opts = [torch.optim.AdamW([solos[k]], lr=lr[k] or 1.0, eps=eps[k], weight_decay=wd[k])
                  for k in range(K)]
    for k in range(K):
        torch_opts[k].param_groups[0]["lr"] = lr[k]
    for step in range(4):
        grad = torch.randn(K, 5, 4, generator=g)
        apply = [True, True, step != 2]  # member 2 skips step 2
        stacked.grad = grad.clone()
        if not apply[2]:
            stacked.grad[2] = float("nan")
        before = stacked.detach()[2].clone()
        opt.step([lr], [wd], eps, apply)
        if not apply[2]:
            assert torch.equal(stacked.detach()[2], before)
        for k in range(K):
            if apply[k]:
                solos[k].grad = grad[k].clone()
                torch_opts[k].step()
    assert torch.equal(stacked.detach()[1], init[1]), "a member with lr 0 moved"
    assert not torch.equal(stacked.detach()[0], init[0])
    assert opt.steps == [4, 4, 3]
    for k in range(K):
        assert _rel(stacked.detach()[k], solos[k].detach()) < 1e-6


# -- runs ------------------------------------------------------------------------------------------------------------
RAW = tiny_config(
    "tiny-members", data=tiny_data(3, trials_per_day=16, val_trials_per_day=4, test_trials_per_day=2, n_features=12),
    model={"hidden_size": 16, "num_layers": 2, "rnn_dropout": 0.2, "input_dropout": 0.1, "patch_size": 6,
           "patch_stride": 3},
    augment={"time_mask_prob": 0.5, "time_mask_width": 3, "time_mask_count": 1},
    optim={"warmup_steps": 3, "decay_steps": 40, "grad_clip": 1.0},
    train={"steps": 20, "batch_size": 6, "eval_every": 10, "log_every": 5, "checkpoint_every": 10, "beam_width": 0,
           "deterministic": True, "plot": False, "seed": 5, "data_seed": 11, "members": 2,
           "member_overrides": [{"model.input_dropout": 0.3},
                                {"optim.lr": 0.005, "optim.eps": 0.01, "optim.grad_clip": 0.0,
                                 "augment.white_noise_std": 0.4}]},
)


@pytest.fixture(scope="module")
def members_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("members")
    trainer = MembersTrainer(config_from_dict(RAW), out, progress=False)
    summary = trainer.fit()
    return out, trainer, summary


def _assert_member_is_its_solo_run(trainer, k: int, cfg, out, steps: int = 20) -> None:
    """Member k's losses over ``steps`` steps and its weights after them equal the solo run of ``cfg`` in ``out``."""
    solo = Trainer(cfg, out, progress=False)
    losses = []
    solo.run(on_step=lambda o: losses.append(o["loss"]))
    mine = [h["loss"][k] for h in trainer.history]
    assert len(mine) == len(losses) == steps
    np.testing.assert_allclose(mine, losses, rtol=2e-5)
    sd = trainer.model.member_state_dict(k)
    for name, p in solo.model.state_dict().items():
        if p.numel():
            assert _rel(sd[name], p) < 2e-5, name


def test_each_member_equals_its_solo_run(members_run, tmp_path):
    """Member i's losses over 20 steps and its weights after them equal `train --config member-i/config.yaml`."""
    out, trainer, _ = members_run
    for k in range(2):
        cfg = load_config(out / f"member-{k}" / "config.yaml")
        assert cfg.train.members == 1 and cfg.train.seed == 5 + k and cfg.train.data_seed == 11
        _assert_member_is_its_solo_run(trainer, k, cfg, tmp_path / f"solo-{k}")
    assert trainer.history[0]["loss"][0] != trainer.history[0]["loss"][1]  # the members differ


def test_each_member_with_its_own_batch_order_equals_its_solo_run(tmp_path):
    """train.member_batch_order: own: member i draws the batches (and random cut) of data seed 11 + i, as the solo
    run of member-i/config.yaml does; its losses over 20 steps and its weights equal that run's."""
    raw = json.loads(json.dumps(RAW))
    raw["data"]["val_split"] = None  # no evaluations: the steps are what is compared
    raw["train"].update(member_batch_order="own", eval_every=100, checkpoint_every=100)
    trainer = MembersTrainer(config_from_dict(raw), tmp_path / "own", progress=False)
    trainer.fit()
    for k in range(2):
        cfg = load_config(tmp_path / "own" / f"member-{k}" / "config.yaml")
        assert cfg.train.members == 1 and cfg.train.seed == 5 + k and cfg.train.data_seed == 11 + k
        assert cfg.train.member_batch_order == "shared"  # a plain solo config
        _assert_member_is_its_solo_run(trainer, k, cfg, tmp_path / f"solo-{k}")
    top = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert top["member_batch_order"] == "own" and [m["data_seed"] for m in top["member"]] == [11, 12]


@pytest.mark.parametrize("order", ["shared", "own"])
def test_each_ln_gru_member_equals_its_solo_run(tmp_path, order):
    """model.rnn: ln_gru (the batched LayerNorm-GRU): member i's losses over 20 steps and its weights equal the solo
    run of member-i/config.yaml, with the shared and with each member's own batch order."""
    raw = json.loads(json.dumps(RAW))
    raw["model"].update(rnn="ln_gru", hidden_size=8)
    raw["data"]["val_split"] = None  # no evaluations: the steps are what is compared
    raw["train"].update(member_batch_order=order, eval_every=100, checkpoint_every=100)
    trainer = MembersTrainer(config_from_dict(raw), tmp_path / "run", progress=False)
    trainer.fit()
    assert "rnn.ln_hh_weight_l1" in trainer.model.member_state_dict(0)
    for k in range(2):
        cfg = load_config(tmp_path / "run" / f"member-{k}" / "config.yaml")
        assert cfg.model.rnn == "ln_gru" and cfg.train.data_seed == (11 + k if order == "own" else 11)
        _assert_member_is_its_solo_run(trainer, k, cfg, tmp_path / f"solo-{k}")


def test_own_batch_order_with_fewer_trials_in_one_member(tmp_path):
    """A member whose sampler gives fewer trials (padded with placeholder trials left out of its loss) steps as
    its solo run steps on that batch alone."""
    from fastdecoder.data import collate

    raw = json.loads(json.dumps(RAW))
    raw["train"].update(member_batch_order="own", steps=1, eval_every=100, checkpoint_every=100)
    tr = MembersTrainer(config_from_dict(raw), None, progress=False)
    idx = [next(s) for s in tr.samplers]
    short = collate(tr.train_split, idx[1][:4])
    out = tr.train_step([collate(tr.train_split, idx[0]), short])
    cfg = config_from_dict(raw)
    from fastdecoder.config import member_configs

    solo = Trainer(member_configs(cfg)[1], tmp_path / "solo", progress=False)
    ref = solo.train_step(short)
    assert out["loss"][1] == pytest.approx(ref["loss"], rel=2e-5)
    sd = tr.model.member_state_dict(1)
    for name, p in solo.model.state_dict().items():
        if p.numel():
            assert _rel(sd[name], p) < 2e-5, name


@pytest.mark.parametrize("order", ["shared", "own"])
def test_length_bucket_pads_as_the_solo_run_does(tmp_path, order):
    """train.length_bucket pads after the augmentation, so the input dropout masks are drawn at the padded shape:
    a member's first step equals its solo run's first step."""
    from fastdecoder.config import member_configs

    raw = json.loads(json.dumps(RAW))
    raw["train"].update(member_batch_order=order, length_bucket=16, steps=1)
    cfg = config_from_dict(raw)
    tr = MembersTrainer(cfg, None, progress=False)
    out = tr.train_step(tr.next_batch())
    for k, c in enumerate(member_configs(cfg)):
        solo = Trainer(c, tmp_path / f"solo-{k}", progress=False)
        ref = solo.train_step(solo.next_batch())
        assert out["loss"][k] == pytest.approx(ref["loss"], rel=2e-5)
        sd = tr.model.member_state_dict(k)
        for name, p in solo.model.state_dict().items():
            if p.numel():
                assert _rel(sd[name], p) < 2e-5, name


def test_own_batch_order_kill_and_resume_is_bitwise(tmp_path):
    whole = MembersTrainer(_short(tmp_path, checkpoint_every=2, member_batch_order="own"), tmp_path / "whole",
                           progress=False)
    whole.fit()
    first = MembersTrainer(_short(tmp_path, checkpoint_every=2, member_batch_order="own"), tmp_path / "cut",
                           progress=False)
    first.fit(max_steps=2)
    resumed = MembersTrainer(_short(tmp_path, checkpoint_every=2, member_batch_order="own"), tmp_path / "cut",
                             progress=False, resume=True)
    resumed.fit()
    assert [h["loss"] for h in list(whole.history)[2:]] == [h["loss"] for h in resumed.history]
    for k in range(2):
        a, b = whole.model.member_state_dict(k), resumed.model.member_state_dict(k)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_member_folders_are_ordinary_runs(members_run):
    """load_run / the ensemble path take member folders as they are; the summary reports what eval gives."""
    from fastdecoder.cli import main
    from fastdecoder.evaluation import evaluate_runs

    out, trainer, summary = members_run
    dirs = [out / "member-0", out / "member-1"]
    for d in dirs:
        assert {"config.yaml", "best.pt", "last.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in d.iterdir()}
        cfg, model, state = load_run(d)
        assert cfg.train.members == 1 and state["step"] in (10, 20)
    runs = evaluate_runs(dirs, "val")
    assert [m.per for m in runs.members] == [m["val_per_best"] for m in summary["member"]]
    assert runs.result.per == summary["ensemble_val_per"]
    assert main(["eval", "--run", str(dirs[0]), "--run", str(dirs[1])]) == 0
    assert main(["stream", "--run", str(dirs[1]), "--max-trials", "2", "--quiet"]) == 0
    top = json.loads((out / "summary.json").read_text())
    assert top["members"] == 2 and top["ensemble_members"] == ["member-0", "member-1"]


def _short(tmp, **train):
    raw = json.loads(json.dumps(RAW))
    raw["train"].update({"steps": 4, "eval_every": 100, "checkpoint_every": 100, "log_every": 2, **train})
    return config_from_dict(raw)


def test_a_planted_nan_skips_only_that_member(tmp_path):
    clean = MembersTrainer(_short(tmp_path), tmp_path / "clean", progress=False)
    clean.fit()
    planted = MembersTrainer(_short(tmp_path), tmp_path / "nan", progress=False)
    aug = planted.members[1].augment
    real = aug.__call__

    def poisoned(x, lens, step):
        x, lens = real(x, lens, step)
        return (x * float("nan"), lens) if step == 1 else (x, lens)

    planted.members[1].augment = poisoned
    planted.fit()
    assert [h["skipped"] for h in list(planted.history)] == [[False, False], [False, True], [False, False],
                                                      [False, False]]
    assert planted.members[1].guard.skipped == 1 and planted.members[0].guard.skipped == 0
    a, b = clean.model.member_state_dict(0), planted.model.member_state_dict(0)
    assert all(torch.equal(a[n], b[n]) for n in a), "member 0 changed because member 1 went NaN"
    assert all(torch.isfinite(t).all() for t in planted.model.member_state_dict(1).values())
    events = [json.loads(s) for s in (tmp_path / "nan" / "member-1" / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "skipped_update" and e["step"] == 2 for e in events)


def test_a_member_that_keeps_failing_is_stopped_and_the_others_go_on(tmp_path):
    cfg = _short(tmp_path)
    cfg = replace(cfg, train=replace(cfg.train, member_overrides=[{}, {"stability.max_consecutive_skips": 2}]))
    tr = MembersTrainer(cfg, tmp_path / "run", progress=False)
    with torch.no_grad():
        tr.model.solo_parameter("head.bias")[1, 0] = float("nan")
    summary = tr.fit()
    assert tr.members[1].stopped is not None and tr.members[0].stopped is None
    assert tr.step == 4 and [h["skipped"][0] for h in tr.history] == [False] * 4
    assert summary["member"][1]["stopped"]
    assert "aborted" in json.loads((tmp_path / "run" / "member-1" / "summary.json").read_text())


def test_kill_and_resume_is_bitwise(tmp_path):
    whole = MembersTrainer(_short(tmp_path, checkpoint_every=2), tmp_path / "whole", progress=False)
    whole.fit()
    first = MembersTrainer(_short(tmp_path, checkpoint_every=2), tmp_path / "cut", progress=False)
    first.fit(max_steps=2)
    resumed = MembersTrainer(_short(tmp_path, checkpoint_every=2), tmp_path / "cut", progress=False, resume=True)
    assert resumed.step == 2
    resumed.fit()
    assert [h["loss"] for h in list(whole.history)[2:]] == [h["loss"] for h in resumed.history]
    for k in range(2):
        a, b = whole.model.member_state_dict(k), resumed.model.member_state_dict(k)
        assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("change,match", [
    ({"member_overrides": [{}]}, "has 1 entries but train.members is 2"),
    ({"member_overrides": [{}, {"optim.betas": [0.8, 0.9]}]}, "'optim.betas' cannot differ"),
    ({"member_overrides": [{}, {"optim.lr": -1}]}, r"member_overrides\[1\]: optim.lr must be"),
    ({"member_overrides": [{}, {"train.seed": 5}]}, "distinct train.seed"),
    ({"member_overrides": "lr"}, "must be a list"),
    ({"members": 1, "member_overrides": [{}]}, "needs train.members > 1"),
    ({"member_batch_order": "mine"}, r"train.member_batch_order must be one of shared, own"),
    ({"member_overrides": [{}, {"train.data_seed": 3}]}, "only with train.member_batch_order: own"),
])
def test_bad_member_settings_are_named(change, match):
    raw = json.loads(json.dumps(RAW))
    raw["train"].update(change)
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_member_data_seeds():
    """shared: every member D; own: D + i (D = data_seed, else seed), or the member's own train.data_seed."""
    from fastdecoder.config import member_configs

    raw = json.loads(json.dumps(RAW))
    raw["train"].update(members=3, member_overrides=None)
    assert [c.train.data_seed for c in member_configs(config_from_dict(raw))] == [11, 11, 11]
    raw["train"].update(member_batch_order="own")
    assert [c.train.data_seed for c in member_configs(config_from_dict(raw))] == [11, 12, 13]
    raw["train"].update(data_seed=None, member_overrides=[{}, {"train.data_seed": 40}, {}])
    assert [c.train.data_seed for c in member_configs(config_from_dict(raw))] == [5, 40, 7]


def test_bidirectional_members_are_refused_clearly():
    raw = json.loads(json.dumps(RAW))
    raw["model"]["bidirectional"] = True
    with pytest.raises(ConfigError, match="model.bidirectional: false"):
        config_from_dict(raw)


def test_data_seed_null_is_the_model_seed(tmp_path):
    """data_seed: null keeps today's runs bitwise (batches and cut from train.seed); a data seed moves only them."""
    raw = json.loads(json.dumps(RAW))
    raw["train"].update(steps=3, members=1, member_overrides=None, eval_every=100, checkpoint_every=100)
    runs = {}
    for name, ds in (("null", None), ("same", 5), ("other", 6)):
        raw["train"]["data_seed"] = ds
        tr = Trainer(config_from_dict(raw), tmp_path / name, progress=False)
        init = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        batches = [next(tr.sampler).tolist() for _ in range(3)]
        runs[name] = (init, batches, int(tr.streams.cut.integers(0, 1000)))
    assert runs["null"][1:] == runs["same"][1:]
    assert runs["other"][1] != runs["null"][1]
    for name in ("same", "other"):
        assert all(torch.equal(runs[name][0][n], runs["null"][0][n]) for n in runs["null"][0])


def test_cli_trains_resumes_and_refuses_members(tmp_path, capsys):
    import yaml

    from fastdecoder.cli import main

    raw = json.loads(json.dumps(RAW))
    raw["train"].update(steps=3, eval_every=3, checkpoint_every=3, members=1, member_overrides=None)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--members", "2", "--out", str(out), "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--set", "train.steps=5", "--no-progress"]) == 0
    for k in range(2):
        assert load_run(out / f"member-{k}", "last")[2]["step"] == 5
    top = json.loads((out / "summary.json").read_text())
    assert top["steps"] == 5 and len(top["member"]) == 2 and "ensemble_val_per" in top
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--members", "2", "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--members", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--members must be >= 1" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "--members", "2", "--set", "model.bidirectional=true",
                 "--out", str(tmp_path / "y")]) == 2
    assert "model.bidirectional: false" in capsys.readouterr().err


def test_checkpoints_from_before_data_seed_still_resume(tmp_path):
    """A last.pt whose config lacks keys added since (train.data_seed / members / member_overrides, the calibration
    keys) resumes as their defaults."""
    from fastdecoder.checkpoint import load_checkpoint, save_checkpoint

    raw = json.loads(json.dumps(RAW))
    raw["train"].update(steps=2, eval_every=100, checkpoint_every=1, members=1, member_overrides=None,
                        data_seed=None)
    Trainer(config_from_dict(raw), tmp_path, progress=False).fit()
    state = load_checkpoint(tmp_path / "last.pt")
    for key in ("data_seed", "members", "member_overrides", "early_stopping", "init_from"):
        del state["config"]["train"][key]
    for key in ("rnn_trainable", "input_trainable"):
        del state["config"]["model"][key]
    del state["config"]["data"]["sessions"]
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "last.pt")
    raw["train"]["steps"] = 3
    resumed = Trainer(config_from_dict(raw), tmp_path, progress=False, resume=True)
    assert resumed.step == 2


def test_bench_train_members_cli(tmp_path, monkeypatch, capsys):
    """`bench train --members K`: interleaved blocks, member-steps/s of both paths, the ratio and its spread."""
    from fastdecoder.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    rc = main(["bench", "train", "--config", "demo", "--members", "2", "--steps", "1", "--blocks", "2",
               "--warmup", "0", "--set", "model.hidden_size=8", "--set", "model.num_layers=1",
               "--set", "train.batch_size=4", "--set", "data.days_per_batch=2", "--json", str(out)])
    assert rc == 0
    assert "ratio batched / separate" in capsys.readouterr().out
    m = json.loads(out.read_text())["members"]
    assert m["k"] == 2 and m["blocks"] == 2 and len(m["ratio_spread"]["blocks"]) == 2
    assert m["member_steps_per_s"] > 0 and m["separate_member_steps_per_s"] > 0 and m["ratio"] > 0
    assert m["loss_max_rel_diff"] < 1e-5  # the members equal the separate runs, step for step
    assert main(["bench", "train", "--config", "demo", "--members", "0"]) == 2


def test_sigterm_saves_every_member_and_resume_finishes(tmp_path):
    import os
    import signal

    cfg = _short(tmp_path)
    tr = MembersTrainer(cfg, tmp_path / "run", progress=False)
    real = tr.train_step

    def step_then_signal(batch):
        out = real(batch)
        if tr.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.train_step = step_then_signal
    summary = tr.fit()
    assert summary["interrupted"] == "SIGTERM" and summary["steps"] == 2
    for k in range(2):
        assert load_run(tmp_path / "run" / f"member-{k}", "last")[2]["step"] == 2
    resumed = MembersTrainer(cfg, tmp_path / "run", progress=False, resume=True)
    assert resumed.fit()["steps"] == 4


@pytest.mark.parametrize("override", ["train.init_from=runs/base", "train.early_stopping=true",
                                      "model.rnn_trainable=false", "model.input_trainable=false"])
def test_members_refuse_calibration_keys_they_do_not_apply(override):
    from fastdecoder.config import ConfigError, load_config

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"does not support {key}"):
        load_config("demo", ["train.members=2", override])
    assert load_config("demo", [override]).train.members == 1  # a solo run takes them
