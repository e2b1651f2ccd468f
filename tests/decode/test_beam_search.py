"""Native CTC prefix beam search against the plain-Python textbook oracle (fastdecoder.testing.ctc_oracle)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastdecoder.testing.ctc_oracle import brute_force_prefix_scores, number_of_prefixes, peaky_log_probs, prefix_beam_search
from fastdecoder.decode import beam_search, greedy_decode
from fastdecoder.testing import seeding

TOL = 1e-4


def fresh_rng():
    """Fresh inputs every run; the seed is printed (pytest shows it on failure) so a failure can be replayed."""
    seed = seeding.fresh_seed()
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


def assert_same(native, oracle, context=""):
    """Same prefixes in the same order, scores within TOL."""
    assert [h[0] for h in native] == [h[0] for h in oracle], context
    for (_, s_n, *_), (_, s_o, *_) in zip(native, oracle):
        assert math.isclose(s_n, s_o, rel_tol=0, abs_tol=TOL), (s_n, s_o, context)


# ---------------------------------------------------------------- exactness against the oracle


@pytest.mark.parametrize("beam", [1, 2, 3, 5, 8, 10, 16, 20, 32, 50, 100])
def test_matches_oracle_on_peaky_inputs(beam):
    rng = fresh_rng()
    V = int(rng.choice([4, 9, 41]))
    T = int(rng.integers(8, 40 if beam >= 50 else 80))
    B = 3 if beam >= 50 else 6
    blank = int(rng.integers(0, V)) if rng.random() < 0.3 else 0
    x = peaky_log_probs(rng, B, T, V, blank=blank)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    out = beam_search(x, lengths, beam_width=beam, blank=blank, nbest=beam, num_threads=1)
    for b in range(B):
        ref = prefix_beam_search(x[b, : lengths[b]].astype(np.float64), beam, blank=blank)
        assert_same(out[b], ref, f"b={b} T={lengths[b]} V={V} blank={blank} beam={beam}")


@pytest.mark.parametrize("beam", [10, 100])
def test_matches_oracle_on_benchmark_sized_sentences(beam):
    """T=150, V=41 as in bench/: long prefixes, a full beam every frame, the pruning bound at work."""
    rng = fresh_rng()
    x = peaky_log_probs(rng, 2, 150, 41)
    out = beam_search(x, beam_width=beam, nbest=beam, token_min_logprob=None, num_threads=1)
    for b in range(2):
        assert_same(out[b], prefix_beam_search(x[b].astype(np.float64), beam), f"b={b} beam={beam}")


@pytest.mark.parametrize("beam", [1, 4, 20, 64])
def test_matches_oracle_on_flat_inputs(beam):
    """Uncertain everywhere: the pruning bound rarely fires, most extensions are live."""
    rng = fresh_rng()
    V, T = int(rng.integers(2, 8)), int(rng.integers(1, 14))
    x = torch.randn(3, T, V, dtype=torch.float64).mul(0.7).log_softmax(-1).numpy()
    out = beam_search(x, beam_width=beam, nbest=beam, num_threads=1)
    for b in range(3):
        assert_same(out[b], prefix_beam_search(x[b], beam), f"T={T} V={V}")


@pytest.mark.parametrize("beam", [1, 5, 20, 100])
def test_token_cut_matches_oracle_with_the_same_cut(beam):
    rng = fresh_rng()
    V, T = 41, int(rng.integers(10, 25))
    x = peaky_log_probs(rng, 3, T, V)
    cut = float(rng.choice([-2.0, -5.0, -8.0]))
    out = beam_search(x, beam_width=beam, nbest=min(beam, 10), token_min_logprob=cut, num_threads=1)
    for b in range(3):
        ref = prefix_beam_search(x[b].astype(np.float64), beam, nbest=min(beam, 10), token_min_logprob=cut)
        assert_same(out[b], ref, f"cut={cut}")


def test_token_cut_below_every_value_is_exact():
    x = peaky_log_probs(fresh_rng(), 4, 40, 41)
    assert beam_search(x, beam_width=20, nbest=5, token_min_logprob=-1e9) == beam_search(x, beam_width=20, nbest=5)


def test_frames_match_oracle_and_increase():
    rng = fresh_rng()
    x = peaky_log_probs(rng, 3, 30, 12)
    out = beam_search(x, beam_width=10, nbest=10, return_frames=True)
    for b in range(3):
        ref = prefix_beam_search(x[b].astype(np.float64), 10, return_frames=True)
        assert_same(out[b], ref)
        for (_, _, fr), (_, _, fr_ref) in zip(out[b], ref):
            assert fr == fr_ref
            assert all(0 <= f < 30 for f in fr) and all(a < b_ for a, b_ in zip(fr, fr[1:]))


@pytest.mark.parametrize("trial", range(6))
def test_huge_beam_equals_brute_force_alignment_sum(trial):
    """With room for every prefix, the beam holds the exact probability of every label sequence."""
    rng = fresh_rng()
    T, V = int(rng.integers(1, 7)), int(rng.integers(1, 4))
    blank = int(rng.integers(0, V))
    x = torch.randn(1, T, V, dtype=torch.float64).mul(rng.uniform(0.5, 3)).log_softmax(-1).numpy()
    exact = brute_force_prefix_scores(x[0], blank=blank)
    k = number_of_prefixes(T, V)
    out = beam_search(x, beam_width=k, blank=blank, nbest=k)[0]
    assert {tuple(t): s for t, s in out}.keys() == exact.keys()
    for tokens, s in out:
        assert math.isclose(s, exact[tuple(tokens)], abs_tol=1e-9)
    best = max(exact.items(), key=lambda kv: kv[1])  # continuous random inputs: no ties
    assert tuple(out[0][0]) == best[0] and math.isclose(out[0][1], best[1], abs_tol=1e-9)


def test_symmetric_ties_follow_the_documented_rule():
    """Uniform frames tie many prefixes exactly: order is (score desc, token sequence asc) in native and oracle."""
    for T, V in [(1, 4), (2, 3), (3, 4), (5, 3)]:
        x = np.full((1, T, V), -math.log(V))
        for k in (1, 2, 5, 50):
            out = beam_search(x, beam_width=k, nbest=k)[0]
            assert_same(out, prefix_beam_search(x[0], k), f"T={T} V={V} k={k}")
    assert beam_search(np.full((1, 1, 3), -math.log(3)), beam_width=3, nbest=3)[0][0][0] == []


# ---------------------------------------------------------------- relations to greedy and to itself


def confident_log_probs(rng, B, T, V):
    """Every frame's best class has p > 0.99: beam 1 then makes greedy's choice at every frame."""
    logits = torch.from_numpy(rng.normal(size=(B, T, V)))
    best = torch.from_numpy(rng.integers(0, V, size=(B, T)))
    best = torch.where(torch.from_numpy(rng.random((B, T)) < 0.5), torch.zeros_like(best), best)
    logits.scatter_add_(-1, best[..., None], torch.full((B, T, 1), 12.0, dtype=torch.float64))
    return logits.log_softmax(-1).float().numpy()


def test_beam_one_equals_greedy_on_confident_posteriors():
    rng = fresh_rng()
    for V in (2, 5, 41):
        x = confident_log_probs(rng, 16, int(rng.integers(1, 80)), V)
        lengths = rng.integers(0, x.shape[1] + 1, size=16)
        got = [h[0][0] for h in beam_search(x, lengths, beam_width=1)]
        assert got == greedy_decode(x, lengths)


def test_threads_give_the_same_answers_as_one_thread():
    rng = fresh_rng()
    x = peaky_log_probs(rng, 48, 80, 41)
    lengths = rng.integers(0, 81, size=48)
    one = beam_search(x, lengths, beam_width=16, nbest=4, num_threads=1, return_frames=True)
    for threads in (0, 2, 3, 7, 8):
        assert beam_search(x, lengths, beam_width=16, nbest=4, num_threads=threads, return_frames=True) == one


def test_nbest_is_a_prefix_of_the_full_ranking():
    x = peaky_log_probs(fresh_rng(), 4, 40, 41)
    full = beam_search(x, beam_width=12, nbest=12)
    for n in (1, 3, 12):
        part = beam_search(x, beam_width=12, nbest=n)
        assert part == [f[:n] for f in full]
    for hyps in full:
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------- inputs: dtypes, strides, torch, lengths


def test_layouts_and_dtypes_agree():
    rng = fresh_rng()
    x = peaky_log_probs(rng, 5, 30, 41)
    ref = beam_search(x, beam_width=8, nbest=3)
    tb = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))).transpose(0, 1)  # (B, T, V) view of (T, B, V)
    assert not tb.is_contiguous()
    assert beam_search(tb, beam_width=8, nbest=3) == ref
    assert beam_search(np.asfortranarray(x), beam_width=8, nbest=3) == ref
    rev = np.ascontiguousarray(x[:, :, ::-1])[:, :, ::-1]  # negative class stride
    assert beam_search(rev, beam_width=8, nbest=3) == ref
    wide = np.zeros((5, 60, 82), np.float32)
    wide[:, ::2, ::2] = x  # strided view
    assert beam_search(wide[:, ::2, ::2], beam_width=8, nbest=3) == ref
    assert beam_search(torch.from_numpy(x).requires_grad_(), beam_width=8, nbest=3) == ref
    # float64 input computes on the same doubles
    assert beam_search(x.astype(np.float64), beam_width=8, nbest=3) == ref
    h = beam_search(torch.from_numpy(x).to(torch.bfloat16), beam_width=8, nbest=3)
    assert len(h) == 5


def test_lengths_cut_each_sentence():
    rng = fresh_rng()
    x = peaky_log_probs(rng, 6, 40, 41)
    lengths = torch.tensor([40, 0, 1, 17, 39, 5])
    out = beam_search(x, lengths, beam_width=6, nbest=6)
    for b, L in enumerate(lengths.tolist()):
        assert out[b] == beam_search(x[b : b + 1, :L], beam_width=6, nbest=6)[0]
    assert out[1] == [([], 0.0)]


def test_zero_frames_gives_the_empty_hypothesis():
    assert beam_search(np.zeros((2, 0, 41), np.float32)) == [[([], 0.0)], [([], 0.0)]]
    assert beam_search(np.zeros((0, 5, 41), np.float32)) == []
    assert beam_search(np.zeros((1, 0, 3)), return_frames=True) == [[([], 0.0, [])]]


def test_non_finite_values_outside_the_lengths_are_ignored():
    x = peaky_log_probs(fresh_rng(), 2, 10, 5)
    clean = x.copy()
    x[0, 7:] = np.nan
    x[1, 3, 2] = np.inf
    assert beam_search(x, [7, 3], beam_width=4) == beam_search(clean, [7, 3], beam_width=4)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, lengths, shape, match",
    [
        ({}, None, (4, 41), "batch, time, classes"),
        ({}, None, (2, 4, 41, 1), "batch, time, classes"),
        ({}, None, (2, 4, 0), "empty class dimension"),
        ({"blank": 41}, None, (2, 4, 41), "blank=41"),
        ({"blank": -1}, None, (2, 4, 41), "blank must be >= 0"),
        ({"beam_width": 0}, None, (2, 4, 41), "beam_width must be >= 1"),
        ({"nbest": 0}, None, (2, 4, 41), "nbest must be >= 1"),
        ({"nbest": 5, "beam_width": 4}, None, (2, 4, 41), "exceeds beam_width"),
        ({"num_threads": -1}, None, (2, 4, 41), "num_threads"),
        ({"beam_width": 2.5}, None, (2, 4, 41), "beam_width must be an integer"),
        ({"token_min_logprob": float("nan")}, None, (2, 4, 41), "token_min_logprob"),
        ({}, [4, 5], (2, 4, 41), r"lengths\[1\] = 5"),
        ({}, [-1, 2], (2, 4, 41), r"lengths\[0\] = -1"),
        ({}, [1, 2, 3], (2, 4, 41), r"lengths must have shape \(2,\)"),
        ({}, [1.5, 2], (2, 4, 41), "whole numbers"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, lengths, shape, match):
    with pytest.raises(ValueError, match=match):
        beam_search(np.zeros(shape, np.float32), lengths, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1.5e100, -1.5e100, 9e307])
def test_values_outside_the_log_prob_policy_are_named(bad):
    x = peaky_log_probs(fresh_rng(), 3, 10, 5).astype(np.float64)
    x[2, 6, 4] = bad
    with pytest.raises(ValueError, match=r"log_probs\[2, 6, 4\] = .* is not a log-probability"):
        beam_search(x)
    with pytest.raises(ValueError, match="not a log-probability"):
        beam_search(torch.from_numpy(x).double(), num_threads=2)


def test_minus_inf_is_probability_zero_as_in_the_oracle():
    rng = fresh_rng()
    for _ in range(20):
        x = peaky_log_probs(rng, 1, int(rng.integers(1, 12)), 4).astype(np.float64)
        x[rng.random(x.shape) < 0.3] = -np.inf
        assert_same(beam_search(x, beam_width=3, nbest=3)[0], prefix_beam_search(x[0], 3, nbest=3))
    # every alignment of zero mass: no hypothesis at all (not a NaN score, not a crash)
    assert beam_search(np.full((1, 3, 3), -np.inf), beam_width=2) == [[]]


def test_huge_finite_inputs_inside_the_policy_keep_finite_ranked_scores():
    # 9e307 per frame overflowed the sums (inf - inf = NaN thresholds, a crash in the pruning); 1e100 is the bound
    out = beam_search(np.full((1, 3, 3), 1e100), beam_width=2, nbest=2)[0]
    oracle = prefix_beam_search(np.full((3, 3), 1e100), 2, nbest=2)
    assert [h[0] for h in out] == [h[0] for h in oracle]
    assert all(math.isfinite(h[1]) for h in out)
    with pytest.raises(ValueError, match="not a log-probability"):
        beam_search(np.full((1, 3, 3), 9e307), beam_width=2)


def test_non_cpu_tensors_are_rejected_clearly():
    with pytest.raises(ValueError, match="meta tensor.*cpu"):
        beam_search(torch.empty(2, 3, 4, device="meta"))


def test_integer_and_complex_inputs():
    with pytest.raises(ValueError, match="float"):
        beam_search(np.zeros((1, 2, 3), np.complex64))
    with pytest.raises(ValueError, match="float tensor"):
        beam_search(torch.zeros(1, 2, 3, dtype=torch.bool))
    assert beam_search(np.zeros((1, 2, 3), np.int32), beam_width=2) == beam_search(np.zeros((1, 2, 3)), beam_width=2)
    zeros = beam_search(np.zeros((1, 2, 3)), beam_width=2)
    assert beam_search(torch.zeros(1, 2, 3, dtype=torch.int64), beam_width=2) == zeros


@pytest.mark.parametrize("values", [(0.5, 0.25, 0.25), (0.5, 0.5, 0.5), (0.125, 0.25, 0.5, 1.0)])
def test_exact_ties_between_long_diverged_prefixes_match_the_oracle(values):
    # Few distinct probabilities over hundreds of frames: exact ties between prefixes whose common ancestor lies
    # far back (the tie rule climbs the prefix trie by jump pointers; this walked it node by node, quadratic in T).
    rng = fresh_rng()
    T, V = int(rng.integers(150, 300)), len(values)
    x = np.log(rng.choice(np.asarray(values), size=(1, T, V)))
    for beam in (2, 5):
        assert_same(beam_search(x, beam_width=beam, nbest=beam)[0], prefix_beam_search(x[0], beam, nbest=beam))
