"""Fuzzing the native CTC prefix beam search: random shapes, layouts, options and awkward values never crash,
always return well-formed hypotheses, and match the plain-Python oracle wherever the oracle is cheap to run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastdecoder.testing.ctc_oracle import peaky_log_probs, prefix_beam_search
from fastdecoder.decode import beam_search
from fastdecoder.testing import seeding


def random_log_probs(rng, B, T, V, blank):
    kind = rng.choice(["peaky", "flat", "uniform", "quantized", "extreme", "unnormalised"])
    if kind == "peaky":
        x = peaky_log_probs(rng, B, T, V, blank=blank).astype(np.float64)
    elif kind == "flat":
        x = torch.from_numpy(rng.normal(size=(B, T, V))).log_softmax(-1).numpy()
    elif kind == "uniform":  # every prefix of a length ties with its siblings
        x = np.full((B, T, V), -math.log(V))
    elif kind == "quantized":  # few distinct values: exact ties between differently built prefixes
        x = np.log(rng.choice([0.5, 0.25, 0.125, 1.0], size=(B, T, V)))
    elif kind == "extreme":  # huge finite gaps: log-sum-exp underflows to max
        x = rng.choice([0.0, -1e-3, -50.0, -1e4, -1e30], size=(B, T, V))
    else:  # raw logits: finite, not normalised, sometimes positive
        x = rng.normal(0, 5, size=(B, T, V))
    return kind, x


def check_well_formed(out, B, V, blank, lengths, nbest, frames):
    assert len(out) == B
    for b, hyps in enumerate(out):
        assert 1 <= len(hyps) <= nbest
        scores = [h[1] for h in hyps]
        assert all(math.isfinite(s) for s in scores)
        assert scores == sorted(scores, reverse=True)
        seen = set()
        for h in hyps:
            tokens = h[0]
            assert all(0 <= t < V and t != blank for t in tokens)
            assert len(tokens) <= lengths[b]
            assert tuple(tokens) not in seen  # one entry per prefix
            seen.add(tuple(tokens))
            if frames:
                fr = h[2]
                assert len(fr) == len(tokens)
                assert all(0 <= f < lengths[b] for f in fr) and all(a < c for a, c in zip(fr, fr[1:]))
        if lengths[b] == 0:
            assert hyps == ([([], 0.0, [])] if frames else [([], 0.0)])


@pytest.mark.parametrize("trial", range(150))
def test_fuzz_small_against_oracle(trial):
    seed = seeding.fresh_seed()
    print(f"rng seed {seed}")
    rng = np.random.default_rng(seed)
    V = int(rng.choice([1, 2, 2, 3, 5, 41, 65, 70]))
    T = int(rng.choice([0, 1, 2, 3, int(rng.integers(4, 16))]))
    B = int(rng.integers(1, 4))
    blank = int(rng.integers(0, V))
    kind, x = random_log_probs(rng, B, T, V, blank)
    if rng.random() < 0.5:
        x = x.astype(np.float32)
    lengths = rng.integers(0, T + 1, size=B)
    beam = int(rng.choice([1, 2, 3, 7, 20, 64]))
    nbest = int(rng.integers(1, beam + 1))
    cut = None if rng.random() < 0.7 else float(rng.choice([-1.0, -3.0, -6.0]))
    threads = int(rng.choice([0, 1, 2]))
    out = beam_search(x, lengths, beam_width=beam, blank=blank, nbest=nbest, token_min_logprob=cut,
                      num_threads=threads, return_frames=True)
    check_well_formed(out, B, V, blank, lengths, nbest, True)
    for b in range(B):
        ref = prefix_beam_search(x[b, : lengths[b]].astype(np.float64), beam, blank=blank, nbest=nbest,
                                 token_min_logprob=cut, return_frames=True)
        ctx = f"kind={kind} T={lengths[b]} V={V} blank={blank} beam={beam} nbest={nbest} cut={cut}"
        assert [h[0] for h in out[b]] == [h[0] for h in ref], ctx
        assert [h[2] for h in out[b]] == [h[2] for h in ref], ctx
        for h, r in zip(out[b], ref):
            assert math.isclose(h[1], r[1], rel_tol=1e-12, abs_tol=1e-4), ctx


@pytest.mark.parametrize("trial", range(24))
def test_fuzz_large_shapes_never_crash(trial):
    seed = seeding.fresh_seed()
    print(f"rng seed {seed}")
    rng = np.random.default_rng(seed)
    V = int(rng.choice([1, 2, 3, 41, 64, 65, 130, 300]))
    T = int(rng.choice([0, 1, 2, 200, 1500]))
    B = int(rng.integers(1, 9))
    blank = int(rng.integers(0, V))
    kind, x = random_log_probs(rng, B, T, V, blank)
    if rng.random() < 0.5:
        x = x.astype(np.float32)
    if rng.random() < 0.3 and T > 0:  # a strided view
        x = np.ascontiguousarray(np.repeat(x, 2, axis=1))[:, ::2]
    lengths = rng.integers(0, T + 1, size=B)
    beam = int(rng.choice([1, 5, 32, 100]))
    nbest = int(rng.integers(1, min(beam, 8) + 1))
    cut = None if rng.random() < 0.5 else -5.0
    out = beam_search(x, lengths, beam_width=beam, blank=blank, nbest=nbest, token_min_logprob=cut,
                      num_threads=int(rng.choice([0, 1, 3])), return_frames=bool(rng.random() < 0.5))
    check_well_formed(out, B, V, blank, lengths, nbest, len(out[0][0]) == 3)


def test_vocab_of_blank_only_and_two_classes():
    x = np.log(np.full((2, 5, 1), 1.0))
    assert beam_search(x, beam_width=3, nbest=3) == [[([], 0.0)], [([], 0.0)]]
    x2 = np.log(np.array([[[0.4, 0.6]] * 3]))
    out = beam_search(x2, beam_width=10, nbest=10)[0]
    ref = prefix_beam_search(x2[0], 10)
    assert [h[0] for h in out] == [h[0] for h in ref]
    assert {tuple(t) for t, _ in out} == {(), (1,), (1, 1)}
    assert math.isclose(sum(math.exp(s) for _, s in out), 1.0, abs_tol=1e-12)
