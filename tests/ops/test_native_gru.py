"""The native GRU step (csrc/gru_step.cpp via ops.gru.native_step) against torch.nn.GRU, on every ISA path this CPU
has: fresh random weights, inputs and states (seeds from conftest, printed on failure), shapes whose input sizes are
not multiples of the vector widths (16 / 8: the masked tails), NaN propagation, and the argument checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdecoder import _native
from fastdecoder.nn import LayerNormGRU
from fastdecoder.ops.gru.native_step import ISAS, NativeGRUStep

ALL_ISAS = ["avx512", "avx2", "scalar"]
# (layers, hidden, input size): H in {8, 24, 768}; inputs of 1, 7, 23, 37, 129, 773 columns leave tails for both
# vector widths, 16 and 64 none (the 8-row blocks: 3H = 24, 72, 2304 rows, all multiples of 8).
SHAPES = [(1, 8, 7), (2, 8, 16), (3, 24, 37), (4, 24, 1), (5, 8, 23), (5, 24, 64), (2, 768, 129), (1, 768, 773)]


def isa_param(isa):
    return pytest.param(isa, marks=pytest.mark.skipif(isa not in ISAS, reason=f"this CPU has no {isa} path"))


ISA_PARAMS = [isa_param(i) for i in ALL_ISAS]


def random_gru(rng, layers, hidden, inputs, scale=1.0):
    torch.manual_seed(int(rng.integers(2**31)))
    gru = torch.nn.GRU(inputs, hidden, layers)
    with torch.no_grad():
        for p in gru.parameters():
            p.mul_(scale)
    return gru


def assert_close(got, want, msg=""):
    got, want = np.asarray(got), np.asarray(want)
    assert np.isfinite(got).all() and np.isfinite(want).all(), f"non-finite values {msg}"  # NaN never passes
    # GRU states lie in (-1, 1): 1e-5 absolute is 1e-5 relative to their range (sums of ~800 products of size ~1
    # leave a few 1e-6 of fp32 round-off in either summation order)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=msg)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("layers,hidden,inputs", SHAPES)
def test_steps_match_nn_gru(isa, layers, hidden, inputs, rng):
    """Three consecutive steps from a random state equal nn.GRU over the 3-frame sequence (outputs and states)."""
    gru = random_gru(rng, layers, hidden, inputs, scale=3.0)  # larger weights: gates away from 0.5
    x = torch.from_numpy(rng.standard_normal((3, 1, inputs)).astype(np.float32))
    h0 = torch.from_numpy(rng.standard_normal((layers, 1, hidden)).astype(np.float32))
    with torch.no_grad():
        out, h_n = gru(x, h0)
    step = NativeGRUStep(gru, isa)
    assert step.isa == isa
    h = h0[:, 0].clone()
    for t in range(3):
        step.step(x[t, 0], h)
        assert_close(h[-1], out[t, 0], f"isa {isa}, step {t}")
    assert_close(h, h_n[:, 0], f"isa {isa}, final states")


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_nan_propagates(isa, rng):
    """NaN in the input reaches every state; NaN in layer l's state reaches layers >= l and no layer below."""
    L, H, I = 4, 24, 37
    step = NativeGRUStep(random_gru(rng, L, H, I), isa)
    x = torch.from_numpy(rng.standard_normal(I).astype(np.float32))
    x_nan = x.clone()
    x_nan[I - 1] = float("nan")  # in the masked tail of both vector widths
    h = torch.zeros(L, H)
    step.step(x_nan, h)
    assert torch.isnan(h).all(), f"isa {isa}: NaN input masked to {h}"
    for layer in range(L):
        h = torch.from_numpy(rng.standard_normal((L, H)).astype(np.float32))
        h[layer, H - 1] = float("nan")
        step.step(x, h)
        assert torch.isfinite(h[:layer]).all() and torch.isnan(h[layer:]).all(), f"isa {isa}, NaN in layer {layer}"


def test_auto_picks_the_fastest_path_and_sees_in_place_updates(rng):
    gru = random_gru(rng, 2, 8, 11)
    step = NativeGRUStep(gru)
    assert step.isa == ISAS[0] and ISAS[-1] == "scalar"
    with torch.no_grad():
        gru.weight_hh_l1.mul_(-2.0)  # in place (as load_state_dict does): the step shares the parameters' storage
        gru.bias_ih_l0.add_(1.0)
        x, h0 = torch.randn(1, 1, 11), torch.randn(2, 1, 8)
        want = gru(x, h0)[1][:, 0]
    h = h0[:, 0].clone()
    step.step(x[0, 0], h)
    assert_close(h, want)


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if i not in ISAS] or
                         [pytest.param("none", marks=pytest.mark.skip(reason="this CPU has every ISA path"))])
def test_a_path_the_cpu_lacks_is_refused(isa):
    with pytest.raises(ValueError, match=f"no {isa} path"):
        NativeGRUStep(torch.nn.GRU(4, 8), isa)


def test_bad_arguments_are_named():
    gru = torch.nn.GRU(5, 8, 2)
    step = NativeGRUStep(gru)
    with pytest.raises(ValueError, match=r"isa must be 'auto', 'avx512', 'avx2' or 'scalar', got 'neon'"):
        NativeGRUStep(gru, "neon")
    h = torch.zeros(2, 8)
    with pytest.raises(ValueError, match=r"x must be a C-contiguous float32 array of shape \(1, 5\); got float64"):
        step.step(torch.zeros(5, dtype=torch.float64), h)
    with pytest.raises(ValueError, match=r"x must .* shape \(1, 5\); got float32 of shape \(1, 6\)"):
        step.step(torch.zeros(6), h)
    with pytest.raises(ValueError, match=r"x must be \(5,\), got shape \(1, 5\)"):
        step.step(torch.zeros(1, 5), h)
    with pytest.raises(ValueError, match=r"x must be \(frames, 5\), got shape \(5,\)"):
        step._step.run(np.zeros(5, np.float32), h.numpy(), np.zeros((1, 8), np.float32), **step.weights())
    with pytest.raises(ValueError, match=r"h must be a writable C-contiguous float32 array of shape \(2, 8\); "
                                         r"got float32 of shape \(2, 8\), not C-contiguous"):
        step.step(torch.zeros(5), torch.zeros(8, 2).t())
    with pytest.raises(ValueError, match=r"h must .* of shape \(2, 8\); got float32 of shape \(1, 2, 8\)"):
        step.step(torch.zeros(5), torch.zeros(1, 2, 8))
    read_only = np.zeros((2, 8), np.float32)
    read_only.flags.writeable = False
    out = np.zeros((1, 8), np.float32)
    with pytest.raises(ValueError, match=r"h must be a writable .* read-only"):
        step._step.run(np.zeros((1, 5), np.float32), read_only, out, **step.weights())
    with pytest.raises(ValueError, match=r"out must be a writable .* shape \(1, 8\); got float32 of shape \(2, 8\)"):
        step._step.run(np.zeros((1, 5), np.float32), h.numpy(), np.zeros((2, 8), np.float32), **step.weights())
    w = step.weights()
    with pytest.raises(ValueError, match=r"lists of one array per layer \(2 layers\)"):
        step._step.run(np.zeros((1, 5), np.float32), h.numpy(), out, **{**w, "bias_hh": w["bias_hh"][:1]})
    with pytest.raises(ValueError, match=r"weight_ih_l1 must be a C-contiguous float32 array of shape \(24, 8\); "
                                         r"got float32 of shape \(24, 5\)"):
        step._step.run(np.zeros((1, 5), np.float32), h.numpy(), out,
                       **{**w, "weight_ih": [w["weight_ih"][0], w["weight_ih"][0]]})
    with pytest.raises(ValueError, match=r"bias_ih_l0 must .* shape \(24,\); got float64"):
        step._step.run(np.zeros((1, 5), np.float32), h.numpy(), out,
                       **{**w, "bias_ih": [w["bias_ih"][0].astype(np.float64), w["bias_ih"][1]]})
    with pytest.raises(ValueError, match=r"weight_hh_l0 must .* shape \(24, 8\); got float32 of shape \(24, 9\)"):
        step._step.run(np.zeros((1, 5), np.float32), h.numpy(), out,
                       **{**w, "weight_hh": [np.zeros((24, 9), np.float32), w["weight_hh"][1]]})
    with pytest.raises(ValueError, match=r"input_size, hidden_size and num_layers must be >= 1, got 5, 0, 2"):
        _native.GruStep(5, 0, 2)
    for rnn, why in [(torch.nn.GRU(4, 8, bidirectional=True), "unidirectional"),
                     (torch.nn.GRU(4, 8, bias=False), "with biases"),
                     (torch.nn.GRU(4, 8).double(), "float32 on the CPU"),
                     (LayerNormGRU(4, 8, 1, batch_first=True), "is not a torch.nn.GRU")]:
        with pytest.raises(ValueError, match=why):
            NativeGRUStep(rnn)


def _share_memory(gru, rng):
    gru.share_memory()  # moves every parameter's storage into shared memory and frees the old buffer


def _assign(gru, rng):
    other = random_gru(rng, gru.num_layers, gru.hidden_size, gru.input_size)
    gru.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects; the old ones may be freed


def _half_float(gru, rng):
    gru.half()  # new tensors each time (rounded to fp16 and back)
    gru.float()


def _data_replaced(gru, rng):
    with torch.no_grad():
        gru.weight_hh_l0.data = gru.weight_hh_l0.data.clone().mul_(-1.5)  # same Parameter, a new storage


def _non_contiguous(gru, rng):
    w = gru.weight_ih_l1.detach()
    gru.weight_ih_l1 = torch.nn.Parameter(w.t().contiguous().t() * 0.5)  # same values layout (3H, H), strided


@pytest.mark.parametrize("change", [_share_memory, _assign, _half_float, _data_replaced, _non_contiguous],
                         ids=lambda f: f.__name__.strip("_"))
def test_weights_moved_or_replaced_after_construction_are_read_as_they_are_now(change, rng):
    """The step keeps no pointer into the weights: after torch moves or replaces them, a step equals nn.GRU on the
    weights the module holds now (NaN, stale values or freed memory before)."""
    gru = random_gru(rng, 2, 24, 37, scale=2.0)
    step = NativeGRUStep(gru)
    x = torch.from_numpy(rng.standard_normal((2, 37)).astype(np.float32))
    h = torch.from_numpy(rng.standard_normal((2, 24)).astype(np.float32))
    step.run(x, h.clone())  # used once before the change
    change(gru, rng)
    with torch.no_grad():
        out, h_n = gru(x[:, None], h[:, None].contiguous())
    got_h = h.clone()
    got = step.run(x, got_h)
    assert_close(got, out[:, 0], change.__name__)
    assert_close(got_h, h_n[:, 0], change.__name__)


def test_weights_that_are_no_longer_float32_are_refused():
    gru = torch.nn.GRU(5, 8, 2)
    step = NativeGRUStep(gru)
    gru.double()
    with pytest.raises(ValueError, match=r"weight_ih_l0 is now torch.float64 on cpu; the native step needs float32"):
        step.step(torch.zeros(5), torch.zeros(2, 8))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("layers,hidden,bins,features", [(1, 8, 3, 7), (3, 24, 14, 8), (2, 24, 5, 23), (5, 8, 1, 16)])
def test_products_computed_ahead_match_nn_gru(isa, layers, hidden, bins, features, rng):
    """run_projected with layer 0's input products summed block by block (project) and the hidden products given
    (hidden_products) equals nn.GRU; the hidden products given are bit-identical to the ones a step computes."""
    gru = random_gru(rng, layers, hidden, bins * features, scale=3.0)
    x = torch.from_numpy(rng.standard_normal((2, 1, bins * features)).astype(np.float32))
    h0 = torch.from_numpy(rng.standard_normal((layers, 1, hidden)).astype(np.float32))
    with torch.no_grad():
        out, h_n = gru(x, h0)
    step = NativeGRUStep(gru, isa)
    w = gru.weight_ih_l0.detach().numpy()
    gi0 = np.zeros((2, 3 * hidden), np.float32)
    for t in range(2):
        for k in range(bins):
            step._step.project(x[t, 0, k * features:(k + 1) * features].numpy(), gi0[t], w, k * features)
    np.testing.assert_allclose(gi0, (x[:, 0] @ gru.weight_ih_l0.T).detach().numpy(), rtol=1e-5, atol=1e-5)
    gh = np.full((layers, 3 * hidden), np.nan, np.float32)
    step.hidden_products(h0[:, 0], gh)
    h = h0[:, 0].clone()
    got = step.run_projected(gi0, h, gh)
    assert_close(got, out[:, 0], f"isa {isa}")
    assert_close(h, h_n[:, 0], f"isa {isa}, final states")
    h_own = h0[:, 0].clone()  # the same gi0 with the hidden products computed by the step itself: the same bits
    assert torch.equal(step.run_projected(gi0, h_own), got) and torch.equal(h_own, h)


def test_projection_arguments_are_checked(rng):
    gru = random_gru(rng, 2, 8, 12)
    s = NativeGRUStep(gru)._step
    w, acc = gru.weight_ih_l0.detach().numpy(), np.zeros(24, np.float32)
    with pytest.raises(ValueError, match="col0"):
        s.project(np.ones(5, np.float32), acc, w, 8)  # columns 8..12 of 12
    with pytest.raises(ValueError, match="weight_ih_l0"):
        s.project(np.ones(4, np.float32), acc, w[:, :8].copy(), 0)
    with pytest.raises(ValueError, match="acc"):
        s.project(np.ones(4, np.float32), np.zeros(23, np.float32), w, 0)
    weights = NativeGRUStep(gru).weights()
    with pytest.raises(ValueError, match="gh"):
        s.run_projected(np.zeros((1, 24), np.float32), np.zeros((2, 8), np.float32), np.zeros((1, 8), np.float32),
                        **weights, gh=np.zeros((1, 24), np.float32))
    with pytest.raises(ValueError, match="gi0"):
        s.run_projected(np.zeros((1, 12), np.float32), np.zeros((2, 8), np.float32), np.zeros((1, 8), np.float32),
                        **weights)
