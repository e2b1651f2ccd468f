"""The native word decoder against a plain-Python definition of the same search (lexicon-constrained CTC prefix
beam search with LM scores at word ends; csrc/words/word_decoder.hpp states it).

The oracle keeps hypotheses in a dict keyed by (word tuple, phoneme prefix of the current word), applies every
extension without pruning, and keeps the beam_width best by ranking score, so agreement shows that the native
pruning is lossless and the bookkeeping (merging, homophones, several pronunciations, sentence ends, the LM state
machine, lookahead, blank penalty, word bonus, token cut) is right.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from fastdecoder.decode import ArpaLM, Lexicon, WordDecoder
from fastdecoder.phonemes import SIL

from fastdecoder.testing.word_oracle import PRON_IDS, PRONS, word_beam_oracle

CORPUS = ["the cat read a tool", "write to the dog", "right about two", "a cat at the tea", "eat it too",
          "read it right", "the red dog", "owe the cat two", "in the tea", "write about a cat", "the dog eat"]


def random_arpa(rng, words, order):
    """A random back-off model over the words (random log10 probabilities and back-offs, random subsets of
    higher-order n-grams): continuous random values, so no two hypotheses tie in score (an estimated model of a tiny
    corpus gives homophones equal probabilities, and exact ties may be broken either way)."""
    vocab = ["<s>", "</s>", "<unk>"] + list(words)
    grams = [None, [(w,) for w in vocab]]
    for n in range(2, order + 1):
        prev = [g for g in grams[n - 1] if g[-1] != "</s>"]
        cand = [g + (w,) for g in prev for w in vocab[1:] if w != "<unk>"]
        idx = rng.choice(len(cand), size=min(len(cand), 15 * len(vocab)), replace=False)
        grams.append(sorted(cand[i] for i in idx))
    contexts = {g for n in range(2, order + 1) for g in (x[:-1] for x in grams[n])}
    lines = ["\\data\\"] + [f"ngram {n}={len(grams[n])}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for g in grams[n]:
            p = -99.0 if g == ("<s>",) else -rng.uniform(0.05, 3.0)
            bo = f"\t{-rng.uniform(0.0, 1.0):.6f}" if n < order and g in contexts else ""
            lines.append(f"{p:.6f}\t{' '.join(g)}{bo}")
    lines += ["", "\\end\\", ""]
    return ArpaLM.from_text("\n".join(lines))


def sentence_log_probs(rng, sentences, *, noise, confuse, final_sil=True):
    """Posteriors from word sentences (random pronunciation of each word), noisy, with confusions."""
    rows_all = []
    for s in sentences:
        phones = []
        for i, w in enumerate(s):
            p = PRON_IDS[w][rng.integers(len(PRON_IDS[w]))]
            phones += list(p) + ([SIL] if final_sil or i + 1 < len(s) else [])
        rows = []
        for p in phones:
            c = int(rng.integers(1, 41)) if rng.random() < confuse else None
            for _ in range(int(rng.integers(1, 4))):
                z = rng.normal(0, noise, 41)
                z[p] += 3.0
                if c is not None:
                    z[c] += 3.0 + rng.normal(0, 1)
                rows.append(z)
            for _ in range(int(rng.integers(0, 2))):
                z = rng.normal(0, noise, 41)
                z[0] += 3.0
                rows.append(z)
        rows_all.append(np.array(rows))
    return [torch.from_numpy(r).log_softmax(-1).numpy() for r in rows_all]


def fresh_rng():
    seed = int(np.random.SeedSequence().entropy % 2**63)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def lms():
    rng = fresh_rng()
    return {2: random_arpa(rng, PRONS, 2), 3: random_arpa(rng, PRONS, 3)}


def assert_same(native, oracle, context):
    assert [h.words for h in native] == [o[0] for o in oracle], context
    for h, (_, score, ac, lmv) in zip(native, oracle):
        assert h.score == pytest.approx(score, abs=1e-6), context
        assert h.acoustic_score == pytest.approx(ac, abs=1e-6), context
        assert h.lm_score == pytest.approx(lmv, abs=1e-6), context


CASES = [
    dict(beam=1), dict(beam=3), dict(beam=8), dict(beam=16), dict(beam=40),
    dict(beam=8, lm_weight=1.5, word_bonus=0.7), dict(beam=8, word_bonus=-1.0, blank_penalty=0.5),
    dict(beam=8, lookahead=True), dict(beam=20, lookahead=True, lm_weight=2.0),
    dict(beam=8, cut=-4.0), dict(beam=8, cut=-2.0, lookahead=True),
]


@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
@pytest.mark.parametrize("order", [2, 3])
def test_matches_oracle_with_lm(lms, case, order):
    rng = fresh_rng()
    lm = lms[order]
    sents = [CORPUS[i].split() for i in rng.integers(0, len(CORPUS), size=4)]
    sents += [[str(w) for w in rng.choice(list(PRONS), size=int(rng.integers(1, 4)))] for _ in range(2)]
    xs = sentence_log_probs(rng, sents, noise=1.0, confuse=0.25, final_sil=bool(rng.random() < 0.5))
    c = dict(case)
    beam = c.pop("beam")
    dec = WordDecoder(Lexicon.from_pronunciations(PRONS), lm, beam_width=beam, nbest=beam, num_threads=1,
                      lm_weight=c.get("lm_weight", 0.5), word_bonus=c.get("word_bonus", 0.0),
                      blank_penalty=c.get("blank_penalty", 0.0), token_min_logprob=c.get("cut"),
                      lm_lookahead=c.get("lookahead", False))
    out = dec.decode([x.astype(np.float64) for x in xs])
    for i, x in enumerate(xs):
        ref = word_beam_oracle(x, PRON_IDS, lm, beam=beam, nbest=beam, **c)
        assert_same(out[i], ref, f"sentence {i} {sents[i]} case {case}")


@pytest.mark.parametrize("beam", [1, 4, 12])
def test_matches_oracle_without_lm(beam):
    # no LM: homophones tie exactly, so this lexicon has none (ties may be broken either way)
    prons = {w: v for w, v in PRONS.items() if w not in ("write", "too", "two", "red")}
    prons["to"] = ["T UW"]
    rng = fresh_rng()
    ids = {w: PRON_IDS[w] for w in prons}
    ids["to"] = [PRON_IDS["to"][0]]
    sents = [[str(w) for w in rng.choice(list(prons), size=int(rng.integers(1, 4)))] for _ in range(5)]
    xs = sentence_log_probs(rng, [[w if w != "to" else "tool" for w in s] for s in sents], noise=1.2, confuse=0.3)
    dec = WordDecoder(Lexicon.from_pronunciations(prons), None, beam_width=beam, nbest=beam, word_bonus=0.2,
                      num_threads=1)
    out = dec.decode([x.astype(np.float64) for x in xs])
    for i, x in enumerate(xs):
        ref = word_beam_oracle(x, ids, None, beam=beam, nbest=beam, word_bonus=0.2)
        assert_same(out[i], ref, f"sentence {i}")


def test_matches_oracle_on_random_peaky_inputs(lms):
    """Unstructured posteriors: most beams end inside words (fallback and partial-word handling)."""
    from fastdecoder.testing.ctc_oracle import peaky_log_probs

    rng = fresh_rng()
    x = peaky_log_probs(rng, 6, 30, 41).astype(np.float64)
    for beam, lookahead in ((2, False), (10, False), (10, True)):
        dec = WordDecoder(Lexicon.from_pronunciations(PRONS), lms[3], beam_width=beam, nbest=beam, num_threads=1,
                          lm_lookahead=lookahead)
        out = dec.decode(x)
        for b in range(6):
            ref = word_beam_oracle(x[b], PRON_IDS, lms[3], beam=beam, nbest=beam, lookahead=lookahead)
            assert_same(out[b], ref, f"b={b} beam={beam} lookahead={lookahead}")
